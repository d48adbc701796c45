"""One list of behaviour probes, run against the TDS test server and a real engine.

Each probe does one thing a pool depends on (transaction counts, the number and severity
of a common fault, what a killed or restarted session sees, what a reset clears, a
failed login) and returns a short observation string. :func:`run_probes` runs them all
against a :class:`ProbeTarget`; tests/integration/realserver/test_real_probes.py compares
the test server with the real one, and docs/testing.md shows the table of differences.

Observations are written so that the same behaviour reads the same on every engine:
``"error 3903 sev 16"``, ``"trancount 1"``, ``"ok"``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pymssql


@dataclass
class ProbeTarget:
    """How to reach a server: ``connect_kwargs`` (pymssql keywords, tds_version 7.4),
    ``restart`` (None when we may not restart it)."""

    name: str
    connect_kwargs: dict[str, Any]
    restart: Callable[[], None] | None = None

    def connect(self, **extra: Any) -> Any:
        kw = {**self.connect_kwargs, "login_timeout": 10, "timeout": 30}
        kw.update(extra)
        return pymssql.connect(**kw)

    @contextmanager
    def session(self, **extra: Any) -> Iterator[Any]:
        """:meth:`connect`, closed when the block ends."""
        conn = self.connect(**extra)
        try:
            yield conn
        finally:
            conn.close()


def error_of(exc: BaseException) -> str:
    """``"error N sev S"`` as the server sent it (no reinterpretation), or the driver's."""
    number: Any = exc.args[0] if exc.args else None
    ctx = exc.__context__
    severity = getattr(exc, "severity", None) or getattr(ctx, "severity", None)
    if isinstance(number, tuple):
        number = number[0]
    if not isinstance(number, int):
        number = getattr(exc, "number", None) or getattr(ctx, "number", None)
    if isinstance(number, int):
        return f"error {number}" + (f" sev {severity}" if severity else "")
    text = str(exc)
    if "Not connected" in text:
        return "not connected"
    return type(exc).__name__


def _scalar(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    row = cur.fetchone()
    return row[0] if row else None


def _execute(conn: Any, *statements: str) -> None:
    for sql in statements:
        conn.cursor().execute(sql)


def _try(conn: Any, sql: str) -> str:
    try:
        cur = conn.cursor()
        cur.execute(sql)
        if cur.description:
            cur.fetchall()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - the error is the observation
        return error_of(exc)


# ----------------------------------------------------------------------------- probes


def trancount_pymssql_default(t: ProbeTarget) -> str:
    with t.session() as conn:
        return f"trancount {_scalar(conn, 'SELECT @@TRANCOUNT')}"


def trancount_nested(t: ProbeTarget) -> str:
    with t.session(autocommit=True) as conn:
        _execute(conn, "BEGIN TRAN", "BEGIN TRAN")
        inner = _scalar(conn, "SELECT @@TRANCOUNT")
        conn.cursor().execute("COMMIT TRAN")
        after_commit = _scalar(conn, "SELECT @@TRANCOUNT")
        conn.cursor().execute("ROLLBACK TRAN")
        after = _scalar(conn, "SELECT @@TRANCOUNT")
        return f"2 BEGINs {inner}, COMMIT {after_commit}, ROLLBACK {after}"


def pymssql_rollback_after_commit(t: ProbeTarget) -> str:
    """What the pool does after every unit: COMMIT TRAN, then pymssql's rollback()."""
    with t.session() as conn:
        conn.cursor().execute("COMMIT TRAN")
        try:
            conn.rollback()
            outcome = "ignored"
        except Exception as exc:  # noqa: BLE001
            outcome = f"raises {error_of(exc)}"
        return f"{outcome}, then trancount {_scalar(conn, 'SELECT @@TRANCOUNT')}"


def implicit_transactions(t: ProbeTarget) -> str:
    with t.session(autocommit=True) as conn:
        _execute(conn, "CREATE TABLE #it (x INT)", "SET IMPLICIT_TRANSACTIONS ON",
                 "INSERT INTO #it VALUES (1)")
        opened = _scalar(conn, "SELECT @@TRANCOUNT")
        commit = _try(conn, "COMMIT TRAN")
        return f"INSERT opens {opened}, COMMIT {commit}, then {_scalar(conn, 'SELECT @@TRANCOUNT')}"


def error_keeps_transaction(t: ProbeTarget) -> str:
    """A statement error inside a transaction (XACT_ABORT OFF): is the transaction kept?"""
    with t.session() as conn:
        err = _try(conn, "SELECT 1/0")
        return f"{err}, then trancount {_scalar(conn, 'SELECT @@TRANCOUNT')}"


def xact_abort_error(t: ProbeTarget) -> str:
    with t.session() as conn:
        conn.cursor().execute("SET XACT_ABORT ON")
        err = _try(conn, "SELECT 1/0")
        return f"{err}, then trancount {_scalar(conn, 'SELECT @@TRANCOUNT')}"


def _error_probe(sql: str, setup: str = "") -> Callable[[ProbeTarget], str]:
    """A probe that runs ``sql`` (after ``setup``) in autocommit: its error, or "ok"."""
    def probe(t: ProbeTarget) -> str:
        with t.session(autocommit=True) as conn:
            if setup:
                conn.cursor().execute(setup)
            return _try(conn, sql)

    return probe


def lock_timeout(t: ProbeTarget) -> str:
    holder = t.connect(autocommit=True)
    waiter = t.connect(autocommit=True)
    name = f"probe_lock_{int(time.time() * 1000) % 10**9}"
    try:
        _execute(holder, f"CREATE TABLE {name} (id INT PRIMARY KEY, v INT)",
                 f"INSERT INTO {name} VALUES (1, 0)", "BEGIN TRAN",
                 f"UPDATE {name} SET v = 1 WHERE id = 1")
        _execute(waiter, "SET LOCK_TIMEOUT 200", "BEGIN TRAN")
        err = _try(waiter, f"UPDATE {name} SET v = 2 WHERE id = 1")
        return f"{err}, then trancount {_scalar(waiter, 'SELECT @@TRANCOUNT')}"
    finally:
        for c in (waiter, holder):
            _try(c, "IF @@TRANCOUNT > 0 ROLLBACK TRAN")
        _try(holder, f"DROP TABLE {name}")
        holder.close()
        waiter.close()


def deadlock_victim(t: ProbeTarget) -> str:
    a, b = t.connect(autocommit=True), t.connect(autocommit=True)
    name = f"probe_dl_{int(time.time() * 1000) % 10**9}"
    _execute(a, f"CREATE TABLE {name} (id INT PRIMARY KEY, v INT)",
             f"INSERT INTO {name} VALUES (1, 0)", f"INSERT INTO {name} VALUES (2, 0)")
    barrier = threading.Barrier(2, timeout=30)
    seen: list[str] = []

    def run(conn: Any, first: int, second: int) -> None:
        _execute(conn, "BEGIN TRAN", f"UPDATE {name} SET v = v + 1 WHERE id = {first}")
        barrier.wait()
        err = _try(conn, f"UPDATE {name} SET v = v + 1 WHERE id = {second}")
        if err != "ok":
            seen.append(f"{err}, then trancount {_scalar(conn, 'SELECT @@TRANCOUNT')}")
        _try(conn, "IF @@TRANCOUNT > 0 ROLLBACK TRAN")

    threads = [threading.Thread(target=run, args=(a, 1, 2), name="probe-dl-a"),
               threading.Thread(target=run, args=(b, 2, 1), name="probe-dl-b")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    _try(a, f"DROP TABLE {name}")
    a.close()
    b.close()
    return " / ".join(seen) if seen else "no victim"


def _next_two_calls(conn: Any) -> str:
    """What a session that lost its server sees on its next two calls; then it is closed
    (which may fail too)."""
    first, second = _try(conn, "SELECT 1"), _try(conn, "SELECT 1")
    try:
        conn.close()
    except Exception:  # noqa: BLE001
        pass
    return f"{first}, then {second}"


def killed_session(t: ProbeTarget) -> str:
    victim = t.connect(autocommit=True)
    spid = _scalar(victim, "SELECT @@SPID")
    with t.session(autocommit=True) as admin:
        admin.cursor().execute(f"KILL {int(spid)}")
    time.sleep(0.2)
    return _next_two_calls(victim)


def kill_own_session(t: ProbeTarget) -> str:
    with t.session(autocommit=True) as conn:
        return _try(conn, f"KILL {int(_scalar(conn, 'SELECT @@SPID'))}")


def restarted_session(t: ProbeTarget) -> str:
    if t.restart is None:
        return "not ours to restart"
    conn = t.connect(autocommit=True)
    _scalar(conn, "SELECT 1")
    t.restart()
    return _next_two_calls(conn)


def sp_reset_connection(t: ProbeTarget) -> str:
    with t.session(autocommit=True) as conn:
        _execute(conn, "CREATE TABLE #r (x INT)", "SET LOCK_TIMEOUT 1234",
                 "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED", "BEGIN TRAN")
        try:
            conn._conn.init_procedure("sp_reset_connection").execute()
        except Exception as exc:  # noqa: BLE001
            return f"RPC {error_of(exc)}"
        temp = _scalar(conn, "SELECT OBJECT_ID('tempdb..#r')")
        return (f"trancount {_scalar(conn, 'SELECT @@TRANCOUNT')}, #temp "
                f"{'dropped' if temp is None else 'kept'}, LOCK_TIMEOUT "
                f"{_scalar(conn, 'SELECT @@LOCK_TIMEOUT')}")


_WRONG_PASSWORD = """
import json, sys, pymssql
from mssql_pool._driver import extract
kw = json.loads(sys.argv[1])
try:
    pymssql.connect(**kw).close()
    print("logged in")
except Exception as exc:
    nums = extract(exc).numbers
    print("login failed 18456" if 18456 in nums else f"numbers {nums[:2]}")
"""


def wrong_password(t: ProbeTarget) -> str:
    """In a fresh interpreter: pymssql keeps login error state process-wide, so a second
    failed login in one process may lose its server message."""
    import json
    import subprocess
    import sys

    kw = {**t.connect_kwargs, "password": "Definitely-Wrong-1", "login_timeout": 10}
    out = subprocess.run([sys.executable, "-c", _WRONG_PASSWORD, json.dumps(kw)],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or f"probe failed: {out.stderr.strip()[-200:]}"


def version_banner(t: ProbeTarget) -> str:
    with t.session(autocommit=True) as conn:
        text = str(_scalar(conn, "SELECT @@VERSION"))
        return "Microsoft ..." if text.startswith("Microsoft") else text.split(" - ")[0]


PROBES: list[tuple[str, str, Callable[[ProbeTarget], str]]] = [
    ("version", "@@VERSION starts with", version_banner),
    ("trancount_default", "@@TRANCOUNT after pymssql's connect (autocommit off)",
     trancount_pymssql_default),
    ("trancount_nested", "nested BEGIN TRAN, COMMIT, ROLLBACK", trancount_nested),
    ("commit_no_tran", "COMMIT TRAN with no transaction", _error_probe("COMMIT TRAN")),
    ("rollback_no_tran", "ROLLBACK TRAN with no transaction", _error_probe("ROLLBACK TRAN")),
    ("rollback_after_commit", "pymssql rollback() after COMMIT TRAN",
     pymssql_rollback_after_commit),
    ("implicit_transactions", "SET IMPLICIT_TRANSACTIONS ON, INSERT, COMMIT",
     implicit_transactions),
    ("error_in_tran", "1/0 inside a transaction (XACT_ABORT OFF)", error_keeps_transaction),
    ("xact_abort", "1/0 inside a transaction with XACT_ABORT ON", xact_abort_error),
    ("divide_by_zero", "SELECT 1/0", _error_probe("SELECT 1/0")),
    ("pk_violation", "duplicate primary key",
     _error_probe("INSERT INTO #pk VALUES (1)",
                  "CREATE TABLE #pk (id INT PRIMARY KEY); INSERT INTO #pk VALUES (1)")),
    ("missing_table", "SELECT from a missing table",
     _error_probe("SELECT * FROM dbo.no_such_table_probe")),
    ("syntax_error", "SELECT 1 +", _error_probe("SELECT 1 +")),
    ("raiserror", "RAISERROR('x', 16, 1)", _error_probe("RAISERROR('x', 16, 1)")),
    ("throw", "THROW 51000", _error_probe("THROW 51000, 'x', 1")),
    ("lock_timeout", "blocked UPDATE with SET LOCK_TIMEOUT 200", lock_timeout),
    ("deadlock", "two sessions, opposite lock order", deadlock_victim),
    ("killed", "another session KILLs ours: our next two calls", killed_session),
    ("kill_self", "KILL @@SPID", kill_own_session),
    ("restarted", "server restarted: our next two calls", restarted_session),
    ("reset", "sp_reset_connection RPC after #temp, LOCK_TIMEOUT, BEGIN TRAN",
     sp_reset_connection),
    ("wrong_password", "login with a wrong password", wrong_password),
    ("waitfor", "WAITFOR DELAY", _error_probe("WAITFOR DELAY '00:00:00.010'")),
]


def run_probes(target: ProbeTarget) -> dict[str, str]:
    """Every probe's observation (a probe that raises is reported, not fatal)."""
    out: dict[str, str] = {}
    for key, _title, probe in PROBES:
        try:
            out[key] = probe(target)
        except Exception as exc:  # noqa: BLE001
            out[key] = f"probe failed: {error_of(exc)}"
    return out


#: What SQL Server does, by Microsoft's documentation (and pymssql's documented reactions
#: for the client-side rows). The TDS test server is checked against it.
SQLSERVER: dict[str, str] = {
    "version": "Microsoft ...",
    "trancount_default": "trancount 1",
    "trancount_nested": "2 BEGINs 2, COMMIT 1, ROLLBACK 0",
    "commit_no_tran": "error 3902 sev 16",
    "rollback_no_tran": "error 3903 sev 16",
    "rollback_after_commit": "ignored, then trancount 1",
    "implicit_transactions": "INSERT opens 1, COMMIT ok, then 0",
    "error_in_tran": "error 8134 sev 16, then trancount 1",
    "xact_abort": "error 8134 sev 16, then trancount 0",
    "divide_by_zero": "error 8134 sev 16",
    "pk_violation": "error 2627 sev 14",
    "missing_table": "error 208 sev 16",
    "syntax_error": "error 102 sev 15",
    "raiserror": "error 50000 sev 16",
    "throw": "error 51000 sev 16",
    "lock_timeout": "error 1222 sev 16, then trancount 1",
    "deadlock": "error 1205 sev 13, then trancount 0",
    "killed": "error 20047 sev 9, then not connected",
    "kill_self": "error 6104 sev 16",
    "restarted": "error 20047 sev 9, then not connected",
    "reset": "trancount 0, #temp dropped, LOCK_TIMEOUT -1",
    "wrong_password": "login failed 18456",
    "waitfor": "ok",
}

#: Where the TDS test server still departs from SQL Server, and why (docs/testing.md).
#: Empty: division by zero (SQLite's NULL) was the last one, fixed with the probes.
TEST_SERVER_DEPARTURES: dict[str, str] = {}

#: Where Babelfish 4.2 departs from SQL Server (seen), documented in docs/testing.md.
BABELFISH_DEPARTURES: dict[str, str] = {
    "version": "@@VERSION begins \"Babelfish for PostgreSQL\"",
    "rollback_after_commit": "3903 in other words: pymssql raises it (and skips its BEGIN TRAN)",
    "missing_table": "33557097 'relation ... does not exist'",
    "syntax_error": "33557097 'syntax error near ...'",
    "lock_timeout": "33557097 'canceling statement due to lock timeout', and the whole "
    "transaction is rolled back",
    "kill_self": "33557097",
    "reset": "no sp_reset_connection",
    "waitfor": "no WAITFOR",
}


def markdown(results: dict[str, dict[str, str]]) -> str:
    """A table: one row per probe, one column per target (plus SQL Server's)."""
    names = list(results)
    lines = ["| probe | SQL Server (documented) | " + " | ".join(names) + " |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for key, title, _ in PROBES:
        cells = [results[n].get(key, "") for n in names]
        lines.append(f"| {title} | {SQLSERVER[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
