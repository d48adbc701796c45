"""The maintenance pass (driven by hand with a fake clock): reaping, lifetimes,
keepalive, leak warnings, refill with backoff and reconnect_failed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fakedb import FakeClock, FakeDB, pool_factory

from mssql_pool import ConnectionPool


@pytest.fixture
def make_pool(db: FakeDB, clock: FakeClock) -> Iterator[Any]:
    with pool_factory(db, clock, max_size=10) as make:
        yield make


def fill(pool: ConnectionPool, n: int) -> list[Any]:
    """Open ``n`` connections and return them; the driver connections are returned (a
    proxy is dead once given back)."""
    conns = [pool.getconn() for _ in range(n)]
    raws = [c.raw for c in conns]
    for c in conns:
        pool.putconn(c)
    return raws


def test_refill_to_min_size(make_pool: Any, db: FakeDB) -> None:
    pool = make_pool(min_size=3)
    pool.run_maintenance()
    assert pool.get_stats()["pool_available"] == 3 and db.connects == 3


def test_max_idle_closes_only_above_min_size(make_pool: Any, clock: FakeClock) -> None:
    pool = make_pool(min_size=2, max_idle=60)
    conns = fill(pool, 5)
    clock.advance(30)
    pool.run_maintenance()
    assert pool.get_stats()["pool_size"] == 5
    clock.advance(31)
    pool.run_maintenance()
    stats = pool.get_stats()
    assert stats["pool_size"] == 2 and stats["connections_idle_closed"] == 3
    assert sum(raw.closed for raw in conns) == 3


def test_lifetime_jitter_and_retire_when_idle(make_pool: Any, clock: FakeClock) -> None:
    pool = make_pool(min_size=0, max_lifetime=100, random=lambda: 1.0)   # 5 % shorter
    conn = pool.getconn()
    clock.advance(95.5)
    raw = conn.raw
    assert not raw.closed               # never yanked from a borrower
    pool.putconn(conn)
    assert raw.closed                   # retired on return
    assert pool.get_stats()["connections_expired"] == 1


def test_expired_idle_retired_a_few_per_pass(make_pool: Any, clock: FakeClock) -> None:
    pool = make_pool(min_size=0, max_size=20, max_lifetime=100, random=lambda: 0.0)
    fill(pool, 20)
    clock.advance(101)
    pool.run_maintenance()
    assert pool.get_stats()["connections_expired"] == 2   # max(1, max_size // 10)
    pool.run_maintenance()
    assert pool.get_stats()["pool_size"] == 16


def test_expired_idle_skipped_on_checkout(make_pool: Any, clock: FakeClock) -> None:
    pool = make_pool(min_size=0, max_lifetime=10, random=lambda: 0.0)
    first = fill(pool, 1)[0]
    clock.advance(11)
    with pool.connection() as conn:
        assert conn.raw is not first
    assert first.closed


def test_keepalive_pings_idle(make_pool: Any, db: FakeDB, clock: FakeClock) -> None:
    pool = make_pool(min_size=2, keepalive=30, max_idle=None)
    pool.run_maintenance()
    db.statements.clear()
    clock.advance(31)
    pool.run_maintenance()
    assert [s for _, s in db.statements] == ["SELECT 1", "SELECT 1"]
    clock.advance(10)
    pool.run_maintenance()
    assert len(db.statements) == 2          # pinged recently: not again
    assert pool.get_stats()["keepalives_run"] == 2


def test_keepalive_failure_closes_and_refills(make_pool: Any, db: FakeDB,
                                              clock: FakeClock) -> None:
    pool = make_pool(min_size=1, keepalive=30)
    pool.run_maintenance()
    old = db.connections[0]
    db.kill(old)
    clock.advance(31)
    pool.run_maintenance()
    assert old.closed
    assert pool.get_stats()["pool_available"] == 1 and db.connects == 2


def test_refill_backoff_and_reconnect_failed(make_pool: Any, db: FakeDB,
                                             clock: FakeClock) -> None:
    reported: list[object] = []
    pool = make_pool(min_size=1, reconnect_timeout=10, reconnect_failed=reported.append,
                     random=lambda: 0.0)
    db.shutdown()
    attempts = []
    for _ in range(40):
        before = db.round_trips
        pool.run_maintenance()
        attempts.append(db.round_trips - before)
        clock.advance(0.5)
    # exponential backoff: far fewer attempts than passes
    assert 3 <= sum(attempts) < 15
    # the callback is a listener of the reconnect_failed event: it runs on its own thread
    assert pool.events.flush(10)
    assert reported == [pool]
    db.restart()
    clock.advance(60)
    pool.run_maintenance()
    assert pool.get_stats()["pool_available"] == 1


def test_leak_timeout_warns_with_stack(make_pool: Any, clock: FakeClock,
                                       caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool(min_size=0, leak_timeout=5)

    def borrow_here() -> Any:
        return pool.getconn()

    conn = borrow_here()
    clock.advance(6)
    with caplog.at_level(logging.WARNING, logger="mssql_pool"):
        pool.run_maintenance()
        pool.run_maintenance()
    warnings = [r.getMessage() for r in caplog.records if "leak_timeout" in r.getMessage()]
    assert len(warnings) == 1 and "borrow_here" in warnings[0]
    pool.putconn(conn)


def test_maintenance_failure_does_not_kill_worker(db: FakeDB) -> None:
    pool = ConnectionPool(connect=db.connect, min_size=1, maintenance_interval=0.01)
    pool.wait(5)
    calls = []
    original = pool._maintenance.run_once

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        original()

    pool._maintenance.run_once = flaky  # type: ignore[method-assign]
    import threading
    for _ in range(500):
        if len(calls) >= 3:
            break
        threading.Event().wait(0.005)
    assert len(calls) >= 3
    pool.close()
