"""ConnectionPool with real pymssql over TCP against the TDS test server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from mssql_pool import ConnectionPool
from mssql_pool.testing import TdsServer

pymssql = pytest.importorskip("pymssql")


@pytest.fixture
def pool(tds_server: TdsServer) -> Iterator[ConnectionPool]:
    p = ConnectionPool(tds_server.url, min_size=2, max_size=4, timeout=10, name="it",
                       validate_after=0.5)
    p.wait(10)
    yield p
    p.close()


def test_roundtrip_and_password_never_in_repr(pool: ConnectionPool,
                                               tds_server: TdsServer) -> None:
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1
    assert tds_server.password not in repr(pool) + repr(pool.config)
    assert "idle=2 busy=0 waiting=0 size=2/4" in repr(pool)


def test_checkout_after_kill_all_never_hands_out_a_dead_connection(
        pool: ConnectionPool, tds_server: TdsServer) -> None:
    # Use both so they are "recently returned" (inside the bypass window) ...
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)
    assert tds_server.kill_all() >= 2
    # ... the first borrower may get a dead one inside the window; its error marks every
    # older connection suspect, so the pool converges at once.
    first = pool.getconn()
    try:
        first.cursor().execute("SELECT 1")
    except pymssql.Error:
        assert first.invalidated
    pool.putconn(first)
    for _ in range(4):
        with pool.connection() as conn:
            cur = conn.cursor()
            cur.execute("SELECT 2")
            assert cur.fetchone()[0] == 2


def test_checked_checkout_replaces_killed_connections(tds_server: TdsServer) -> None:
    with ConnectionPool(tds_server.url, min_size=2, max_size=4, validate_after=0,
                        timeout=10) as pool:
        pool.wait(10)
        tds_server.kill_all()
        for _ in range(3):
            with pool.connection() as conn:
                cur = conn.cursor()
                cur.execute("SELECT 3")
                assert cur.fetchone()[0] == 3
        stats = pool.get_stats()
        assert stats["checks_failed"] >= 1 and stats["connections_lost"] >= 1


def test_full_reset_with_sp_reset_connection(pool: ConnectionPool,
                                             tds_server: TdsServer,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mssql_pool"):
        with pool.connection() as conn:
            raw = conn.raw
            cur = conn.cursor()
            cur.execute("CREATE TABLE #scratch (a int)")
            cur.execute("INSERT INTO #scratch VALUES (1)")
            cur.execute("SELECT a FROM #scratch")
            assert cur.fetchall() == [(1,)]
    assert not any("closing" in r.getMessage() for r in caplog.records), caplog.text
    assert pool.get_stats()["resets_full"] == 1
    # The same driver connection comes back (LIFO), cleaned: the temp table is gone and
    # pymssql's transaction state still works (commit/rollback after the reset).
    with pool.connection() as conn:
        assert conn.raw is raw
        cur = conn.cursor()
        with pytest.raises(pymssql.Error):
            cur.execute("SELECT a FROM #scratch")
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT 5")
        assert cur.fetchone()[0] == 5
        conn.commit()
        conn.rollback()


def test_rollback_on_return_discards_uncommitted_work(pool: ConnectionPool) -> None:
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE pool_it (a int)")
        conn.commit()
        cur.execute("INSERT INTO pool_it VALUES (1)")   # never committed
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM pool_it")
        assert cur.fetchone()[0] == 0
    assert pool.get_stats()["resets_rollback"] >= 1


def test_no_password_in_any_log_line(tds_server: TdsServer,
                                     caplog: pytest.LogCaptureFixture) -> None:
    secret = tds_server.password
    with caplog.at_level(logging.DEBUG):
        with ConnectionPool(tds_server.url, min_size=1, max_size=2, timeout=10,
                            validate_after=0) as pool:
            pool.wait(10)
            with pool.connection() as conn:
                conn.cursor().execute("SET NOCOUNT ON")
            tds_server.kill_all()
            with pool.connection() as conn:
                conn.cursor().execute("SELECT 1")
        wrong = quote("wrong-" + secret[::-1], safe="")
        bad = ConnectionPool(f"mssql://{tds_server.user}:{wrong}@{tds_server.host}:"
                             f"{tds_server.port}/{tds_server.database}", min_size=0, timeout=0.3)
        with pytest.raises(Exception) as info:
            bad.getconn()
        bad.close()
    text = caplog.text + str(info.value) + repr(info.value)
    # (pymssql may lose the "Login failed" text after an earlier login failure of equal or
    # higher severity in the process: it never resets that severity. The error is there
    # either way.)
    assert caplog.records and info.value.last_error is not None  # type: ignore[attr-defined]
    for leaked in (secret, quote(secret, safe=""), secret[::-1], wrong):
        assert leaked not in text
