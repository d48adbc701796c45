"""ConnectionPool core: checkout validation, reset on return, timeouts, close, stats."""

from __future__ import annotations

import gc
import logging
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from fakedb import FakeClock, FakeDB, pool_factory, syntax_error

from mssql_pool import ConnectionPool, PoolClosed, PoolError, PoolTimeout, TooManyRequests

STAT_KEYS = {
    "pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting", "requests_num",
    "requests_wait_ms", "requests_timeouts", "connections_num", "connections_errors",
    "connections_lost", "checks_run", "checks_skipped", "checks_failed", "resets_rollback",
    "resets_full", "connections_discarded", "connections_expired", "connections_idle_closed",
}


@pytest.fixture
def make_pool(db: FakeDB, clock: FakeClock) -> Iterator[Any]:
    with pool_factory(db, clock, min_size=0, max_size=4, name="t") as make:
        yield make


def test_checkout_checkin_and_repr(make_pool: Any, db: FakeDB) -> None:
    pool = make_pool(name="orders", max_size=10)
    assert repr(pool) == "<ConnectionPool 'orders' idle=0 busy=0 waiting=0 size=0/10>"
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchall() == [(1,)]
        assert repr(pool) == "<ConnectionPool 'orders' idle=0 busy=1 waiting=0 size=1/10>"
        assert conn.raw is db.connections[0]
    assert repr(pool) == "<ConnectionPool 'orders' idle=1 busy=0 waiting=0 size=1/10>"
    assert conn.closed
    with pytest.raises(PoolError):
        conn.cursor()
    conn.close()  # idempotent
    pool.putconn(conn)
    assert pool.get_stats()["pool_available"] == 1


def test_stats_keys_and_pop(make_pool: Any) -> None:
    pool = make_pool()
    for _ in range(3):
        pool.putconn(pool.getconn())
    stats = pool.get_stats()
    assert STAT_KEYS <= set(stats)
    assert stats["requests_num"] == 3 and stats["connections_num"] == 1
    assert stats["pool_size"] == 1 and stats["pool_max"] == 4 and stats["pool_min"] == 0
    assert pool.pop_stats()["requests_num"] == 3
    after = pool.get_stats()
    assert after["requests_num"] == 0 and after["pool_size"] == 1  # gauges survive pop


def test_bypass_window_then_check(make_pool: Any, db: FakeDB, clock: FakeClock) -> None:
    pool = make_pool(validate_after=0.5)
    pool.putconn(pool.getconn())
    db.statements.clear()
    clock.advance(0.1)
    pool.putconn(pool.getconn())
    assert db.statements == []          # inside the bypass window: no round trip
    clock.advance(1.0)
    pool.putconn(pool.getconn())
    assert db.statements == [(1, "SELECT 1")]
    stats = pool.get_stats()
    assert stats["checks_skipped"] == 1 and stats["checks_run"] == 1


def test_dead_connection_replaced_transparently(make_pool: Any, db: FakeDB,
                                                clock: FakeClock) -> None:
    pool = make_pool()
    first = pool.getconn()
    raw = first.raw
    pool.putconn(first)
    db.kill(raw)
    clock.advance(5)
    conn = pool.getconn()
    assert conn.raw is not raw and conn.raw.alive
    assert raw.closed
    stats = pool.get_stats()
    assert stats["checks_failed"] == 1 and stats["connections_lost"] == 1
    assert stats["pool_size"] == 1
    pool.putconn(conn)


def test_error_marks_dead_and_older_connections_suspect(make_pool: Any, db: FakeDB,
                                                        clock: FakeClock) -> None:
    """After a server restart the pool converges in one pass."""
    pool = make_pool(max_size=5)
    conns = [pool.getconn() for _ in range(4)]
    for c in conns:
        pool.putconn(c)
    db.shutdown()
    db.restart()
    # Within the bypass window the newest one is handed out unchecked, and fails. (A first
    # statement would be replayed on a replacement, test_pool_replay.py; a rollback is not.)
    conn = pool.getconn()
    newest = conn.raw
    with pytest.raises(db.OperationalError):
        conn.rollback()
    assert conn.invalidated
    pool.putconn(conn)
    assert newest.closed
    # Still within the bypass window, but every older connection is now suspect: checked.
    got = [pool.getconn() for _ in range(3)]
    assert all(c.raw.alive for c in got)
    stats = pool.get_stats()
    assert stats["checks_failed"] == 3 and stats["checks_run"] == 3
    assert stats["connections_discarded"] == 4 and stats["connections_lost"] == 4
    for c in got:
        pool.putconn(c)
    # Fresh connections (opened after the error) are not suspect.
    db.statements.clear()
    pool.putconn(pool.getconn())
    assert db.statements == []


def test_non_disconnect_error_keeps_connection(make_pool: Any, db: FakeDB) -> None:
    pool = make_pool()
    conn = pool.getconn()
    raw = conn.raw
    db.fail_next("execute", error=syntax_error())
    with pytest.raises(db.ProgrammingError):
        conn.cursor().execute("SELEC 1")
    assert not conn.invalidated
    pool.putconn(conn)
    assert not raw.closed and raw.rollbacks == 1


def test_reset_nothing_executed_costs_no_round_trip(make_pool: Any, db: FakeDB) -> None:
    pool = make_pool()
    pool.putconn(pool.getconn())
    before = db.round_trips
    conn = pool.getconn()
    conn.cursor()
    pool.putconn(conn)
    assert db.round_trips == before
    assert pool.get_stats()["resets_rollback"] == 0


def test_reset_work_rolls_back_commit_clears(make_pool: Any, db: FakeDB) -> None:
    pool = make_pool()
    with pool.connection() as conn:
        conn.cursor().execute("UPDATE t SET x = 1")
        raw = conn.raw
    assert raw.rollbacks == 1 and raw.resets == 0 and not raw.in_transaction
    with pool.connection() as conn:
        conn.cursor().execute("INSERT INTO t VALUES (1)")
        conn.commit()
    assert raw.rollbacks == 1 and raw.commits == 1
    stats = pool.get_stats()
    assert stats["resets_rollback"] == 1 and stats["resets_full"] == 0


@pytest.mark.parametrize("sql", ["SET NOCOUNT ON", "CREATE TABLE #t (a int)", "USE other",
                                 "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                                 "EXEC sp_set_session_context @key=N'k', @value=1",
                                 "SET CONTEXT_INFO 0x01", "DECLARE c CURSOR FOR SELECT 1"])
def test_session_change_gets_full_reset(make_pool: Any, db: FakeDB, sql: str) -> None:
    pool = make_pool()
    with pool.connection() as conn:
        conn.cursor().execute(sql)
        raw = conn.raw
    assert raw.resets == 1 and raw.session == {}
    assert pool.get_stats()["resets_full"] == 1


def test_temp_table_not_visible_to_next_borrower(make_pool: Any, db: FakeDB) -> None:
    pool = make_pool(max_size=1)
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE #secret (a int)")
        cur.execute("SELECT a FROM #secret")
    with pool.connection() as conn:
        with pytest.raises(db.ProgrammingError):
            conn.cursor().execute("SELECT a FROM #secret")


def test_full_reset_pymssql_path() -> None:
    db = FakeDB(pymssql_like=True)
    configured: list[object] = []
    pool = ConnectionPool(connect=db.connect, background=False, min_size=0,
                          configure=configured.append)
    with pool.connection() as conn:
        raw = conn.raw
        conn.cursor().execute("SET LANGUAGE us_english")
        conn.autocommit(True)
    assert raw.resets == 1
    assert not raw.autocommit_state                        # restored to the original mode
    assert raw.in_transaction                              # pymssql's BEGIN TRAN re-opened
    sent = [s for _, s in db.statements]
    assert "RPC sp_reset_connection" in sent
    batch = sent[-1]
    assert batch.startswith("SET TRANSACTION ISOLATION LEVEL READ COMMITTED;")
    assert "SET ANSI_NULLS ON" in batch and batch.endswith("BEGIN TRAN")
    assert configured == [raw, raw]                        # at connect and after the reset
    pool.close()


@pytest.mark.parametrize("autocommit", [False, True])
def test_rollback_pymssql_path_is_one_round_trip(autocommit: bool) -> None:
    db = FakeDB(pymssql_like=True)
    pool = ConnectionPool(connect=lambda: db.connect(autocommit=autocommit),
                          background=False, min_size=0)
    with pool.connection() as conn:
        conn.cursor().execute("UPDATE t SET a = 1")
        raw = conn.raw
        before = raw.round_trips
    assert raw.round_trips == before + 1 and raw.rollbacks == 1
    expected = "IF @@TRANCOUNT > 0 ROLLBACK TRAN" + ("" if autocommit else ";BEGIN TRAN")
    assert db.statements[-1] == (raw.id, expected)
    assert raw.in_transaction is (not autocommit)
    pool.close()


def test_reset_modes(db: FakeDB) -> None:
    full = ConnectionPool(connect=db.connect, background=False, min_size=0, reset="full")
    with full.connection() as conn:
        raw = conn.raw
    assert raw.resets == 1                                 # even with nothing executed
    full.close()

    rb = ConnectionPool(connect=db.connect, background=False, min_size=0, reset="rollback")
    with rb.connection() as conn:
        conn.cursor().execute("SET NOCOUNT ON")
        raw = conn.raw
    assert raw.closed                                      # cannot be cleaned: discarded
    assert rb.get_stats()["connections_discarded"] == 1
    rb.close()

    seen: list[object] = []
    cb = ConnectionPool(connect=db.connect, background=False, min_size=0, reset=seen.append)
    with cb.connection() as conn:
        conn.cursor().execute("SELECT 1")
        raw = conn.raw
    assert seen == [raw] and not raw.closed
    cb.close()


def test_failed_reset_discards_with_log(make_pool: Any, db: FakeDB,
                                        caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool()
    with caplog.at_level(logging.INFO, logger="mssql_pool"):
        with pool.connection() as conn:
            conn.cursor().execute("SET NOCOUNT ON")
            raw = conn.raw
            db.fail_next("reset", error=RuntimeError("boom"))
    assert raw.closed
    assert any("reset failed" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert pool.get_stats()["pool_size"] == 0


def test_no_reset_hook_means_discard(make_pool: Any, db: FakeDB) -> None:
    pool = make_pool()
    with pool.connection() as conn:
        raw = conn.raw
        raw.reset_session = None  # type: ignore[assignment]   # a driver without the hook
        conn.cursor().execute("SET NOCOUNT ON")
    assert raw.resets == 0 and raw.closed
    assert pool.get_stats()["connections_discarded"] == 1


def test_invalidate_discards(make_pool: Any, db: FakeDB) -> None:
    pool = make_pool()
    conn = pool.getconn()
    raw = conn.raw
    conn.info["k"] = 1
    conn.invalidate("user said so")
    pool.putconn(conn)
    assert raw.closed and pool.get_stats()["pool_size"] == 0
    with pool.connection() as conn2:
        assert "k" not in conn2.info


def test_info_survives_checkouts(make_pool: Any) -> None:
    pool = make_pool(max_size=1)
    with pool.connection() as conn:
        conn.info["tenant"] = 7
    with pool.connection() as conn:
        assert conn.info == {"tenant": 7}


def test_timeout_when_exhausted(make_pool: Any) -> None:
    pool = make_pool(max_size=1, name="tiny")
    held = pool.getconn()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn(timeout=0)
    err = info.value
    assert err.pool_size == 1 and err.max_size == 1 and err.last_error is None
    assert "tiny" in str(err) and "1/1" in str(err)
    assert pool.get_stats()["requests_timeouts"] == 1
    pool.putconn(held)


def test_timeout_reports_last_connect_error_without_password(make_pool: Any, db: FakeDB,
                                                             clock: FakeClock) -> None:
    def connect() -> object:
        raise ConnectionError("login to mssql://app:hunter2@db failed")

    pool = ConnectionPool(connect=connect, background=False, min_size=0, clock=clock,
                          timeout=1.0)
    with pytest.raises(PoolTimeout) as info:
        pool.getconn()
    assert isinstance(info.value.last_error, ConnectionError)
    assert "hunter2" not in str(info.value) and "login to" in str(info.value)
    assert pool.last_connect_error is info.value.last_error
    assert pool.get_stats()["connections_errors"] >= 1   # retried with backoff until the timeout
    assert pool.get_stats()["pool_size"] == 0
    pool.close()


def test_connect_retried_within_timeout(make_pool: Any, db: FakeDB) -> None:
    pool = make_pool(timeout=5.0)
    db.fail_next("connect", 2)
    conn = pool.getconn()
    assert conn.raw.alive and db.connects == 1
    assert pool.get_stats()["connections_errors"] == 2
    pool.putconn(conn)


def test_conninfo_callable_resolved_on_every_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    fake = types.ModuleType("pymssql")

    def connect(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return FakeDB().connect()

    fake.connect = connect  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pymssql", fake)
    tokens = iter(["t1", "t2"])
    pool = ConnectionPool(lambda: {"server": "h", "password": next(tokens)},
                          background=False, min_size=0)
    c1, c2 = pool.getconn(), pool.getconn()
    assert [c["password"] for c in calls] == ["t1", "t2"]
    assert calls[0]["tds_version"] == "7.4"
    pool.putconn(c1)
    pool.putconn(c2)
    pool.close()


def test_configure_runs_on_new_connections_and_failure_is_connect_error(
        make_pool: Any, db: FakeDB) -> None:
    seen: list[object] = []
    pool = make_pool(configure=seen.append)
    with pool.connection() as conn:
        assert seen == [conn.raw]

    def bad(raw: object) -> None:
        raise RuntimeError("configure failed")

    pool2 = make_pool(configure=bad, timeout=1.0)
    with pytest.raises(PoolTimeout, match="configure failed"):
        pool2.getconn()
    assert db.connections[-1].closed


def test_max_waiting(make_pool: Any) -> None:
    import threading

    pool = make_pool(max_size=1, max_waiting=1)
    held = pool.getconn()
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(pool.getconn(timeout=5)))
    t.start()
    for _ in range(500):
        if pool.get_stats()["requests_waiting"] == 1:
            break
        threading.Event().wait(0.002)
    with pytest.raises(TooManyRequests):
        pool.getconn(timeout=1)
    pool.putconn(held)
    t.join(5)
    assert len(got) == 1
    pool.putconn(got[0])  # type: ignore[arg-type]


def test_close_wakes_waiters_and_closes_returning(make_pool: Any, db: FakeDB) -> None:
    import threading

    pool = make_pool(max_size=1)
    held = pool.getconn()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.getconn(timeout=10)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    for _ in range(500):
        if pool.get_stats()["requests_waiting"] == 1:
            break
        threading.Event().wait(0.002)
    pool.close()
    t.join(5)
    assert len(errors) == 1 and isinstance(errors[0], PoolClosed)
    raw = held.raw
    assert not raw.closed
    pool.putconn(held)
    assert raw.closed
    with pytest.raises(PoolClosed):
        pool.getconn()
    assert "closed" in repr(pool)


def test_close_joins_maintenance_thread(db: FakeDB) -> None:
    pool = ConnectionPool(connect=db.connect, min_size=2, name="bg")
    pool.wait(5)
    thread = pool._maintenance.thread
    assert thread is not None and thread.daemon and thread.name == "mssql_pool-bg-maintenance"
    pool.close(timeout=5)
    assert not thread.is_alive()
    assert all(c.closed for c in db.connections)


def test_wait_raises_when_server_down(make_pool: Any, db: FakeDB, clock: FakeClock) -> None:
    pool = make_pool(min_size=2)
    db.shutdown()
    with pytest.raises(PoolTimeout) as info:
        pool.wait(timeout=3)
    assert info.value.last_error is not None
    db.restart()
    pool.wait(timeout=10)      # after the connect policy's pause (at most 8 s)
    assert pool.get_stats()["pool_available"] == 2


def test_drain_retires_everything(make_pool: Any, db: FakeDB) -> None:
    pool = make_pool()
    a, b = pool.getconn(), pool.getconn()
    raw_a, raw_b = a.raw, b.raw
    pool.putconn(a)
    pool.drain()
    assert raw_a.closed and not raw_b.closed
    pool.putconn(b)
    assert raw_b.closed
    with pool.connection() as conn:
        assert conn.raw not in (raw_a, raw_b)
    assert pool.get_stats()["connections_expired"] == 2


def test_check_validates_idle(make_pool: Any, db: FakeDB) -> None:
    pool = make_pool()
    conns = [pool.getconn() for _ in range(3)]
    raws = [c.raw for c in conns]
    for c in conns:
        pool.putconn(c)
    db.kill(raws[1])
    assert pool.check() == 1
    assert pool.get_stats()["pool_available"] == 2


def test_garbage_collected_proxy_is_closed_and_slot_freed(
        make_pool: Any, db: FakeDB, caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool(max_size=1)
    conn = pool.getconn()
    raw = conn.raw
    del conn
    gc.collect()
    with caplog.at_level(logging.WARNING, logger="mssql_pool"):
        pool.run_maintenance()
    assert raw.closed
    assert any("garbage-collected" in r.getMessage() for r in caplog.records)
    assert pool.get_stats()["connections_leaked"] == 1
    pool.putconn(pool.getconn(timeout=5))  # the slot is free again


def test_proxy_from_another_pool_rejected(make_pool: Any) -> None:
    p1, p2 = make_pool(), make_pool()
    conn = p1.getconn()
    with pytest.raises(PoolError):
        p2.putconn(conn)
    p1.putconn(conn)


def test_context_manager_pool(db: FakeDB) -> None:
    with ConnectionPool(connect=db.connect, background=False, min_size=0) as pool:
        with pool.connection() as conn:
            conn.cursor().execute("SELECT 1")
    assert pool.closed and db.connections[0].closed


def test_no_io_under_the_pool_lock(db: FakeDB, clock: FakeClock) -> None:
    """Lock discipline: connect, check, reset and close all run with the lock free."""
    pool: ConnectionPool | None = None
    held: list[bool] = []

    def io(_: float) -> None:
        assert pool is not None
        held.append(pool.state.lock.locked())

    db.latency = 1e-9
    db.sleep = io
    orig_close = db.connect

    def connect() -> Any:
        raw = orig_close()
        real_close = raw.close

        def close() -> None:
            held.append(pool.state.lock.locked())  # type: ignore[union-attr]
            real_close()

        raw.close = close
        return raw

    pool = ConnectionPool(connect=connect, background=False, min_size=1, clock=clock,
                          keepalive=1, max_idle=5)
    pool.wait(1)
    with pool.connection() as conn:
        conn.cursor().execute("SET NOCOUNT ON")
    clock.advance(2)
    pool.run_maintenance()                      # keepalive ping
    with pool.connection() as conn:             # checked on checkout
        conn.cursor().execute("UPDATE t SET a = 1")
    conn2 = pool.getconn()
    conn2.invalidate()
    pool.putconn(conn2)
    pool.close()
    assert held and not any(held)


def test_transaction_methods_delegate(make_pool: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("mssql_pool.transaction")
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def record(name: str) -> Any:
        def fn(*args: Any, **kwargs: Any) -> str:
            calls.append((name, args, kwargs))
            return name
        return fn

    fake.run_transaction = record("run_transaction")  # type: ignore[attr-defined]
    fake.transactional = record("transactional")  # type: ignore[attr-defined]
    fake.run = record("run")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mssql_pool.transaction", fake)
    pool = make_pool()

    def unit(conn: object) -> None:
        return None

    assert pool.run_transaction(unit, 1, a=2) == "run_transaction"
    assert pool.transactional(retries=3) == "transactional"
    assert pool.run(unit, 5) == "run"
    assert calls == [("run_transaction", (pool, unit, 1), {"a": 2}),
                     ("transactional", (pool,), {"retries": 3}),
                     ("run", (pool, unit, 5), {})]


def test_error_on_older_connection_marks_newer_ones_too(make_pool: Any, db: FakeDB) -> None:
    """Suspect means "opened before the error", whatever the failing connection's age."""
    pool = make_pool()
    a, b = pool.getconn(), pool.getconn()       # a is #1 (older), b is #2
    raw_a, raw_b = a.raw, b.raw
    pool.putconn(b)
    pool.putconn(a)                             # LIFO: a comes out first
    db.shutdown()
    db.restart()
    first = pool.getconn()
    assert first.raw is raw_a
    with pytest.raises(db.OperationalError):
        first.rollback()                        # (not replayed, unlike a first statement)
    pool.putconn(first)
    with pool.connection() as conn:             # b is newer than a, but older than the error
        assert conn.raw is not raw_b and conn.raw.alive
    assert pool.get_stats()["checks_failed"] == 1


def test_a_suspect_that_passes_its_check_is_trusted_again(make_pool: Any, db: FakeDB,
                                                          clock: FakeClock) -> None:
    """One check per survivor after a disconnect, not one per checkout forever; a later
    disconnect makes it suspect again."""
    pool = make_pool()
    a, b = pool.getconn(), pool.getconn()
    raw_b = b.raw
    db.kill(a)
    with pytest.raises(db.OperationalError):
        a.rollback()                               # a disconnect: b is suspect
    pool.putconn(a)
    pool.putconn(b)
    for _ in range(4):
        clock.advance(0.01)                        # always inside the bypass window
        with pool.connection() as conn:
            assert conn.raw is raw_b
    stats = pool.get_stats()
    assert stats["checks_run"] == 1 and stats["checks_skipped"] == 3
    with pool.connection() as conn:
        c = pool.getconn()                         # a fresh one, opened after the mark
        db.kill(c)
        with pytest.raises(db.OperationalError):
            c.rollback()                           # a second disconnect
        pool.putconn(c)
    clock.advance(0.01)
    with pool.connection() as conn:
        assert conn.raw is raw_b
    assert pool.get_stats()["checks_run"] == 2     # b was checked again
