"""Pool events: the listener registry and its dispatch (mssql_pool.events.EventBus).

Listeners run on their own named threads, never on the emitter's: a slow one delays only
itself, a raising one is logged and swallowed, removing one (even from inside itself)
stops its events at once. Waits are bounded real waits on events the test controls;
nothing here asserts on speed.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any

import pytest

from mssql_pool.errors import ConfigError
from mssql_pool.events import (
    EventBus,
    EventKind,
    EventRecorder,
    PoolEvent,
)

WAIT = 10.0   # bound on every real wait (a hang fails the test instead of passing it)


def bus(**kw: Any) -> EventBus:
    return EventBus("t", clock=lambda: 5.0, **kw)


class GatedListener:
    """A listener that sets ``entered`` on each call, waits for ``gate``, then records the
    event's conn_id in ``got``."""

    def __init__(self) -> None:
        self.gate, self.entered = threading.Event(), threading.Event()
        self.got: list[int | None] = []

    def __call__(self, ev: PoolEvent) -> None:
        self.entered.set()
        assert self.gate.wait(WAIT)
        self.got.append(ev.conn_id)


def test_emit_builds_a_frozen_event_with_only_the_fields_that_apply() -> None:
    b = bus()
    rec = EventRecorder()
    b.add(rec)
    ev = b.emit(EventKind.CHECKOUT, conn_id=3, duration=0.25)
    assert b.flush(WAIT)
    assert rec.events == [ev]
    assert ev is not None and ev.kind is EventKind.CHECKOUT and ev.kind == "checkout"
    assert (ev.time, ev.pool_name, ev.conn_id, ev.duration) == (5.0, "t", 3, 0.25)
    assert ev.endpoint is None and ev.error_info is None and ev.attempt is None
    assert ev.as_dict() == {"kind": "checkout", "time": 5.0, "wall": ev.wall,
                            "pool_name": "t", "conn_id": 3, "duration": 0.25}
    assert repr(ev) == "<PoolEvent checkout pool='t' time=5.000 conn_id=3 duration=0.250>"
    with pytest.raises(AttributeError):
        ev.conn_id = 4  # type: ignore[misc]
    b.close()


def test_kinds_filter_and_nobody_listening_builds_nothing() -> None:
    b = bus()
    assert not b.wants(EventKind.CHECKOUT)
    assert b.emit(EventKind.CHECKOUT) is None
    rec = EventRecorder()
    b.add(rec, kinds=["failover", EventKind.REDIRECT])
    assert b.wants(EventKind.FAILOVER) and not b.wants(EventKind.CHECKOUT)
    assert b.emit(EventKind.CHECKOUT) is None
    b.emit(EventKind.FAILOVER, from_endpoint="a:1", to_endpoint="b:1")
    b.emit(EventKind.REDIRECT, endpoint="a:1")
    assert b.flush(WAIT)
    assert rec.kinds() == ["failover", "redirect"]
    b.close()


def test_bad_listeners_and_kinds_are_refused_with_the_parameter_named() -> None:
    b = bus()
    with pytest.raises(ConfigError, match="listener"):
        b.add("not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown event kind 'checkuot'"):
        b.add(print, kinds=["checkuot"])
    with pytest.raises(ConfigError, match="kinds.*empty"):
        b.add(print, kinds=[])
    b.add(print)
    with pytest.raises(ConfigError, match="already added"):
        b.add(print)
    with pytest.raises(ConfigError, match="listeners"):
        EventBus("t", listeners=[42])
    with pytest.raises(ConfigError, match="queue_size"):
        EventBus("t", queue_size=0)
    b.close()


def test_listeners_at_construction_take_callables_and_pairs() -> None:
    a, c = EventRecorder(), EventRecorder()
    b = EventBus("t", listeners=[a, (c, {"discard"})])
    assert [kinds for _, kinds in b.listeners] == [frozenset(EventKind),
                                                   frozenset({EventKind.DISCARD})]
    b.emit(EventKind.CONNECT, conn_id=1)
    b.emit(EventKind.DISCARD, conn_id=1, reason="dead")
    assert b.flush(WAIT)
    assert a.kinds() == ["connect", "discard"] and c.kinds() == ["discard"]
    b.close()


def test_listeners_run_on_named_daemon_threads_not_the_emitters() -> None:
    b = bus()
    seen: list[threading.Thread] = []
    b.add(lambda ev: seen.append(threading.current_thread()))
    b.emit(EventKind.CONNECT, conn_id=1)
    assert b.flush(WAIT)
    assert seen[0] is not threading.current_thread()
    assert seen[0].name == "mssql_pool-t-listener-1" and seen[0].daemon
    b.close()
    assert not seen[0].is_alive()   # close() joined it


def test_a_slow_listener_delays_only_itself() -> None:
    b = bus()
    slow = GatedListener()
    fast = EventRecorder()
    b.add(slow)
    b.add(fast)
    emitted = threading.Event()

    def emitter() -> None:
        for i in range(20):
            b.emit(EventKind.CHECKOUT, conn_id=i)
        emitted.set()

    t = threading.Thread(target=emitter)
    t.start()
    # every emit returns and the fast listener gets everything while the slow one is stuck
    assert emitted.wait(WAIT) and slow.entered.wait(WAIT)
    assert fast.wait_for("checkout", WAIT, count=20)
    assert slow.got == []
    slow.gate.set()
    assert b.flush(WAIT)
    assert slow.got == list(range(20))   # in order, none lost
    t.join(WAIT)
    b.close()


def test_a_raising_listener_is_logged_and_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    b = bus()
    calls: list[int | None] = []

    def broken(ev: PoolEvent) -> None:
        calls.append(ev.conn_id)
        raise RuntimeError("listener bug")

    good = EventRecorder()
    b.add(broken)
    b.add(good)
    with caplog.at_level(logging.ERROR, logger="mssql_pool.events"):
        assert b.emit(EventKind.CONNECT, conn_id=1) is not None   # emit does not raise
        b.emit(EventKind.CONNECT, conn_id=2)
        assert b.flush(WAIT)
    assert calls == [1, 2]            # it keeps receiving events
    assert good.kinds() == ["connect", "connect"]
    errors = [r for r in caplog.records if "listener bug" in str(r.exc_info)]
    assert len(errors) == 2 and "raised on <PoolEvent connect" in errors[0].getMessage()
    b.close()


def test_a_listener_removing_itself_gets_no_further_events() -> None:
    b = bus()
    got: list[int | None] = []

    def once(ev: PoolEvent) -> None:
        got.append(ev.conn_id)
        assert b.remove(once) is True   # from inside itself: no deadlock

    gate = threading.Event()
    b.add(lambda ev: gate.wait(WAIT), kinds=["connect"])   # a second listener, blocked
    b.add(once)
    for i in range(5):
        b.emit(EventKind.CONNECT, conn_id=i)
    gate.set()
    assert b.flush(WAIT)
    assert got == [0]
    assert [fn for fn, _ in b.listeners if fn is once] == []
    assert b.remove(once) is False
    b.close()


def test_remove_from_another_thread_drops_the_queued_events() -> None:
    b = bus()
    slow = GatedListener()
    b.add(slow)
    for i in range(5):
        b.emit(EventKind.CONNECT, conn_id=i)
    assert slow.entered.wait(WAIT)
    assert b.remove(slow)            # returns at once although slow is mid-call
    b.emit(EventKind.CONNECT, conn_id=99)
    slow.gate.set()
    assert b.flush(WAIT)
    thread = [t for t in threading.enumerate() if t.name == "mssql_pool-t-listener-1"]
    for t in thread:
        t.join(WAIT)
        assert not t.is_alive()
    assert slow.got == [0]           # the call in progress finished; 1-4 and 99 dropped
    b.close()


def test_a_full_queue_drops_new_events_counts_them_and_warns_once(
        caplog: pytest.LogCaptureFixture) -> None:
    b = bus(queue_size=2)
    slow = GatedListener()
    b.add(slow)
    b.emit(EventKind.CONNECT, conn_id=0)
    assert slow.entered.wait(WAIT)   # 0 is being delivered, the queue is empty
    with caplog.at_level(logging.WARNING, logger="mssql_pool.events"):
        for i in range(1, 6):
            b.emit(EventKind.CONNECT, conn_id=i)
    assert b.dropped == 3 and "dropped=3" in repr(b)
    assert len([r for r in caplog.records if "events behind" in r.getMessage()]) == 1
    slow.gate.set()
    assert b.flush(WAIT)
    assert slow.got == [0, 1, 2]
    b.close()


def test_the_emitters_context_goes_with_the_event() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    b = bus()
    seen: list[str] = []
    b.add(lambda ev: seen.append(var.get()))

    def emit_in(value: str) -> None:
        var.set(value)
        b.emit(EventKind.CONNECT, conn_id=1)

    contextvars.copy_context().run(emit_in, "caller-1")
    contextvars.copy_context().run(emit_in, "caller-2")
    assert b.flush(WAIT)
    assert seen == ["caller-1", "caller-2"]
    b.close()


def test_a_listener_may_use_the_registry_it_is_called_from() -> None:
    # Never called under the bus's registry lock: adding and listing from a listener works.
    b = bus()
    later = EventRecorder()
    sizes: list[int] = []

    def adds(ev: PoolEvent) -> None:
        if ev.conn_id == 1:
            b.add(later)
        sizes.append(len(b.listeners))

    b.add(adds)
    b.emit(EventKind.CONNECT, conn_id=1)
    assert b.flush(WAIT)
    b.emit(EventKind.CONNECT, conn_id=2)
    assert b.flush(WAIT)
    assert sizes == [2, 2] and later.kinds() == ["connect"]
    b.close()


def test_concurrent_emitters_and_registry_changes_lose_nothing() -> None:
    b = bus()
    rec = EventRecorder()
    b.add(rec)
    threads, per_thread = 6, 300
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def emitter(n: int) -> None:
        start.wait(WAIT)
        for i in range(per_thread):
            b.emit(EventKind.CHECKOUT, conn_id=n, attempt=i)

    def churn() -> None:
        start.wait(WAIT)
        while not stop.is_set():
            extra = EventRecorder()
            b.add(extra)
            b.remove(extra)

    workers = [threading.Thread(target=emitter, args=(n,)) for n in range(threads)]
    churner = threading.Thread(target=churn)
    for t in (*workers, churner):
        t.start()
    for t in workers:
        t.join(WAIT * 3)
    stop.set()
    churner.join(WAIT)
    assert b.flush(WAIT * 3)
    assert len(rec.events) == threads * per_thread and b.dropped == 0
    for n in range(threads):   # each emitter's events arrive in its order
        assert [e.attempt for e in rec.events if e.conn_id == n] == list(range(per_thread))
    b.close()


def test_close_delivers_the_backlog_joins_and_later_events_run_inline() -> None:
    b = bus()
    gate = threading.Event()
    got: list[tuple[int | None, str]] = []

    def slowish(ev: PoolEvent) -> None:
        gate.wait(0.05)
        got.append((ev.conn_id, threading.current_thread().name))

    b.add(slowish)
    for i in range(3):
        b.emit(EventKind.CONNECT, conn_id=i)
    b.close(WAIT)
    assert b.closed and [c for c, _ in got] == [0, 1, 2]
    assert not any(t.name.startswith("mssql_pool-t-listener") for t in threading.enumerate())
    # a connection returned to the closed pool: its discard reaches the listener inline
    b.emit(EventKind.DISCARD, conn_id=0, reason="pool_closed")
    assert got[-1] == (0, threading.current_thread().name)


def test_on_retry_turns_a_bare_policys_retries_into_events() -> None:
    import pymssql

    from mssql_pool.classify import ErrorKind
    from mssql_pool.retry import FixedBackoff, RetryPolicy

    b = bus()
    rec = EventRecorder()
    b.add(rec)
    failures = [pymssql.OperationalError(1205, b"deadlock victim")]

    def flaky() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    policy = RetryPolicy(backoff=FixedBackoff(0.2), on_retry=b.on_retry, sleep=lambda s: None,
                         clock=lambda: 0.0)
    assert policy.call(flaky) == "ok"
    assert b.flush(WAIT)
    [ev] = rec.events
    assert ev.kind is EventKind.RETRY_ATTEMPT and ev.attempt == 1 and ev.delay == 0.2
    assert ev.error_info is not None and ev.error_info.kind is ErrorKind.DEADLOCK
    assert ev.error_info.number == 1205
    b.close()


@pytest.mark.parametrize(("text", "code"), [
    ("its check failed: OperationalError: 20047", "check_failed"),
    ("keepalive failed: 20047", "keepalive_failed"),
    ("past its lifetime", "lifetime"),
    ("idle for more than 600.0 s", "idle"),
    ("drained", "drained"),
    ("the pool was drained", "drained"),
    ("the pool is closed", "pool_closed"),
    ("leaked", "leaked"),
    ("disconnected: 20017 unexpected EOF", "dead"),
    ("its reset failed: 20047", "reset_failed"),
    ("it holds session state no reset can clear (app role, app lock, read-only key)",
     "reset_failed"),
    ("the caller was interrupted during its check", "other"),
])
def test_close_reasons_map_to_discard_codes(text: str, code: str) -> None:
    from mssql_pool.events import DISCARD_REASONS, discard_reason

    assert discard_reason(text) == code and code in DISCARD_REASONS


def test_a_bus_dropped_without_close_ends_its_listener_threads() -> None:
    import gc

    b = EventBus("dropped")
    b.add(EventRecorder())
    b.emit(EventKind.CONNECT, conn_id=1)
    assert b.flush(WAIT)
    [thread] = [t for t in threading.enumerate() if t.name == "mssql_pool-dropped-listener-1"]
    del b
    gc.collect()
    thread.join(WAIT)                # it looks at its bus once a second
    assert not thread.is_alive()


def test_an_inline_listener_sees_every_event_on_the_emitters_thread(
        caplog: pytest.LogCaptureFixture) -> None:
    """inline=True (the metrics collector's counters): called before emit returns, on the
    emitting thread, never dropped however far a queued listener falls behind, and a
    raising one is logged and swallowed like any other."""
    b = bus(queue_size=1)
    gate = threading.Event()
    seen: list[tuple[int | None, threading.Thread]] = []

    def counter(ev: PoolEvent) -> None:
        seen.append((ev.conn_id, threading.current_thread()))
        if ev.conn_id == 3:
            raise RuntimeError("inline bug")

    b.add(lambda ev: gate.wait(WAIT))          # a stuck queued listener beside it
    b.add(counter, inline=True)
    with caplog.at_level(logging.ERROR, logger="mssql_pool.events"):
        for i in range(5):
            b.emit(EventKind.CONNECT, conn_id=i)
            assert [c for c, _ in seen][-1] == i    # already delivered when emit returns
    assert all(t is threading.current_thread() for _, t in seen)
    assert [c for c, _ in seen] == [0, 1, 2, 3, 4]
    assert b.dropped > 0                            # the queued one lost events; this did not
    assert len([r for r in caplog.records if "inline bug" in str(r.exc_info)]) == 1
    assert b.remove(counter)
    b.emit(EventKind.CONNECT, conn_id=9)
    assert [c for c, _ in seen][-1] == 4            # removed: no further calls
    gate.set()
    b.close()
