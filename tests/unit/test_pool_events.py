"""Pool events from a real ConnectionPool on the fake driver (fake clock, no background).

* every kind the pool itself emits fires where documented, with its fields;
* a hypothesis property: whatever a random run of checkouts, returns, dirty returns,
  kills, clock jumps, maintenance passes, drains, checks, invalidations and server
  outages does, the recorded log gives every connection a valid life (``life_errors``,
  complete after close), and the log agrees with the stats;
* listeners are never called under the pool's lock, and the hot path builds no event
  when nobody listens.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fakedb import FakeClock, FakeDB, pool_factory
from hypothesis import given, settings
from hypothesis import strategies as st

from mssql_pool import ConnectionPool
from mssql_pool.errors import ConfigError, PoolTimeout
from mssql_pool.events import EventBus, EventKind, EventRecorder, life_errors

WAIT = 10.0


@pytest.fixture
def make_pool(db: FakeDB, clock: FakeClock) -> Iterator[Any]:
    with pool_factory(db, clock) as make:
        yield make


def flushed(pool: ConnectionPool, rec: EventRecorder) -> list[str]:
    assert pool.events.flush(WAIT)
    return rec.kinds()


def test_checkout_checkin_reset_and_discard(make_pool: Any, db: FakeDB,
                                            clock: FakeClock) -> None:
    rec = EventRecorder()
    pool = make_pool(min_size=0, listeners=[rec])
    conn = pool.getconn()
    clock.advance(2.0)
    conn.cursor().execute("UPDATE t SET x = 1")     # work to roll back on return
    pool.putconn(conn)
    conn = pool.getconn()                            # fast path: no wait
    conn.invalidate("bad")
    pool.putconn(conn)
    assert flushed(pool, rec) == ["connect", "checkout", "reset", "checkin", "checkout",
                                  "checkin", "discard"]
    connect, out1, reset, checkin, out2, back, discard = rec.events
    assert connect.conn_id == out1.conn_id == discard.conn_id == 1
    assert connect.duration is not None and out2.duration == 0.0
    assert out1.reason == "new" and out2.reason == "skipped"
    assert reset.reset == "rollback" and checkin.reset == "rollback"
    assert checkin.duration == pytest.approx(2.0)    # held for two (fake) seconds
    assert checkin.reason is None                    # kept
    assert back.reason == "invalidated" and back.reset == "none"   # every return: a checkin
    assert discard.reason == "dead"


def test_check_failed_then_discard_then_a_new_connection(make_pool: Any, db: FakeDB,
                                                         clock: FakeClock) -> None:
    rec = EventRecorder()
    pool = make_pool(min_size=1, listeners=[rec])
    pool.wait(5)
    db.kill(db.connections[0])
    clock.advance(1.0)                               # past validate_after: checked
    pool.putconn(pool.getconn(timeout=5))
    assert flushed(pool, rec) == ["connect", "check_failed", "discard", "connect",
                                  "checkout", "checkin"]
    failed = rec.events[1]
    assert failed.error_info is not None and failed.error_info.connection_dead
    assert rec.events[2].reason == "check_failed" and rec.events[3].conn_id == 2


def test_maintenance_reaps_retires_pings_and_warns_of_leaks(make_pool: Any, db: FakeDB,
                                                             clock: FakeClock) -> None:
    rec = EventRecorder()
    pool = make_pool(min_size=1, max_size=3, max_idle=10, max_lifetime=100, keepalive=5,
                     leak_timeout=3, random=lambda: 0.0, listeners=[rec])
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(b)
    clock.advance(4)
    pool.run_maintenance()                           # a is held past leak_timeout
    pool.putconn(a)
    clock.advance(11)
    pool.run_maintenance()                           # one idle above min_size reaped...
    db.kill(db.connections[0])
    db.kill(db.connections[1])
    clock.advance(6)
    pool.run_maintenance()                           # ... the other's keepalive fails
    clock.advance(101)
    pool.run_maintenance()                           # the refilled one: past its lifetime
    kinds = flushed(pool, rec)
    leak = rec.of("leak_suspected")
    assert len(leak) == 1 and leak[0].conn_id == 1 and leak[0].duration == pytest.approx(4)
    reaped = rec.of("reap_idle")
    assert len(reaped) == 1 and reaped[0].duration is not None and reaped[0].duration >= 10
    assert len(rec.of("keepalive_failed")) == 1 and len(rec.of("retire_lifetime")) == 1
    reasons = {e.reason for e in rec.of("discard")}
    assert reasons == {"idle", "keepalive_failed", "lifetime"}
    assert kinds.index("reap_idle") + 1 == kinds.index("discard")
    pool.close()
    assert life_errors(rec.events, complete=True) == []


def test_drain_and_close_discard_with_their_reasons(make_pool: Any) -> None:
    rec = EventRecorder()
    pool = make_pool(min_size=2, listeners=[rec])
    pool.wait(5)
    held = pool.getconn()
    pool.drain()
    pool.wait(5)
    pool.close()
    pool.putconn(held)                               # after close: discarded inline
    # the idle one drained; its replacement closed with the pool; the held one (of the
    # drained generation) when it came back after close
    assert [e.reason for e in rec.of("discard")] == ["drained", "pool_closed", "pool_closed"]
    assert life_errors(rec.events, complete=True) == []


def test_a_refused_connect_and_the_reconnect_events(make_pool: Any, db: FakeDB,
                                                    clock: FakeClock) -> None:
    rec = EventRecorder()
    reported: list[ConnectionPool] = []
    pool = make_pool(min_size=1, reconnect_timeout=1.0, reconnect_failed=reported.append,
                     connect_policy=None, listeners=[rec])
    db.shutdown()
    for _ in range(8):
        pool.run_maintenance()
        clock.advance(0.5)
    db.restart()
    clock.advance(5)
    pool.run_maintenance()
    kinds = flushed(pool, rec)
    assert kinds[:3] == ["connect_failed", "reconnect_started", "connect_failed"]
    assert kinds[-2:] == ["connect", "reconnect_succeeded"]
    attempts = [e.attempt for e in rec.of("reconnect_attempt")]
    assert attempts == list(range(2, 2 + len(attempts)))
    assert rec.of("reconnect_succeeded")[0].attempt == len(rec.of("connect_failed"))
    [failed] = rec.of("reconnect_failed")
    assert failed.duration is not None and failed.duration >= 1.0
    assert reported == [pool]
    assert pool.get_stats()["connections_errors"] == len(rec.of("connect_failed"))


def test_add_and_remove_listener_and_bad_options(make_pool: Any) -> None:
    pool = make_pool(min_size=0)
    rec = EventRecorder()
    assert pool.add_listener(rec, kinds=["checkout"]) is rec
    pool.putconn(pool.getconn())
    assert flushed(pool, rec) == ["checkout"]
    assert pool.remove_listener(rec) and not pool.remove_listener(rec)
    pool.putconn(pool.getconn())
    assert flushed(pool, rec) == ["checkout"]
    with pytest.raises(ConfigError, match="listeners"):
        make_pool(listeners=[1])
    with pytest.raises(ConfigError, match="unknown event kind"):
        make_pool(listeners=[(rec, ["nope"])])
    assert "listeners=[EventRecorder]" in repr(make_pool(listeners=[rec]).config)


def test_listeners_never_run_under_the_pool_lock(make_pool: Any) -> None:
    # After the bus is closed listeners run on the emitting thread: a listener that
    # takes the pool's lock would deadlock if any event were emitted under it.
    rec = EventRecorder()
    pool = make_pool(min_size=0)
    pool.events.close()
    seen: list[int] = []

    def grabs_the_lock(ev: Any) -> None:
        with pool.state.lock:      # re-entering it would hang this thread
            seen.append(1)
        rec(ev)

    pool.add_listener(grabs_the_lock)

    def work() -> None:
        pool.putconn(pool.getconn())
        conn = pool.getconn()
        conn.cursor().execute("UPDATE t SET x = 1")
        pool.putconn(conn)
        pool.drain()
        pool.check()
        pool.run_maintenance()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(WAIT)
    assert not t.is_alive()
    assert rec.kinds()[:3] == ["connect", "checkout", "checkin"]


def test_nobody_listening_builds_no_event(make_pool: Any, monkeypatch: Any) -> None:
    pool = make_pool(min_size=1)
    built: list[Any] = []
    original = EventBus.emit

    def counting(self: EventBus, kind: EventKind, **values: Any) -> Any:
        event = original(self, kind, **values)
        built.append(event)
        return event

    monkeypatch.setattr(EventBus, "emit", counting)
    for _ in range(3):
        pool.putconn(pool.getconn())
    assert all(e is None for e in built)           # asked at most, never built


# --------------------------------------------------------------------------- property

OPS = st.lists(st.sampled_from([
    "get", "get", "get", "put", "put", "put_dirty", "invalidate", "kill", "advance",
    "advance_far", "maint", "drain", "check", "outage",
]), min_size=1, max_size=25)


def _step(op: str, pool: ConnectionPool, db: FakeDB, clock: FakeClock,
          held: list[Any]) -> int:
    """One operation of a random run; returns 1 for a granted checkout."""
    if op == "get":
        try:
            held.append(pool.getconn(timeout=0.05))
            return 1
        except PoolTimeout:
            return 0
    if op in ("put", "put_dirty", "invalidate"):
        if held:
            conn = held.pop(0)
            if op == "put_dirty":
                try:
                    conn.cursor().execute("UPDATE t SET x = 1")
                except Exception:
                    pass
            elif op == "invalidate":
                conn.invalidate("test")
            pool.putconn(conn)
    elif op == "kill":
        if db.open_connections():
            db.kill(db.open_connections()[0])
    elif op in ("advance", "advance_far"):
        clock.advance(1.0 if op == "advance" else 31.0)
    elif op == "outage":
        if db.up:
            db.shutdown()
        else:
            db.restart()
    else:
        {"maint": pool.run_maintenance, "drain": pool.drain, "check": pool.check}[op]()
    return 0


@settings(max_examples=40, derandomize=True, deadline=None)
@given(OPS)
def test_every_connection_of_a_random_run_has_a_valid_life(ops: list[str]) -> None:
    db, clock = FakeDB(), FakeClock()
    rec = EventRecorder()
    pool = ConnectionPool(connect=db.connect, clock=clock, sleep=clock.sleep,
                          background=False, min_size=1, max_size=3, max_idle=5,
                          max_lifetime=30, keepalive=3, connect_policy=None,
                          random=lambda: 0.5, listeners=[rec])
    held: list[Any] = []
    granted = 0
    try:
        for op in ops:
            granted += _step(op, pool, db, clock, held)
        for conn in held:
            pool.putconn(conn)
    finally:
        pool.close()
    assert life_errors(rec.events, complete=True) == []
    assert len(rec.of("checkout")) == granted
    stats = pool.get_stats()
    assert len(rec.of("connect")) == stats["connections_num"] == db.connects
    assert len(rec.of("connect_failed")) == stats["connections_errors"]
    started = len(rec.of("reconnect_started"))
    ended = len(rec.of("reconnect_succeeded", "reconnect_aborted"))
    assert started == ended     # every outage ends: succeeded, or aborted by close


def test_threads_handing_connections_over_keep_each_life_in_order(db: FakeDB) -> None:
    # Four threads, two connections: returns go straight to waiting threads. The log is
    # in emission order, so a checkin emitted after the hand-over would show up as a
    # checkout of a busy connection.
    rec = EventRecorder()
    pool = ConnectionPool(connect=db.connect, min_size=2, max_size=2, validate_after=60,
                          listeners=[rec])
    pool.wait(5)
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait(WAIT)
        for _ in range(200):
            conn = pool.getconn(timeout=WAIT)
            pool.putconn(conn)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)         # switch threads often: races show up
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 3)
    finally:
        sys.setswitchinterval(interval)
    pool.close()
    assert len(rec.of("checkout")) == 800
    assert life_errors(rec.events, complete=True) == []


def test_a_stuck_listener_never_holds_the_pool_up(make_pool: Any) -> None:
    gate = threading.Event()
    got: list[Any] = []

    def stuck(ev: Any) -> None:
        gate.wait(WAIT)
        got.append(ev)

    pool = make_pool(min_size=1, listeners=[stuck])
    for _ in range(50):                 # would hang at the first event if it waited
        pool.putconn(pool.getconn())
    assert not gate.is_set() and len(got) == 0
    gate.set()
    assert pool.events.flush(WAIT) and len(got) == 101   # connect + 50 x (out, in)


def test_the_async_pool_has_the_same_events_and_its_units_retry_attempts(db: FakeDB) -> None:
    import asyncio

    from fakedb import OperationalError

    from mssql_pool import AsyncConnectionPool
    from mssql_pool.retry import FixedBackoff, RetryPolicy

    rec = EventRecorder()

    async def unit(conn: Any) -> None:
        await conn.cursor().execute("UPDATE t SET x = 1")

    async def main() -> None:
        async with AsyncConnectionPool(connect=db.connect, min_size=0, max_size=2,
                                       background=False, timeout=10.0) as pool:
            assert pool.add_listener(rec) is rec and pool.events is pool.sync_pool.events
            db.fail_next("execute", 1, error=OperationalError(1205, b"deadlock victim"))
            await pool.run_transaction(unit, policy=RetryPolicy(backoff=FixedBackoff(0.0)))
            assert pool.events.flush(WAIT)
            assert pool.remove_listener(rec)

    asyncio.run(main())
    [retry] = rec.of("retry_attempt")
    assert retry.error_info is not None and retry.error_info.number == 1205
    assert rec.kinds()[:2] == ["connect", "checkout"]
    assert life_errors(rec.events) == []


def test_an_unclosed_pool_with_listeners_is_collected_and_their_threads_end(
        db: FakeDB) -> None:
    import gc
    import weakref

    alerts: list[Any] = []
    pool = ConnectionPool(connect=db.connect, min_size=1, name="unclosed",
                          reconnect_failed=alerts.append, listeners=[EventRecorder()])
    pool.wait(5)
    assert pool.events.flush(WAIT)
    threads = [t for t in threading.enumerate() if t.name.startswith("mssql_pool-unclosed-")]
    assert any("listener" in t.name for t in threads)
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None      # neither the listeners nor reconnect_failed keep it alive
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive(), t.name
