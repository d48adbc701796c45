"""The pool against a real SQL Server: checkout, validation, reset on return, KILL.

These mirror what the TDS-test-server integration tests prove, against the real
thing. They skip without a server (see conftest.py for how to provide one).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import mssql_pool

from .conftest import RealServer, kill_session, sessions_of

pytestmark = pytest.mark.realserver


def make_pool(server: RealServer, appname: str, **options: Any) -> Any:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", 4)
    options.setdefault("timeout", 30.0)
    options.setdefault("name", appname)
    conninfo = server.connect_kwargs(appname=appname, login_timeout=10, timeout=30)
    return mssql_pool.ConnectionPool(conninfo, **options)


def scalar(conn: Any, sql: str, params: Any = None) -> Any:
    cur = conn.cursor()
    cur.execute(sql, params)
    row = cur.fetchone()
    return row[0] if row else None


def test_login_and_version(real_server: RealServer) -> None:
    with make_pool(real_server, "mp-version") as pool:
        with pool.connection() as conn:
            version = str(scalar(conn, "SELECT @@VERSION"))
            assert version.startswith(("Microsoft SQL Server", "Babelfish for PostgreSQL")) \
                or "SQL Edge" in version
            assert scalar(conn, "SELECT @@TRANCOUNT") in (0, 1)  # pymssql's own BEGIN TRAN


def test_url_form_connects(real_server: RealServer) -> None:
    url = real_server.url + "?appname=mp-url"
    with mssql_pool.ConnectionPool(url, min_size=1, max_size=2, timeout=30.0) as pool:
        with pool.connection() as conn:
            assert scalar(conn, "SELECT 1") == 1


def test_uncommitted_work_is_rolled_back_on_return(
    real_server: RealServer, table_name: str
) -> None:
    admin = real_server.connect()
    admin.cursor().execute(f"CREATE TABLE dbo.{table_name} (id INT PRIMARY KEY)")
    admin.close()
    with make_pool(real_server, "mp-rollback", max_size=1) as pool:
        with pool.connection() as conn:
            conn.cursor().execute(f"INSERT INTO dbo.{table_name} VALUES (1)")
            # returned without commit
        with pool.connection() as conn:
            assert scalar(conn, f"SELECT COUNT(*) FROM dbo.{table_name}") == 0
            assert scalar(conn, "SELECT @@TRANCOUNT") <= 1


def leave_session_state(conn: Any, *, session_context: bool) -> None:
    cur = conn.cursor()
    # READ UNCOMMITTED: a level both engines have. First: Babelfish refuses to change the
    # isolation level once its transaction has done any work.
    cur.execute("SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
    cur.execute("CREATE TABLE #leak (x INT)")
    cur.execute("SET CONTEXT_INFO 0x1234")
    if session_context:
        cur.execute("EXEC sp_set_session_context @key = N'tenant', @value = N'acme'")
    cur.execute("SET LOCK_TIMEOUT 1234")


def assert_clean_session(conn: Any) -> None:
    assert scalar(conn, "SELECT OBJECT_ID('tempdb..#leak')") is None
    assert scalar(conn, "SELECT CONTEXT_INFO()") is None
    assert scalar(conn, "SELECT SESSION_CONTEXT(N'tenant')") is None
    assert scalar(conn, "SELECT @@LOCK_TIMEOUT") == -1
    level = scalar(
        conn,
        "SELECT transaction_isolation_level FROM sys.dm_exec_sessions WHERE session_id = @@SPID",
    )
    assert level == 2  # READ COMMITTED


def test_session_state_never_leaks_to_the_next_borrower(real_server: RealServer) -> None:
    """On every engine: reset when the server can, a fresh session when it cannot."""
    with make_pool(real_server, "mp-reset", max_size=1) as pool:
        with pool.connection() as conn:
            leave_session_state(conn, session_context=True)
        with pool.connection() as conn:
            assert_clean_session(conn)
        with pool.connection() as conn:   # and again: the decision is remembered
            leave_session_state(conn, session_context=True)
        with pool.connection() as conn:
            assert_clean_session(conn)
            assert scalar(conn, "SELECT @@TRANCOUNT") == 1   # pymssql's own BEGIN TRAN


@pytest.mark.needs_feature("sp_reset_connection")
def test_full_reset_keeps_the_physical_session(real_server: RealServer) -> None:
    with make_pool(real_server, "mp-reset-same", max_size=1) as pool:
        with pool.connection() as conn:
            spid = scalar(conn, "SELECT @@SPID")
            leave_session_state(conn, session_context=True)
        with pool.connection() as conn:
            assert scalar(conn, "SELECT @@SPID") == spid  # same physical session, reset
            assert_clean_session(conn)
        assert pool.get_stats()["connections_num"] == 1


def test_without_sp_reset_connection_changed_sessions_are_replaced_once_said(
    real_server: RealServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Babelfish: the missing procedure is found once, said once at INFO, and a changed
    session is closed instead (no failed checkout or return, no repeated failing reset)."""
    import logging

    if not real_server.is_babelfish:
        pytest.skip("the server has sp_reset_connection (covered by the test above)")
    caplog.set_level(logging.INFO, logger="mssql_pool")
    with make_pool(real_server, "mp-reset-none", max_size=1) as pool:
        spids = []
        for _ in range(3):
            with pool.connection() as conn:
                spids.append(scalar(conn, "SELECT @@SPID"))
                conn.cursor().execute("SET LOCK_TIMEOUT 1234")
        with pool.connection() as conn:       # plain work keeps the session: rollback only
            spids.append(scalar(conn, "SELECT @@SPID"))
        with pool.connection() as conn:
            spids.append(scalar(conn, "SELECT @@SPID"))
            assert scalar(conn, "SELECT @@LOCK_TIMEOUT") == -1
        stats = pool.get_stats()
    said = [r for r in caplog.records if "sp_reset_connection" in r.getMessage()
            and r.levelno >= logging.INFO]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert len(set(spids[:3])) == 3 and spids[3] == spids[4]
    assert stats["connections_discarded"] == 3
    assert stats["requests_errors"] == 0


def test_a_commit_never_costs_the_connection(real_server: RealServer, table_name: str) -> None:
    """run_transaction's COMMIT, then pymssql's rollback() to reopen its transaction: on
    Babelfish that rollback raises 3903 in other words; it is still a no-op."""
    admin = real_server.connect()
    admin.cursor().execute(f"CREATE TABLE dbo.{table_name} (id INT PRIMARY KEY)")
    admin.close()

    def unit(conn: Any, i: int) -> None:
        conn.cursor().execute(f"INSERT INTO dbo.{table_name} VALUES (%d)", (i,))

    with make_pool(real_server, "mp-commit", max_size=1) as pool:
        with pool.connection() as conn:
            spid = scalar(conn, "SELECT @@SPID")
        for i in range(10):
            pool.run_transaction(unit, i)
        with pool.connection() as conn:
            assert scalar(conn, "SELECT @@SPID") == spid
            assert scalar(conn, f"SELECT COUNT(*) FROM dbo.{table_name}") == 10
            assert scalar(conn, "SELECT @@TRANCOUNT") == 1   # pymssql's invariant kept
            conn.cursor().execute("COMMIT TRAN")
            conn.rollback()                     # nothing to roll back: not an error
            assert scalar(conn, "SELECT @@TRANCOUNT") == 1
        stats = pool.get_stats()
    assert stats["connections_num"] == 1 and stats["connections_discarded"] == 0


def test_killed_idle_session_is_replaced_transparently(real_server: RealServer) -> None:
    with make_pool(real_server, "mp-kill-idle", min_size=2, max_size=2, validate_after=0.0) as pool:
        pool.wait(timeout=30.0)
        with pool.connection() as conn:
            victim = scalar(conn, "SELECT @@SPID")
        kill_session(real_server, victim)
        for _ in range(4):  # every checkout works, whichever connection it gets
            with pool.connection() as conn:
                assert scalar(conn, "SELECT 1") == 1
                assert scalar(conn, "SELECT @@SPID") != victim
        stats = pool.get_stats()
        assert stats["checks_failed"] + stats["connections_lost"] >= 1


def test_kill_all_pool_sessions_pool_converges(real_server: RealServer) -> None:
    appname = "mp-kill-all"
    with make_pool(real_server, appname, min_size=3, max_size=3, validate_after=0.0) as pool:
        pool.wait(timeout=30.0)
        spids = sessions_of(real_server, appname)
        assert len(spids) >= 3
        for spid in spids:
            kill_session(real_server, spid)
        with pool.connection() as conn:
            assert scalar(conn, "SELECT 1") == 1
        # One disconnect marks the older connections suspect: the pool needs no more
        # failed checks than it had connections.
        assert pool.get_stats()["checks_failed"] <= 3


def test_kill_while_borrowed_surfaces_as_disconnect_and_pool_recovers(
    real_server: RealServer,
) -> None:
    from mssql_pool.classify import classify

    with make_pool(real_server, "mp-kill-busy", max_size=1, validate_after=0.0) as pool:
        with pytest.raises(Exception) as info:  # noqa: PT011 - any driver error; classified
            with pool.connection() as conn:
                spid = scalar(conn, "SELECT @@SPID")
                kill_session(real_server, spid)
                scalar(conn, "SELECT 1")
        assert classify(info.value).connection_dead
        with pool.connection() as conn:  # the dead one was discarded, not handed out again
            assert scalar(conn, "SELECT 1") == 1


def test_concurrent_checkouts_are_bounded_and_fair(real_server: RealServer) -> None:
    counts = [0] * 8
    stop = threading.Event()

    def worker(i: int) -> None:
        while not stop.is_set():
            with pool.connection() as conn:
                scalar(conn, "SELECT 1")
            counts[i] += 1

    with make_pool(real_server, "mp-fair", min_size=2, max_size=2) as pool:
        threads = [threading.Thread(target=worker, args=(i,), name=f"fair-{i}") for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(30)
        assert pool.get_stats()["pool_size"] <= 2
    assert min(counts) > 0
