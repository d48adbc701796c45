"""Nothing carried over: borrower A runs a generated sequence of session-changing steps
(transactions opened and left, SET options, #temp tables, USE, context, impersonation,
locks) and returns its connection; borrower B, on the same pool, finds the session as a
new one would be, and A's uncommitted rows and locks are gone.

A small model of the transaction count follows A's steps, so the test knows exactly which
of A's rows are durable (committed by A itself) and which must have been rolled back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pymssql
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mssql_pool import ConnectionPool
from mssql_pool.testing.server import TdsServer

pytestmark = pytest.mark.timeout(3600)

#: MSSQL_POOL_SOAK=N runs N times as many generated examples (a soak run).
SOAK = max(1, int(os.environ.get("MSSQL_POOL_SOAK", "1") or 1))

SET_OPTIONS = ["SET NOCOUNT ON", "SET XACT_ABORT ON", "SET ANSI_NULLS OFF",
               "SET QUOTED_IDENTIFIER OFF", "SET ARITHABORT OFF", "SET ANSI_WARNINGS OFF",
               "set concat_null_yields_null off", "SET IMPLICIT_TRANSACTIONS OFF",
               "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET LOCK_TIMEOUT 5",
               "SET DATEFIRST 3", "SET LANGUAGE us_english", "SET CONTEXT_INFO 0x0A",
               "/* a comment */ SET\tNOCOUNT ON"]
USES = ["USE[otherdb]", 'USE"otherdb"', "use otherdb", "USE /* c */ [otherdb]"]
CONTEXTS = ["EXEC sp_set_session_context N'k', N'A'",
            "EXEC sp_set_session_context @key = N'k', @value = N'A'",
            "EXEC sp_set_session_context N'k', N'A', 1",
            "sp_set_session_context N'k', N'A', 1"]
IMPERSONATIONS = ["EXECUTE AS LOGIN = 'intruder'", "EXECUTE AS USER = 'intruder'",
                  "SETUSER 'intruder'", "EXEC('EXECUTE AS LOGIN = ''intruder''')"]

LOCK = "UPDATE carry_lock SET v = v + 1 WHERE id = 1"

STEP = st.one_of(
    st.just(("begin", "BEGIN TRAN")),
    st.just(("begin", "EXEC('BEGIN TRAN')")),
    st.just(("insert", "")),
    st.just(("lock", LOCK)),
    st.just(("commit", "")),
    st.just(("rollback", "")),
    st.just(("commit_stmt", "COMMIT TRAN")),
    st.just(("temp", "")),
    st.sampled_from(SET_OPTIONS).map(lambda s: ("sql", s)),
    st.sampled_from(USES).map(lambda s: ("use", s)),
    st.sampled_from(CONTEXTS).map(lambda s: ("context", s)),
    st.sampled_from(IMPERSONATIONS).map(lambda s: ("first", s)),
)


@dataclass
class Model:
    """What A's steps did to the transaction count and to the durability of its rows."""

    autocommit: bool
    tc: int = 0
    db: str = "master"
    pending: list[tuple[str, str]] = field(default_factory=list)
    committed: set[tuple[str, str]] = field(default_factory=set)
    temps: list[str] = field(default_factory=list)
    n: int = 0
    read_only_key: bool = False

    def __post_init__(self) -> None:
        self.tc = 0 if self.autocommit else 1

    def end_all(self, commit: bool) -> None:
        if commit:
            self.committed.update(self.pending)
        self.pending = []


def _context(conn: Any, cur: Any, model: Model, sql: str) -> None:
    if not model.read_only_key:  # setting a read-only key again fails with 15664
        cur.execute(sql)
        model.read_only_key = sql.endswith(", 1")


def _begin(conn: Any, cur: Any, model: Model, sql: str) -> None:
    cur.execute(sql)
    model.tc += 1


def _insert(conn: Any, cur: Any, model: Model, sql: str) -> None:
    tag = f"A{model.n}"
    cur.execute(f"INSERT INTO carry (tag) VALUES ('{tag}')")
    if model.tc == 0:
        model.committed.add((model.db, tag))
    else:
        model.pending.append((model.db, tag))


def _lock(conn: Any, cur: Any, model: Model, sql: str) -> None:
    if model.db == "master":
        cur.execute(sql)


def _commit(conn: Any, cur: Any, model: Model, sql: str) -> None:
    if not model.autocommit and model.tc == 0:
        return               # pymssql's COMMIT TRAN would fail with 3902
    conn.commit()            # pymssql: COMMIT TRAN; BEGIN TRAN (nothing in autocommit)
    if not model.autocommit and model.tc == 1:
        model.end_all(commit=True)


def _rollback(conn: Any, cur: Any, model: Model, sql: str) -> None:
    conn.rollback()          # pymssql: ROLLBACK TRAN (every level); BEGIN TRAN
    if not model.autocommit:
        model.end_all(commit=False)
        model.tc = 1


def _commit_stmt(conn: Any, cur: Any, model: Model, sql: str) -> None:
    if model.tc > 0:
        cur.execute(sql)
        model.tc -= 1
        if model.tc == 0:
            model.end_all(commit=True)


def _temp(conn: Any, cur: Any, model: Model, sql: str) -> None:
    name = f"#tmp{model.n}"
    cur.execute(f"CREATE TABLE {name} (a INT)")
    model.temps.append(name)


def _use(conn: Any, cur: Any, model: Model, sql: str) -> None:
    cur.execute(sql)
    model.db = "otherdb"


def _plain(conn: Any, cur: Any, model: Model, sql: str) -> None:
    # also "first": procedure calls without EXEC must start a batch, so each runs alone
    cur.execute(sql)


#: What borrower A does for each kind of step, and what the model learns from it.
_STEPS: dict[str, Callable[[Any, Any, Model, str], None]] = {
    "context": _context, "begin": _begin, "insert": _insert, "lock": _lock,
    "commit": _commit, "rollback": _rollback, "commit_stmt": _commit_stmt, "temp": _temp,
    "use": _use,
}


def _run_a(conn: Any, model: Model, steps: list[tuple[str, str]]) -> None:
    cur = conn.cursor()
    for kind, sql in steps:
        model.n += 1
        _STEPS.get(kind, _plain)(conn, cur, model, sql)


def _rows(cur: Any, sql: str) -> list[tuple[Any, ...]]:
    cur.execute(sql)
    return list(cur.fetchall())


@pytest.fixture(scope="module")
def server() -> Iterator[TdsServer]:
    srv = TdsServer().start()
    conn = pymssql.connect(**srv.connect_kwargs(), autocommit=True)
    cur = conn.cursor()
    cur.execute("CREATE DATABASE otherdb")
    for db in ("master", "otherdb"):
        cur.execute(f"USE {db}")
        cur.execute("CREATE TABLE carry (tag VARCHAR(20))")
    cur.execute("USE master")
    cur.execute("CREATE TABLE carry_lock (id INT PRIMARY KEY, v INT)")
    cur.execute("INSERT INTO carry_lock VALUES (1, 0)")
    conn.close()
    try:
        yield srv
    finally:
        srv.close()


def _url(server: TdsServer, autocommit: bool) -> str:
    return f"{server.url}?autocommit={'true' if autocommit else 'false'}"


_BASELINE: dict[bool, tuple[Any, ...]] = {}


def _session_view(conn: Any, temps: list[str]) -> tuple[Any, ...]:
    cur = conn.cursor()
    row = _rows(cur, "SELECT @@TRANCOUNT, DB_NAME(), SUSER_NAME(), USER_NAME(), @@OPTIONS, "
                     "CONTEXT_INFO(), SESSION_CONTEXT(N'k'), @@LOCK_TIMEOUT")[0]
    iso = _rows(cur, "SELECT transaction_isolation_level FROM sys.dm_exec_sessions "
                     "WHERE session_id = @@SPID")[0][0]
    leftover = [t for t in temps if _rows(cur, f"SELECT OBJECT_ID('tempdb..{t}')")[0][0]]
    return (*row, iso, leftover)


def _baseline(server: TdsServer, autocommit: bool) -> tuple[Any, ...]:
    if autocommit not in _BASELINE:
        with ConnectionPool(_url(server, autocommit), min_size=1, max_size=1) as pool, \
                pool.connection() as conn:
            _BASELINE[autocommit] = _session_view(conn, [])
    return _BASELINE[autocommit]


@example(autocommit=True, body=[("begin", "BEGIN TRAN"), ("insert", "")],
         finish=[("commit", "")])
@example(autocommit=False, body=[("begin", "BEGIN TRAN"), ("lock", LOCK)],
         finish=[("commit", "")])
@example(autocommit=False, body=[("first", IMPERSONATIONS[3])], finish=[])
@settings(max_examples=30 * SOAK, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(autocommit=st.booleans(), body=st.lists(STEP, min_size=1, max_size=7),
       finish=st.sampled_from([[], [("commit", "")], [("rollback", "")]]))
def test_nothing_of_borrower_a_reaches_borrower_b(server: TdsServer, autocommit: bool,
                                                  body: list[tuple[str, str]],
                                                  finish: list[tuple[str, str]]) -> None:
    # Borrowers often end with commit() or rollback(): A does so in two thirds of the cases
    # (what must not make the pool forget a transaction A opened by hand).
    steps = body + finish
    outside = pymssql.connect(**server.connect_kwargs(), autocommit=True)
    try:
        ocur = outside.cursor()
        for db in ("otherdb", "master"):
            ocur.execute(f"USE {db}")
            ocur.execute("DELETE FROM carry")
        baseline = _baseline(server, autocommit)
        model = Model(autocommit)
        with ConnectionPool(_url(server, autocommit), min_size=1, max_size=1) as pool:
            with pool.connection() as a:
                _run_a(a, model, steps)
            with pool.connection() as b:
                assert _session_view(b, model.temps) == baseline, steps
                b.cursor().execute("INSERT INTO carry (tag) VALUES ('B')")
                b.commit()
        # A's rows: exactly those A committed itself; B's row durable (B was not inside a
        # transaction of A's that was later rolled back).
        seen = set()
        for db in ("otherdb", "master"):
            ocur.execute(f"USE {db}")
            seen |= {(db, t) for (t,) in _rows(ocur, "SELECT tag FROM carry")}
        assert seen == model.committed | {("master", "B")}, steps
        # A's locks: another session can take the row at once.
        ocur.execute("SET LOCK_TIMEOUT 2000")
        ocur.execute("UPDATE carry_lock SET v = v WHERE id = 1")
    finally:
        outside.close()
