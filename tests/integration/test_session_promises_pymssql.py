"""Nothing lost, nothing applied twice, nothing carried over: real pymssql against the TDS
test server (and a TCP proxy cutting the exchange), one test per way that promise broke."""

from __future__ import annotations

import itertools
from typing import Any

import pymssql
import pytest
from tcp_proxy import TcpProxy

from mssql_pool import ConnectionPool
from mssql_pool.classify import Classifier, ErrorKind, classify
from mssql_pool.errors import CommitUnknownError, UnbalancedTransactionError
from mssql_pool.retry import FixedBackoff, RetryPolicy
from mssql_pool.testing.server import TdsServer

pytestmark = pytest.mark.timeout(120)


def _pool(url: Any, **opts: Any) -> ConnectionPool:
    opts.setdefault("min_size", 1)
    opts.setdefault("max_size", 1)
    opts.setdefault("timeout", 10.0)
    return ConnectionPool(url, **opts)


def _outside(server: TdsServer, sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` on a fresh connection of its own (autocommit)."""
    conn = pymssql.connect(**server.connect_kwargs(), autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return list(cur.fetchall())
    finally:
        conn.close()


def _setup(server: TdsServer, *ddl: str) -> None:
    conn = pymssql.connect(**server.connect_kwargs(), autocommit=True)
    try:
        for sql in ddl:
            conn.cursor().execute(sql)
    finally:
        conn.close()


def _policy(**kw: Any) -> RetryPolicy:
    kw.setdefault("max_attempts", 5)
    return RetryPolicy(backoff=FixedBackoff(0.01), deadline=20.0, **kw)


def _one(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    return cur.fetchone()[0]


# ------------------------------------------------------------------ 1. open transactions


def test_autocommit_pool_hand_written_begin_does_not_survive_return(
        tds_server: TdsServer) -> None:
    _setup(tds_server, "CREATE TABLE t1 (v VARCHAR(10))")
    sep = "&" if "?" in tds_server.url else "?"
    with _pool(f"{tds_server.url}{sep}autocommit=true") as pool:
        with pool.connection() as a:
            spid = _one(a, "SELECT @@SPID")
            a.cursor().execute("BEGIN TRAN")
            a.cursor().execute("INSERT INTO t1 VALUES ('A')")
            a.commit()          # pymssql with autocommit on: does nothing
        with pool.connection() as b:
            assert _one(b, "SELECT @@SPID") == spid      # the same session
            assert _one(b, "SELECT @@TRANCOUNT") == 0
            b.cursor().execute("INSERT INTO t1 VALUES ('B')")
    # A's row is gone with its transaction; B's autocommit row is durable.
    assert _outside(tds_server, "SELECT v FROM t1") == [("B",)]


def test_nested_begin_does_not_survive_return(tds_server: TdsServer) -> None:
    _setup(tds_server, "CREATE TABLE t2 (v VARCHAR(10))")
    with _pool(tds_server.url) as pool:
        with pool.connection() as a:
            spid = _one(a, "SELECT @@SPID")
            a.cursor().execute("BEGIN TRAN")     # @@TRANCOUNT 2 under pymssql's own
            a.cursor().execute("INSERT INTO t2 VALUES ('A')")
            a.commit()                           # COMMIT TRAN; BEGIN TRAN: still 2
        with pool.connection() as b:
            assert _one(b, "SELECT @@SPID") == spid
            assert _one(b, "SELECT @@TRANCOUNT") == 1
            b.cursor().execute("INSERT INTO t2 VALUES ('B')")
            b.commit()
    assert _outside(tds_server, "SELECT v FROM t2") == [("B",)]


# ------------------------------------------------------------------ 2. fn's own BEGIN TRAN


def test_run_transaction_never_reports_success_for_work_not_durable(
        tds_server: TdsServer) -> None:
    _setup(tds_server, "CREATE TABLE t3 (v VARCHAR(10))")
    with _pool(tds_server.url) as pool:
        def nested(conn: Any) -> str:
            conn.cursor().execute("BEGIN TRAN")
            conn.cursor().execute("INSERT INTO t3 VALUES ('n')")
            return "done"

        with pytest.raises(UnbalancedTransactionError) as ei:
            pool.run_transaction(nested, policy=_policy())
        assert ei.value.trancount == 2
        assert _outside(tds_server, "SELECT COUNT(*) FROM t3") == [(0,)]

        def balanced(conn: Any) -> str:
            conn.cursor().execute("BEGIN TRAN")
            conn.cursor().execute("INSERT INTO t3 VALUES ('b')")
            conn.cursor().execute("COMMIT TRAN")
            return "done"

        assert pool.run_transaction(balanced, policy=_policy()) == "done"
        assert _outside(tds_server, "SELECT v FROM t3") == [("b",)]

        def ends_it(conn: Any) -> None:
            conn.cursor().execute("INSERT INTO t3 VALUES ('c')")
            conn.cursor().execute("COMMIT TRAN")

        calls = []
        with pytest.raises(UnbalancedTransactionError) as ei:
            pool.run_transaction(lambda c: calls.append(ends_it(c)), policy=_policy())
        assert ei.value.trancount == 0 and len(calls) == 1     # never run again
        with pool.connection() as conn:
            assert _one(conn, "SELECT @@TRANCOUNT") == 1


# ------------------------------------------------------------------ 3. lost COMMIT


def test_lost_commit_is_unknown_whatever_the_classifier(tds_server: TdsServer) -> None:
    _setup(tds_server, "CREATE TABLE t4 (v VARCHAR(10))")
    loose = Classifier().with_exception(pymssql.OperationalError, retryable=True)
    with _pool(tds_server.url, max_size=2) as pool:
        def unit(conn: Any) -> None:
            conn.cursor().execute("INSERT INTO t4 VALUES ('x')")

        tds_server.drop_next(match=r"IF @n = 1 COMMIT", after_execute=True)
        with pytest.raises(CommitUnknownError):
            pool.run_transaction(unit, policy=_policy(
                classifier=loose, retry_on=lambda e: loose.classify(e).retryable))
    assert _outside(tds_server, "SELECT COUNT(*) FROM t4") == [(1,)]


# ------------------------------------------------------------------ 4. replay


FIRST_STATEMENTS = {
    "insert": "INSERT INTO marks VALUES ('{m}')",
    "rollback_then_insert": "ROLLBACK; INSERT INTO marks VALUES ('{m}')",
    "procedure_without_exec": "p_mark '{m}'",
    "exec_procedure": "EXEC p_mark '{m}'",
    "select": "SELECT COUNT(*) FROM marks WHERE m = '{m}'",
}
CUTS = ["idle", "request", "after_send", "reply", "after_reply"]


@pytest.mark.parametrize("autocommit", [False, True], ids=["implicit_tran", "autocommit"])
def test_first_statement_never_runs_twice_wherever_the_exchange_is_cut(
        tds_server: TdsServer, autocommit: bool) -> None:
    _setup(tds_server, "CREATE TABLE marks (m VARCHAR(40))",
           "CREATE PROCEDURE p_mark @m VARCHAR(40) AS INSERT INTO marks VALUES (@m)")
    proxy = TcpProxy((tds_server.host, tds_server.port)).start()
    url = f"mssql://{tds_server.user}:{tds_server.password}@127.0.0.1:{proxy.port}/master" \
        f"?autocommit={'true' if autocommit else 'false'}"
    replayed = 0
    try:
        with _pool(url, validate_after=3600.0) as pool:
            for n, (what, cut) in enumerate(itertools.product(FIRST_STATEMENTS, CUTS)):
                mark = f"m{n}{what[:6]}{cut[:5]}"
                with pool.connection():
                    pass                       # the connection is open and idle
                if cut == "idle":
                    proxy.cut()
                else:
                    proxy.arm(cut, match=mark, offset=12)
                before = pool.get_stats()["connections_replaced"]
                ok = True
                try:
                    with pool.connection() as conn:
                        conn.cursor().execute(FIRST_STATEMENTS[what].format(m=mark))
                        conn.commit()
                except pymssql.Error:
                    ok = False
                proxy.disarm()
                replayed += pool.get_stats()["connections_replaced"] - before
                count = _outside(tds_server, f"SELECT COUNT(*) FROM marks WHERE m = '{mark}'")
                runs = count[0][0]
                assert runs <= 1, f"{what} cut at {cut} ran {runs} times"
                if ok and what != "select":
                    assert runs == 1, f"{what} cut at {cut} reported success, ran {runs}"
    finally:
        proxy.close()
    if not autocommit:
        assert replayed > 0    # the safe cases were replayed, not merely refused


# ------------------------------------------------------------------ 5. impersonation


@pytest.mark.parametrize("sql", [
    "EXECUTE AS LOGIN = 'intruder'",
    "execute/**/as user='intruder'",
    "SETUSER 'intruder'",
    "EXEC sp_set_session_context N'tenant', 7, 1",
    "EXEC('EXECUTE AS LOGIN = ''intruder''')",
])
def test_session_no_reset_can_undo_is_discarded(tds_server: TdsServer, sql: str) -> None:
    with _pool(tds_server.url) as pool:
        with pool.connection() as a:
            spid = _one(a, "SELECT @@SPID")
            a.cursor().execute(sql)
        with pool.connection() as b:
            assert _one(b, "SELECT @@SPID") != spid
            assert _one(b, "SELECT SUSER_NAME()") == tds_server.user
            assert _one(b, "SELECT USER_NAME()") == "dbo"
            assert _one(b, "SELECT SESSION_CONTEXT(N'tenant')") is None


# ------------------------------------------------------------------ 6. the user's errors


@pytest.mark.parametrize("error", [OSError(5, "disk on fire"), FileNotFoundError("x.csv"),
                                   TimeoutError("the payment API timed out"),
                                   ConnectionResetError("the payment API reset")])
def test_the_applications_own_error_reaches_the_caller(tds_server: TdsServer,
                                                       error: Exception) -> None:
    _setup(tds_server, "CREATE TABLE t6 (v VARCHAR(10))")
    calls: list[int] = []
    with _pool(tds_server.url) as pool:
        with pool.connection() as conn:
            spid = _one(conn, "SELECT @@SPID")

        def unit(conn: Any) -> None:
            calls.append(1)
            conn.cursor().execute("INSERT INTO t6 VALUES ('x')")
            raise error

        with pytest.raises(type(error)) as ei:
            pool.run_transaction(unit, policy=_policy())
        assert ei.value is error
        assert len(calls) == 1
        assert _outside(tds_server, "SELECT COUNT(*) FROM t6") == [(0,)]   # rolled back
        with pool.connection() as conn:
            assert _one(conn, "SELECT @@SPID") == spid                        # kept
        assert pool.get_stats()["connections_discarded"] == 0


# ------------------------------------------------------------------ 7. fatal severities


def test_fatal_severity_is_a_disconnect_and_reruns_the_unit(tds_server: TdsServer) -> None:
    _setup(tds_server, "CREATE TABLE t7 (v VARCHAR(10))")
    seen: list[Any] = []
    with _pool(tds_server.url, max_size=2) as pool:
        def unit(conn: Any) -> None:
            conn.cursor().execute("INSERT INTO t7 VALUES ('x')")
            if not seen:
                try:
                    conn.cursor().execute("RAISERROR('the session ends', 20, 1) WITH LOG")
                except pymssql.Error as exc:
                    seen.append(exc)
                    raise

        pool.run_transaction(unit, policy=_policy())
    assert classify(seen[0]).kind is ErrorKind.DISCONNECT
    assert _outside(tds_server, "SELECT COUNT(*) FROM t7") == [(1,)]
