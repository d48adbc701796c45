"""The collector's counters are counted from the pool's events (issue 18: one source of
truth), and agree with ``get_stats()``, which the pool keeps on its own.

Each scenario drives a pool over the fake driver (injected clock, no background thread)
through one path; then every counter scraped from the collector must equal the number
(or the sum) of the matching events a recorder saw, and the pool's own ``get_stats()``
counter. The property test does the same after every step of random sequences."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from fakedb import FakeClock, FakeDB, pool_factory  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from mssql_pool import ConnectionPool  # noqa: E402
from mssql_pool.errors import PoolClosed, PoolTimeout, TooManyRequests  # noqa: E402
from mssql_pool.events import EventRecorder, PoolEvent  # noqa: E402
from mssql_pool.metrics import (  # noqa: E402
    EVENT_COUNTERS,
    METRICS,
    EventCounts,
    PoolCollector,
    register,
    unregister,
)

WAIT = 10.0
COUNTER_SPECS = [spec for spec in METRICS if spec.kind == "counter"]


def scraped_counters(registry: CollectorRegistry, pool_name: str) -> dict[str, float]:
    """The counters of one pool as Prometheus reads them, by get_stats() key and unit."""
    text = generate_latest(registry).decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels == {"pool": pool_name}:
                values[sample.name] = sample.value
    return {spec.key: values[f"mssql_pool_{spec.name}_total"] / spec.scale
            for spec in COUNTER_SPECS}


def assert_agree(pool: Any, registry: CollectorRegistry) -> dict[str, float]:
    """Every counter scraped (from events) equals the pool's own get_stats() counter
    (milliseconds: get_stats() truncates to whole ms, the async pool's twice: its own
    queue's part and the sync pool's, so up to 2 ms apart)."""
    assert pool.events.flush(WAIT)
    got = scraped_counters(registry, pool.name)
    stats = pool.get_stats()
    for key in EVENT_COUNTERS:
        if key.endswith("_ms"):
            assert got[key] == pytest.approx(stats[key], abs=2.0), key
        else:
            assert got[key] == stats[key], (key, got[key], stats[key])
    return got


def n(kind: str, **match: Any) -> Callable[[EventRecorder], float]:
    """How many recorded events of ``kind`` have these field values."""
    def count(rec: EventRecorder) -> float:
        return float(sum(1 for e in rec.of(kind)
                         if all(getattr(e, k) == v for k, v in match.items())))
    return count


def total(kind: str, field: str, scale: float = 1000.0,
          where: Callable[[PoolEvent], bool] = lambda e: True) -> Callable[[EventRecorder], float]:
    """The sum of one field over the recorded events of ``kind`` (in ms by default)."""
    def add(rec: EventRecorder) -> float:
        return sum((getattr(e, field) or 0.0) * scale for e in rec.of(kind) if where(e))
    return add


def queued(rec: EventRecorder) -> float:
    return float(sum(1 for e in rec.of("checkout", "checkout_failed", "queue_wait")
                     if e.wait is not None))


def wait_ms(rec: EventRecorder) -> float:
    return sum((e.wait or 0.0) * 1000.0 for e in rec.of("checkout", "checkout_failed"))


@pytest.fixture
def make(db: FakeDB, clock: FakeClock) -> Iterator[Callable[..., tuple[ConnectionPool,
                                                                       CollectorRegistry,
                                                                       EventRecorder]]]:
    """A pool (no connection opened yet) already exported, and a recorder of its events."""
    with pool_factory(db, clock) as factory:
        def build(**options: Any) -> tuple[ConnectionPool, CollectorRegistry, EventRecorder]:
            rec = EventRecorder()
            pool = factory(listeners=[rec], **options)
            registry = CollectorRegistry()
            register(pool, registry)
            return pool, registry, rec
        yield build


def until_one_waits(pool: ConnectionPool) -> None:
    """Wait (real time, bounded) until a caller is queued in ``pool``."""
    for _ in range(1000):
        if pool.get_stats()["requests_waiting"] == 1:
            return
        threading.Event().wait(0.005)
    raise AssertionError("nobody queued")


def hold_and_queue(pool: ConnectionPool, clock: FakeClock, *, wait: float,
                   timeout: float = 5.0) -> list[Any]:
    """Hold the only connection; a thread queues for one; ``wait`` (fake) seconds later
    the held one comes back and the thread gets it."""
    held = pool.getconn()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(pool.getconn(timeout=timeout)))
    t.start()
    until_one_waits(pool)
    clock.advance(wait)
    pool.putconn(held)
    t.join(WAIT)
    assert got
    pool.putconn(got[0])
    return got


# Each scenario: what it does, and the counters it must move with the events that carry them.
Scenario = Callable[[ConnectionPool, FakeDB, FakeClock], None]


def fast_path(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    db.latency, db.sleep = 0.05, clock.sleep    # a login takes 50 (fake) ms
    pool.wait(5)
    db.latency = 0.0
    for _ in range(3):
        conn = pool.getconn()
        clock.advance(0.1)
        pool.putconn(conn)


def checked(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    pool.wait(5)
    clock.advance(1.0)            # past validate_after: the checkout checks
    pool.putconn(pool.getconn())


def check_failed(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    pool.wait(5)
    db.kill(db.connections[0])
    clock.advance(1.0)
    pool.putconn(pool.getconn(timeout=5))


def resets(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    with pool.connection() as conn:
        conn.cursor().execute("UPDATE t SET x = 1")        # a rollback on return
    with pool.connection() as conn:
        conn.cursor().execute("SET LANGUAGE us_english")   # session state: a full reset


def lost_in_use(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    conn = pool.getconn()
    cur = conn.cursor()
    cur.execute("SELECT 1")                    # no replay after the first statement
    db.kill(conn)
    with pytest.raises(Exception):  # noqa: B017 - the fake's disconnect error
        cur.execute("SELECT 2")
    pool.putconn(conn)


def replaced(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    pool.wait(5)
    conn = pool.getconn()                      # the fast path: unchecked
    db.kill(conn)
    conn.cursor().execute("SELECT 1")          # dead: replayed on a new connection
    pool.putconn(conn)


def invalidated(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    conn = pool.getconn()
    conn.invalidate("the test says so")
    pool.putconn(conn)


def timeouts(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    held = pool.getconn()
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0)                # not queued: timed out at once
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.05)             # queued, then timed out
    pool.putconn(held)


def waited(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    hold_and_queue(pool, clock, wait=0.25)


def too_many(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    held = pool.getconn()
    t = threading.Thread(target=lambda: pytest.raises(PoolTimeout, pool.getconn, timeout=0.3))
    t.start()
    until_one_waits(pool)
    with pytest.raises(TooManyRequests):
        pool.getconn(timeout=1)
    t.join(WAIT)
    pool.putconn(held)


def closed(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    pool.wait(5)
    assert pool.events.flush(WAIT)
    pool.close()
    with pytest.raises(PoolClosed):
        pool.getconn()


def interrupted(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    pool.wait(5)
    clock.advance(1.0)
    with pytest.raises(KeyboardInterrupt):
        pool.getconn()                         # its check is interrupted


def pool_check(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    pool.wait(5)
    db.kill(db.connections[0])
    assert pool.check() == 1                   # one of two fails
    pool.wait(5)


def keepalives(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    pool.wait(5)
    clock.advance(6)
    db.kill(db.connections[0])
    pool.run_maintenance()


def idle_and_lifetime(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)
    clock.advance(11)                          # past max_idle: both reaped (min_size 0)
    pool.run_maintenance()
    pool.putconn(pool.getconn())
    clock.advance(40)                          # past max_lifetime
    pool.run_maintenance()
    pool.putconn(pool.getconn())
    pool.drain()


def leaked(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    conn = pool.getconn()
    del conn                                   # never returned
    gc.collect()
    pool.run_maintenance()


def connect_errors(pool: ConnectionPool, db: FakeDB, clock: FakeClock) -> None:
    db.fail_next("connect", 2)
    pool.putconn(pool.getconn(timeout=5))      # the third login works


def _interrupt(raw: Any) -> None:
    raise KeyboardInterrupt


SCENARIOS: list[tuple[Scenario, dict[str, Any], dict[str, Callable[[EventRecorder], float]]]] = [
    (fast_path, {"min_size": 1}, {
        "requests_num": n("checkout"), "checks_skipped": n("checkout", reason="skipped"),
        "usage_ms": total("checkin", "duration"), "resets_none": n("checkin", reset="none"),
        "connections_num": n("connect"), "connections_ms": total("connect", "duration")}),
    (checked, {"min_size": 1}, {"checks_run": n("check")}),
    (check_failed, {"min_size": 1}, {
        "checks_failed": n("check_failed"), "connections_lost": n("check_failed"),
        "connections_discarded": n("discard", reason="check_failed")}),
    (resets, {}, {"resets_rollback": n("checkin", reset="rollback"),
                  "resets_full": n("checkin", reset="full")}),
    (lost_in_use, {}, {"connections_lost": n("checkin", reason="lost"),
                       "connections_discarded": n("discard", reason="dead")}),
    (replaced, {"min_size": 1}, {"connections_replaced": n("replaced"),
                                 "connections_lost": n("checkin", reason="lost")}),
    (invalidated, {}, {"connections_discarded": n("checkin", reason="invalidated")}),
    (timeouts, {"max_size": 1}, {
        "requests_timeouts": n("checkout_failed", reason="timeout"),
        "requests_queued": queued, "requests_wait_ms": wait_ms}),
    (waited, {"max_size": 1}, {"requests_queued": queued, "requests_wait_ms": wait_ms}),
    (too_many, {"max_size": 1, "max_waiting": 1}, {
        "requests_errors": n("checkout_failed", reason="full")}),
    (closed, {"min_size": 1}, {"requests_errors": n("checkout_failed", reason="closed")}),
    (interrupted, {"min_size": 1, "check": _interrupt}, {
        "requests_errors": n("checkout_failed", reason="interrupted"),
        "connections_discarded": n("discard", reason="other")}),
    (pool_check, {"min_size": 2}, {"checks_run": lambda r: n("check")(r) + n("check_failed")(r),
                                   "checks_failed": n("check_failed")}),
    (keepalives, {"min_size": 2, "keepalive": 5.0}, {
        "keepalives_run": lambda r: n("keepalive")(r) + n("keepalive_failed")(r),
        "connections_lost": n("keepalive_failed")}),
    (idle_and_lifetime, {"max_idle": 10.0, "max_lifetime": 30.0}, {
        "connections_idle_closed": n("discard", reason="idle"),
        "connections_expired": lambda r: n("discard", reason="lifetime")(r)
        + n("discard", reason="drained")(r)}),
    (leaked, {}, {"connections_leaked": n("discard", reason="leaked")}),
    (connect_errors, {"connect_policy": None}, {"connections_errors": n("connect_failed")}),
]


@pytest.mark.parametrize(("scenario", "options", "moved"), SCENARIOS,
                         ids=[s[0].__name__ for s in SCENARIOS])
def test_each_counter_is_its_events_and_agrees_with_get_stats(
        make: Any, db: FakeDB, clock: FakeClock, scenario: Scenario,
        options: dict[str, Any], moved: dict[str, Callable[[EventRecorder], float]]) -> None:
    pool, registry, rec = make(**options)
    scenario(pool, db, clock)
    got = assert_agree(pool, registry)
    for key, from_events in moved.items():
        expected = from_events(rec)
        assert expected > 0, f"{scenario.__name__} should move {key}"
        assert got[key] == pytest.approx(expected, abs=1e-6), key


def test_the_wait_is_the_one_the_state_counted(make: Any, db: FakeDB,
                                              clock: FakeClock) -> None:
    pool, registry, rec = make(max_size=1)
    hold_and_queue(pool, clock, wait=0.25)
    assert_agree(pool, registry)
    first, second = rec.of("checkout")
    assert first.reason == "new" and first.wait == 0.0     # queued for its connect
    assert second.wait == pytest.approx(0.25)              # queued while it was held
    assert pool.get_stats()["requests_wait_ms"] == 250


def test_a_caller_interrupted_after_its_refusal_is_told_with_the_refusal(
        make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool refuses a waiter (it closes), and the waiter is interrupted before it
    reads the refusal: counted as a refusal, told as one."""
    from mssql_pool._state import Waiter

    pool, registry, rec = make(max_size=1)
    held = pool.getconn()
    real_sleep = Waiter.sleep

    def sleep_then_interrupt(self: Waiter, timeout: float) -> bool:
        real_sleep(self, WAIT)               # until the refusal wakes it
        raise KeyboardInterrupt

    monkeypatch.setattr(Waiter, "sleep", sleep_then_interrupt)
    seen: list[BaseException] = []

    def caller() -> None:
        try:
            pool.getconn(timeout=WAIT)
        except BaseException as exc:  # noqa: BLE001 - the interrupt is the point
            seen.append(exc)

    t = threading.Thread(target=caller)
    t.start()
    until_one_waits(pool)
    pool.close()
    t.join(WAIT)
    assert len(seen) == 1 and isinstance(seen[0], KeyboardInterrupt)
    pool.putconn(held)
    assert_agree(pool, registry)
    assert [e.reason for e in rec.of("checkout_failed")] == ["closed"]


def test_a_connect_thread_that_cannot_start_is_a_connect_failed(
        make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller that asked for the connect gets the error and leaves the queue (it
    stayed queued for ever before); the failed connect is an event like any other."""
    import types

    from mssql_pool import _connect

    class NoThread(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    pool, registry, rec = make()
    monkeypatch.setattr(_connect, "threading", types.SimpleNamespace(
        Thread=NoThread, current_thread=threading.current_thread, Lock=threading.Lock))
    with pytest.raises(RuntimeError):
        pool.getconn(timeout=1)
    monkeypatch.undo()
    assert pool.get_stats()["requests_waiting"] == 0
    got = assert_agree(pool, registry)
    assert got["connections_errors"] == len(rec.of("connect_failed")) == 1
    assert [e.reason for e in rec.of("checkout_failed")] == ["interrupted"]


# ---------------------------------------------------------------- the property test

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)


class CollectorAgreesWithStats(RuleBasedStateMachine):
    """Random checkouts, returns, failures and timeouts on the fake driver; after every
    step the collector's counters (from events) equal get_stats() (kept by the state)."""

    def __init__(self) -> None:
        super().__init__()
        self.db = FakeDB()
        self.clock = FakeClock()
        self.pool = ConnectionPool(connect=self.db.connect, clock=self.clock,
                                   sleep=self.clock.sleep, background=False, min_size=1,
                                   max_size=3, connect_policy=None, max_idle=20.0,
                                   max_lifetime=60.0, keepalive=15.0, name="prop")
        self.registry = CollectorRegistry()
        self.collector = register(self.pool, self.registry)
        self.pool.wait(5)
        self.held: list[Any] = []

    @rule(timeout=st.sampled_from([0.0, 0.01]))
    def checkout(self, timeout: float) -> None:
        # 0: an idle connection or a timeout at once; 0.01 (real seconds): it may queue
        # for a connect (on the connector's thread), be served, or time out queued
        try:
            self.held.append(self.pool.getconn(timeout=timeout))
        except PoolTimeout:
            pass

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 10), work=st.sampled_from(["none", "select", "update", "set"]))
    def give_back(self, i: int, work: str) -> None:
        conn = self.held.pop(i % len(self.held))
        try:
            if work == "select":
                conn.cursor().execute("SELECT 1")
            elif work == "update":
                conn.cursor().execute("UPDATE t SET x = 1")
            elif work == "set":
                conn.cursor().execute("SET LANGUAGE us_english")
        except Exception:
            pass                         # a dead connection: the pool sees it
        self.pool.putconn(conn)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 10))
    def invalidate(self, i: int) -> None:
        conn = self.held.pop(i % len(self.held))
        conn.invalidate("random")
        self.pool.putconn(conn)

    @rule(i=st.integers(0, 10))
    def kill_one(self, i: int) -> None:
        conns = self.db.open_connections()
        if conns:
            self.db.kill(conns[i % len(conns)])

    @rule(seconds=st.sampled_from([0.1, 0.6, 16.0, 25.0, 70.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def maintenance(self) -> None:
        self.pool.run_maintenance()

    @rule()
    def check(self) -> None:
        self.pool.check()

    @rule()
    def server_down(self) -> None:
        self.db.fail_next("connect")

    @rule()
    def drain(self) -> None:
        self.pool.drain()

    @invariant()
    def counters_agree(self) -> None:
        assert_agree(self.pool, self.registry)

    def teardown(self) -> None:
        for conn in self.held:
            self.pool.putconn(conn)
        self.pool.close()
        assert_agree(self.pool, self.registry)
        unregister(self.pool, self.registry)


TestCollectorAgreesWithStats = CollectorAgreesWithStats.TestCase
TestCollectorAgreesWithStats.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- attach, detach


def test_several_pools_one_collector_and_removal_detaches(make: Any, clock: FakeClock) -> None:
    a, registry, _ = make(name="a")
    b, _, _ = make(name="b")
    collector = PoolCollector([a, b])
    own = CollectorRegistry()
    own.register(collector)
    assert len(a.events.listeners) == 3 and len(b.events.listeners) == 3   # rec, register()
    for pool in (a, b, b):
        pool.putconn(pool.getconn())
    assert a.events.flush(WAIT) and b.events.flush(WAIT)
    assert scraped_counters(own, "a")["requests_num"] == 1
    assert scraped_counters(own, "b")["requests_num"] == 2
    collector.remove(a)
    assert len(a.events.listeners) == 2            # the collector's listener is gone
    assert not any(isinstance(fn, EventCounts) and fn in collector._counts.values()
                   for fn, _ in a.events.listeners)
    assert collector.pools == (b,)
    a.putconn(a.getconn())
    assert a.events.flush(WAIT)
    assert "pool=\"a\"" not in generate_latest(own).decode()
    collector.remove(b)
    assert len(b.events.listeners) == 2 and collector._counts == {}


def test_removal_leaves_nothing_behind(db: FakeDB, clock: FakeClock) -> None:
    """After unregister, neither the pool nor the collector's listener is kept alive by
    the other (nor by the registry)."""
    import weakref

    pool = ConnectionPool(connect=db.connect, clock=clock, sleep=clock.sleep,
                          background=False, name="gone")
    registry = CollectorRegistry()
    collector = register(pool, registry)
    pool.putconn(pool.getconn())
    counts = collector._counts[id(pool)]
    listener = weakref.ref(counts)
    del counts
    unregister(pool, registry)
    assert pool.events.listeners == () and collector.pools == ()
    for _ in range(500):                    # its thread ends after removal (bounded wait)
        gc.collect()
        if listener() is None:
            break
        threading.Event().wait(0.01)
    assert listener() is None               # the pool's bus let go of it too
    pool.close()
    gone = weakref.ref(pool)
    del pool
    gc.collect()
    assert gone() is None                   # the collector (still registered) let go
    assert "gone" not in generate_latest(registry).decode()


def test_attached_late_counts_from_registration(make: Any, clock: FakeClock) -> None:
    """Counters start at 0 when the collector attaches (get_stats() counts from the
    pool's creation); from then on they move together."""
    rec = EventRecorder()
    with pool_factory(FakeDB(), clock) as factory:
        pool = factory(min_size=1, listeners=[rec])
        pool.wait(5)
        pool.putconn(pool.getconn())
        registry = CollectorRegistry()
        register(pool, registry)
        before = pool.get_stats()
        pool.putconn(pool.getconn())
        assert pool.events.flush(WAIT)
        got = scraped_counters(registry, pool.name)
        after = pool.get_stats()
        assert got["requests_num"] == after["requests_num"] - before["requests_num"] == 1
        assert got["connections_num"] == 0 and after["connections_num"] == 1


def test_the_collector_counts_on_the_pools_thread_without_lag(db: FakeDB,
                                                              clock: FakeClock) -> None:
    """The collector's listener is inline: a scrape right after a checkout already counts
    it (no flush), no listener thread is started for it, and a stuck listener of the
    application beside it (its queue full, its events dropped) costs the counters
    nothing."""
    gate = threading.Event()
    with pool_factory(db, clock) as factory:
        pool = factory(min_size=0, max_size=2)
        pool.events.queue_size = 1            # for listeners added from now on
        pool.add_listener(lambda ev: gate.wait(WAIT))
        registry = CollectorRegistry()
        register(pool, registry)
        try:
            for n in range(1, 31):
                pool.putconn(pool.getconn())
                got = scraped_counters(registry, pool.name)
                assert got["requests_num"] == pool.get_stats()["requests_num"] == n
            assert pool.events.dropped > 0
            threads = [t.name for t in threading.enumerate()
                       if t.name.startswith(f"mssql_pool-{pool.name}-listener")]
            assert len(threads) == 1          # the stuck listener's only
        finally:
            gate.set()


def test_pop_stats_does_not_reset_the_exported_counters(make: Any) -> None:
    pool, registry, _ = make()
    pool.putconn(pool.getconn())
    pool.pop_stats()
    assert pool.events.flush(WAIT)
    assert scraped_counters(registry, pool.name)["requests_num"] == 1


def test_async_pool_counters_come_from_its_events() -> None:
    """AsyncConnectionPool: the collector listens on it too; its own queue's waits,
    timeouts and cancellations are events, and agree with its get_stats()."""
    import asyncio

    from mssql_pool import AsyncConnectionPool

    db = FakeDB()

    async def main() -> None:
        pool = AsyncConnectionPool(connect=db.connect, min_size=0, max_size=1, name="aio")
        registry = CollectorRegistry()
        collector = register(pool, registry)
        try:
            held = await pool.getconn()
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=0.05)       # timed out in the async queue
            waiter = asyncio.ensure_future(pool.getconn(timeout=5))
            await asyncio.sleep(0.05)
            await pool.putconn(held)
            got = await waiter                          # waited in the queue, then served
            cancelled = asyncio.ensure_future(pool.getconn(timeout=5))
            await asyncio.sleep(0.02)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            await pool.putconn(got)
            got = assert_agree(pool, registry)
            assert got["requests_timeouts"] == 1 and got["requests_queued"] >= 2
            assert got["requests_wait_ms"] > 0
        finally:
            unregister(pool, registry)
            assert collector.pools == () and pool.events.listeners == ()
            await pool.close()

    asyncio.run(main())


# ---------------------------------------------------------------- endpoints


def test_endpoint_counters_come_from_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """redirects, failovers, endpoint_switches, redirect_errors and connects_rejected of
    a conninfo pool (pymssql.connect replaced by a fake network): the events rebuild
    them."""
    import pymssql
    from test_endpoints import FakeNet, bare_routed, refused

    clock, net = FakeClock(), FakeNet()
    monkeypatch.setattr(pymssql, "connect", net.dial)
    pool = ConnectionPool("mssql://u:pw@primary:1433/db", failover_partners=["partner:1433"],
                          identify=True, clock=clock, sleep=clock.sleep, background=False,
                          min_size=0, max_size=5, connect_policy=None, name="eps",
                          endpoint_breaker={"failure_threshold": 1, "reset_timeout": 5.0})
    registry = CollectorRegistry()
    register(pool, registry)

    def connect() -> None:
        pool.drain()                                 # every checkout opens a new one
        try:
            pool.putconn(pool.getconn(timeout=0.01))
        except PoolTimeout:
            pass
        clock.advance(0.2)

    try:
        net.nodes["primary"] = ("NODEA", 11001)      # a redirect
        connect()
        net.nodes["primary"] = ("NODEB", 11003)      # a failover behind the gateway
        connect()
        net.behaviour["primary"] = refused("primary")   # a failover to the partner
        connect()
        net.behaviour["partner"] = refused("partner")   # both down: the primary's open
        connect()                                       # circuit is skipped (rejected)
        clock.advance(10)
        net.behaviour["primary"] = bare_routed("10.0.0.7", 11002)   # a redirect error
        net.behaviour["partner"] = refused("partner")
        connect()
        got = assert_agree(pool, registry)
        for key in ("redirects", "failovers", "endpoint_switches", "redirect_errors",
                    "connects_rejected"):
            assert got[key] > 0, key
    finally:
        pool.close()
