"""SQL Server semantics over SQLite: one executor per session, one SQLite file per database.

T-SQL arrives as text; the statements SQLite cannot run (SET, DECLARE, IF, WAITFOR, PRINT,
RAISERROR, THROW, USE, EXEC, transactions) are handled here, the rest is rewritten at the token
level (variables, ``@@`` values, ``#temp`` names, ``dbo.`` qualifiers, ``N''``, ``(max)``,
``OUTPUT inserted.x``) and translated with sqlglot.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import _locks, _plans, _procs, _types
from . import _protocol as P
from ._catalog import CATALOG
from ._columns import infer_columns, literal, register_converters
from ._faults import error_text
from ._results import (
    Done,
    Env,
    Info,
    Out,
    ReturnFromProcedure,
    ReturnStatus,
    Rows,
    SqlError,
    Waiter,
)
from ._tsql import Block, IfStmt, Simple, SqlSyntaxError, Tok, TryCatch, tokenize, unquote

log = logging.getLogger("mssql_pool.testing.engine")

VERSION = (16, 0, 4135)
VERSION_STRING = (
    "Microsoft SQL Server 2022 (RTM-CU15) (KB5041321) - 16.0.4135.4 (X64) \n"
    "\tJul 10 2024 14:09:09 \n\tCopyright (C) 2022 Microsoft Corporation\n"
    "\tDeveloper Edition (64-bit) on Linux (mssql_pool.testing TDS test server) <X64>"
)
ISOLATION_NAMES = {
    1: "READ UNCOMMITTED", 2: "READ COMMITTED", 3: "REPEATABLE READ", 4: "SERIALIZABLE",
    5: "SNAPSHOT",
}
LOGIN_OPTIONS = {
    "ANSI_NULLS": True, "ANSI_NULL_DFLT_ON": True, "ANSI_PADDING": True, "ANSI_WARNINGS": True,
    "ARITHABORT": True, "CONCAT_NULL_YIELDS_NULL": True, "QUOTED_IDENTIFIER": True,
    "CURSOR_CLOSE_ON_COMMIT": False, "IMPLICIT_TRANSACTIONS": False, "NOCOUNT": False,
    "XACT_ABORT": False, "ARITHIGNORE": False, "NUMERIC_ROUNDABORT": False,
    "ANSI_DEFAULTS": False, "FMTONLY": False,
}
_OPTION_BITS = {
    "IMPLICIT_TRANSACTIONS": 2, "CURSOR_CLOSE_ON_COMMIT": 4, "ANSI_WARNINGS": 8,
    "ANSI_PADDING": 16, "ANSI_NULLS": 32, "ARITHABORT": 64, "ARITHIGNORE": 128,
    "QUOTED_IDENTIFIER": 256, "NOCOUNT": 512, "ANSI_NULL_DFLT_ON": 1024,
    "CONCAT_NULL_YIELDS_NULL": 4096, "NUMERIC_ROUNDABORT": 8192, "XACT_ABORT": 16384,
}


# errors that end only the statement (the batch goes on), as SQL Server's do
STATEMENT_ERRORS = frozenset({245, 515, 547, 1222, 2601, 2627, 3701, 3902, 3903, 6104, 6106,
                              8134})

# ------------------------------------------------------------------------- server-wide


class Engine:
    """Databases and server identity shared by all sessions of one server."""

    def __init__(self, data_dir: str, databases: Iterable[str], server_name: str,
                 lock_wait: float = 10.0) -> None:
        register_converters()
        self.data_dir = data_dir
        self.server_name = server_name
        self.lock_wait = lock_wait
        self._lock = threading.Lock()
        self._databases: dict[str, str] = {}
        for name in ("master", "tempdb", "model", "msdb", *databases):
            self.add_database(name)
        self.sessions_provider: Callable[[], list[dict[str, Any]]] = list
        self.kill: Callable[[int], bool] = lambda spid: False
        self.listen_address: tuple[str, int] | None = None  # set by TdsServer.start()
        #: False when sqlglot is missing: statements run on SQLite untranslated
        self.translates = translation_available()
        if not self.translates:
            log.warning("TDS test server %s: %s", server_name, NO_TRANSLATION)

    def add_database(self, name: str) -> None:
        with self._lock:
            key = name.lower()
            if key not in self._databases:
                self._databases[key] = name
                path = self.path(name)
                con = sqlite3.connect(path)
                con.execute("PRAGMA journal_mode=WAL")
                con.close()

    def database_name(self, name: str) -> str | None:
        with self._lock:
            return self._databases.get(name.lower())

    def databases(self) -> list[str]:
        with self._lock:
            return list(self._databases.values())

    def path(self, name: str) -> str:
        safe = re.sub(r"[^\w.-]", "_", name.lower())
        return os.path.join(self.data_dir, f"{safe}.sqlite3")

    def database_id(self, name: str) -> int:
        names = [n.lower() for n in self.databases()]
        return names.index(name.lower()) + 1 if name.lower() in names else 0


# ------------------------------------------------------------------------- per session

@dataclass
class SessionState:
    spid: int
    user: str
    login_database: str
    hostname: str = ""
    appname: str = ""
    database: str = "master"
    trancount: int = 0
    options: dict[str, bool] = field(default_factory=lambda: dict(LOGIN_OPTIONS))
    isolation: int = 2
    lock_timeout: int = -1
    textsize: int = 2147483647
    context_info: bytes | None = None
    session_context: dict[str, Any] = field(default_factory=dict)
    read_only_keys: set[str] = field(default_factory=set)
    # EXECUTE AS / SETUSER: a stack of ("LOGIN" | "USER", name); sp_reset_connection
    # leaves it alone (a reset does not restore the security context), REVERT pops.
    impersonation: list[tuple[str, str]] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    rowcount: int = 0
    identity: int | None = None
    error: int = 0
    language: str = "us_english"
    login_time: _dt.datetime = field(default_factory=_dt.datetime.now)


class Executor:
    """Runs one session's requests against SQLite."""

    def __init__(self, engine: Engine, state: SessionState, major: int) -> None:
        self.engine = engine
        self.state = state
        self.major = major
        self._conns: dict[str, sqlite3.Connection] = {}
        self._tran_conns: list[sqlite3.Connection] = []
        self._catching_depth = 0
        self._divided_by_zero = False     # set by tsql_div just before it raises
        self._catch: SqlError | None = None
        self.var_types: dict[str, _types.SqlType] = {}
        self.locks = _locks.SessionLocks(self)
        self.conn = self._connect(state.database)

    # ---------------------------------------------------------------- connections

    def _connect(self, database: str) -> sqlite3.Connection:
        key = database.lower()
        con = self._conns.get(key)
        if con is None:
            con = sqlite3.connect(
                self.engine.path(database), isolation_level=None, check_same_thread=False,
                detect_types=sqlite3.PARSE_DECLTYPES, timeout=self.engine.lock_wait,
            )
            con.execute("ATTACH DATABASE ':memory:' AS sys")
            con.execute("ATTACH DATABASE ':memory:' AS information_schema")
            self._install_functions(con)
            _types.install_functions(con)
            self.locks.install(con, database)
            self._conns[key] = con
            self._apply_lock_timeout()
        return con

    def _apply_lock_timeout(self) -> None:
        """SQLite's busy wait covers only another statement in flight (statements run in
        autocommit mode); SET LOCK_TIMEOUT bounds waits for row locks in ._locks."""
        ms = int(self.engine.lock_wait * 1000)
        for con in self._conns.values():
            con.execute(f"PRAGMA busy_timeout = {int(ms)}")

    def close(self) -> None:
        for con in self._conns.values():
            try:
                con.close()
            except sqlite3.Error:
                pass
        self._conns.clear()

    def _install_functions(self, con: sqlite3.Connection) -> None:
        st = self.state
        eng = self.engine

        def tsql_div(a: Any, b: Any) -> Any:
            # T-SQL's "/": division by zero is error 8134 (with ARITHABORT or ANSI_WARNINGS
            # on, as pymssql sets them), not SQLite's NULL; int / int truncates toward zero.
            if a is None or b is None:
                return None
            a, b = _number(a), _number(b)
            if a is None or b is None:
                return None
            if b == 0:
                if st.options.get("ARITHABORT") or st.options.get("ANSI_WARNINGS"):
                    self._divided_by_zero = True
                    raise ZeroDivisionError("8134")
                return None
            if isinstance(a, int) and isinstance(b, int):
                q = abs(a) // abs(b)
                return q if (a >= 0) == (b >= 0) else -q
            return a / b

        con.create_function("tsql_div", 2, tsql_div, deterministic=True)

        def server_property(name: Any) -> Any:
            key = str(name).lower()
            return {
                "productversion": "{}.{}.{}.4".format(*VERSION),
                "productlevel": "RTM", "edition": "Developer Edition (64-bit)",
                "engineedition": 3, "servername": eng.server_name,
                "machinename": eng.server_name, "instancename": None,
                "ishadrenabled": 0, "isclustered": 0, "collation": "SQL_Latin1_General_CP1_CI_AS",
                "productmajorversion": str(VERSION[0]), "productupdatelevel": "CU15",
            }.get(key)

        def session_context(key: Any) -> Any:
            return st.session_context.get(str(key))

        def object_id(name: Any, _type: Any = None) -> Any:
            return self._object_id(str(name))

        def db_name(dbid: Any = None) -> Any:
            if dbid is None:
                return st.database
            dbs = eng.databases()
            i = int(dbid) - 1
            return dbs[i] if 0 <= i < len(dbs) else None

        def db_id(name: Any = None) -> Any:
            return eng.database_id(st.database if name is None else str(name)) or None

        con.create_function("serverproperty", 1, server_property)
        con.create_function("connectionproperty", 1, lambda name: {
            # where the session landed: the listening address (routing tests compare it)
            "local_net_address": eng.listen_address[0] if eng.listen_address else None,
            "local_tcp_port": eng.listen_address[1] if eng.listen_address else None,
            "net_transport": "TCP", "protocol_type": "TSQL", "auth_scheme": "SQL",
        }.get(str(name).lower()))
        con.create_function("session_context", 1, session_context)
        con.create_function("object_id", 1, object_id)
        con.create_function("object_id", 2, object_id)
        con.create_function("db_name", 0, db_name)
        con.create_function("db_name", 1, db_name)
        con.create_function("db_id", 0, db_id)
        con.create_function("db_id", 1, db_id)
        con.create_function("newid", 0, lambda: str(uuid.uuid4()).upper())
        con.create_function("uuid", 0, lambda: str(uuid.uuid4()).upper())
        con.create_function("len", 1, lambda s: None if s is None else len(str(s).rstrip(" ")))

    def _object_id(self, name: str) -> int | None:
        parts = [p.strip("[]") for p in name.split(".")]
        base = parts[-1]
        con = self.conn
        if base.startswith("#"):
            row = con.execute(
                "SELECT rowid FROM sqlite_temp_master WHERE type IN ('table','view') AND "
                "lower(name) = lower(?)", (_temp_name(base),),
            ).fetchone()
            return None if row is None else -int(row[0]) - 1000
        row = con.execute(
            "SELECT rowid FROM sqlite_master WHERE type IN ('table','view','index') AND "
            "lower(name) = lower(?)", (base,),
        ).fetchone()
        return None if row is None else int(row[0]) + 1000

    # ---------------------------------------------------------------- transactions

    @property
    def _in_sqlite_tran(self) -> bool:
        return self.state.trancount > 0

    def _begin_sqlite(self) -> None:
        """Statements run in SQLite's autocommit mode; ._locks makes the transaction (row
        locks, lock waits, deadlock victims, an undo log replayed on rollback)."""

    def _end_sqlite(self, commit: bool) -> None:
        self.locks.end(commit)

    def begin(self, out: list[Out]) -> None:
        self.state.trancount += 1
        if self.state.trancount == 1:
            self._tran_env(out, P.ENV_BEGINTRAN)

    def commit(self, out: list[Out]) -> None:
        st = self.state
        if st.trancount <= 0:
            raise SqlError(3902)
        st.trancount -= 1
        if st.trancount == 0:
            self._end_sqlite(True)
            self._tran_env(out, P.ENV_COMMITTRAN)

    def rollback(self, out: list[Out], savepoint: str | None = None) -> None:
        st = self.state
        if st.trancount <= 0:
            raise SqlError(3903)
        if savepoint:
            if not self.locks.rollback_to(savepoint):
                raise SqlError(
                    6401, f"Cannot roll back {savepoint}. No transaction or savepoint of "
                    "that name was found.", 16)
            return
        st.trancount = 0
        self._end_sqlite(False)
        self._tran_env(out, P.ENV_ROLLBACKTRAN)

    def abort_transaction(self) -> None:
        """Roll back whatever is open (deadlock victim, reset, disconnect)."""
        self.state.trancount = 0
        self._end_sqlite(False)

    def _tran_env(self, out: list[Out], kind: int) -> None:
        if self.major < 0x72:
            return
        desc = self.state.spid.to_bytes(8, "little")
        if kind == P.ENV_BEGINTRAN:
            out.append(Env(kind, desc, b""))
        else:
            out.append(Env(kind, b"", desc))

    # ---------------------------------------------------------------- reset

    def reset(self) -> None:
        """sp_reset_connection: what SQL Server resets (the isolation level stays)."""
        st = self.state
        self.abort_transaction()
        for con in self._conns.values():
            names = [r[0] for r in con.execute(
                "SELECT name FROM sqlite_temp_master WHERE type = 'table'")]
            for name in names:
                con.execute(f'DROP TABLE temp."{name}"')
        st.options = dict(LOGIN_OPTIONS)
        st.context_info = None
        # Read-only keys stay, like the security context of EXECUTE AS: state the pool
        # must discard a connection for, never hand on after a reset.
        st.session_context = {k: v for k, v in st.session_context.items()
                              if k in st.read_only_keys}
        st.variables = {}
        st.lock_timeout = -1
        self._apply_lock_timeout()
        st.textsize = 2147483647
        st.language = "us_english"
        st.rowcount = 0
        st.error = 0
        if st.database.lower() != st.login_database.lower():
            st.database = st.login_database
            self.conn = self._connect(st.database)

    # ---------------------------------------------------------------- entry points

    def run_batch(self, sql: str, wait: Waiter) -> list[Out]:
        if _procs.handles(sql):  # CREATE/ALTER/DROP PROCEDURE: the whole batch
            return _procs.run_definition(self, sql)
        out: list[Out] = []
        self._catching_depth = 0
        self._divided_by_zero = False
        try:
            stmts = _plans.parse_cached(sql)
        except SqlSyntaxError as exc:
            out.append(SqlError(102, near=exc.near[:30]))
            return out
        try:
            self._run_list(stmts, out, wait)
        except SqlError as exc:
            self._on_error(exc)
            out.append(exc)
        except ReturnFromProcedure:
            pass
        return out

    def _on_error(self, exc: SqlError) -> None:
        self.state.error = exc.number
        if exc.number == 1205 or (self.state.options.get("XACT_ABORT") and exc.severity > 10):
            self.abort_transaction()

    def _run_list(self, stmts: list[object], out: list[Out], wait: Waiter) -> None:
        for s in stmts:
            if isinstance(s, Simple):
                try:
                    self._run_simple(s, out, wait)
                except SqlError as exc:
                    # statement-terminating errors let the batch go on, as in SQL Server
                    if exc.number not in STATEMENT_ERRORS or self._catching_depth:
                        raise
                    self._on_error(exc)
                    out.append(exc)
            elif isinstance(s, IfStmt):
                if self._truth(s.cond):
                    self._run_list(s.then, out, wait)
                else:
                    self._run_list(s.orelse, out, wait)
            elif isinstance(s, Block):
                self._run_list(s.body, out, wait)
            elif isinstance(s, TryCatch):
                self._catching_depth += 1
                try:
                    self._run_list(s.body, out, wait)
                except SqlError as exc:
                    self._catching_depth -= 1
                    self._on_error(exc)
                    saved = self._catch
                    self._catch = exc
                    try:
                        self._run_list(s.catch, out, wait)
                    finally:
                        self._catch = saved
                else:
                    self._catching_depth -= 1

    def _truth(self, cond: Simple) -> bool:
        sql = "SELECT CASE WHEN " + self._translate_expr(cond.toks) + " THEN 1 ELSE 0 END"
        row = self._query(sql)[1]
        return bool(row and row[0][0])

    def _scalar(self, toks: list[Tok]) -> Any:
        if not toks:
            return None
        rows = self._query("SELECT " + self._translate_expr(toks))[1]
        return rows[0][0] if rows else None

    # ---------------------------------------------------------------- statements

    def _run_simple(self, s: Simple, out: list[Out], wait: Waiter) -> None:
        toks = s.toks
        w = [t.up for t in toks]
        head = w[0]
        st = self.state
        if st.trancount == 0 and st.options.get("IMPLICIT_TRANSACTIONS") and opens_implicit(toks):
            self.begin(out)  # the unseen BEGIN TRAN of implicit transaction mode
        if head == "SET":
            self._set(toks, out)
        elif head == "DECLARE":
            self._declare(toks)
            _types.declare(self, toks)
        elif head == "BEGIN" and len(w) > 1 and w[1] in ("TRAN", "TRANSACTION", "DISTRIBUTED"):
            self.begin(out)
        elif head == "COMMIT":
            self.commit(out)
        elif head == "ROLLBACK":
            name = None
            if len(toks) > 2 and w[1] in ("TRAN", "TRANSACTION"):
                name = unquote(toks[2])
            elif len(toks) == 2 and w[1] not in ("TRAN", "TRANSACTION", "WORK"):
                name = unquote(toks[1])
            if name and self._in_sqlite_tran and self._has_savepoint(name):
                self.rollback(out, savepoint=name)
            else:
                self.rollback(out)
        elif head == "SAVE":
            if st.trancount <= 0:
                raise SqlError(628, "Cannot issue SAVE TRANSACTION when there is no active "
                               "transaction.", 16)
            self.locks.savepoint(unquote(toks[-1]))
        elif head == "PRINT":
            out.append(Info(0, str(self._scalar(toks[1:])), 0))
        elif head == "RAISERROR":
            self._raiserror(toks, out)
        elif head == "THROW":
            self._throw(toks)
        elif head == "WAITFOR":
            self._waitfor(toks, wait)
        elif head == "USE":
            self._use(unquote(toks[1]) if len(toks) > 1 else "", out)
        elif head in ("EXEC", "EXECUTE") and len(w) > 1 and w[1] == "AS":
            self._execute_as(toks)
        elif head == "SETUSER":
            if len(toks) > 1:
                st.impersonation.append(("USER", str(self._scalar(toks[1:2]))))
            else:
                st.impersonation.clear()
        elif head == "REVERT":
            if st.impersonation:
                st.impersonation.pop()
        elif head in ("EXEC", "EXECUTE"):
            self._exec(toks, out, wait)
        elif head == "KILL":
            spid = int(self._scalar(toks[1:]) or 0)
            if spid == st.spid:
                raise SqlError(6104, "Cannot use KILL to kill your own process.", 16)
            if not self.engine.kill(spid):
                raise SqlError(6106, f"Process ID {spid} is not an active process ID.", 16)
        elif head == "RETURN":  # the value is a procedure's return status
            raise ReturnFromProcedure(self._scalar(toks[1:]) if len(toks) > 1 else 0)
        elif head == "CREATE" and len(w) > 1 and w[1] == "DATABASE":
            self.engine.add_database(unquote(toks[2]))
        elif head == "WHILE":
            raise SqlError(102, near="WHILE")
        elif self._is_bare_call(toks):
            # A procedure called without EXEC (SQL Server allows it as a batch's first
            # statement).
            self._exec([Tok("word", "EXEC", toks[0].start, toks[0].start), *toks], out, wait)
        else:
            self._sql(toks, out, wait)

    def _is_bare_call(self, toks: list[Tok]) -> bool:
        if toks[0].kind not in ("word", "br", "dq"):
            return False
        name = unquote(toks[0])
        i = 1
        while i + 1 < len(toks) and toks[i].text == ".":
            name = unquote(toks[i + 1])
            i += 2
        short = name.lower()
        return short.startswith("sp_") or \
            (self.state.database.lower(), short) in _procs._procs(self.engine)

    def _execute_as(self, toks: list[Tok]) -> None:
        """EXECUTE AS LOGIN|USER = 'name' (any name is accepted: no principals here)."""
        w = [t.up for t in toks]
        if len(toks) < 5 or w[2] not in ("LOGIN", "USER") or toks[3].text != "=":
            raise SqlError(102, near=toks[2].text if len(toks) > 2 else "AS")
        self.state.impersonation.append((w[2], str(self._scalar(toks[4:5]))))

    def _login_name(self) -> str:
        for kind, name in reversed(self.state.impersonation):
            if kind == "LOGIN":
                return name
        return self.state.user

    def _user_name(self) -> str:
        if self.state.impersonation:
            return self.state.impersonation[-1][1]
        return "dbo"

    def _has_savepoint(self, name: str) -> bool:
        return self.locks.has_savepoint(name)

    def _set(self, toks: list[Tok], out: list[Out]) -> None:
        st = self.state
        w = [t.up for t in toks]
        if len(toks) >= 3 and toks[1].kind == "var":
            name = toks[1].text.lower()
            if name not in st.variables:
                raise SqlError(137, f'Must declare the scalar variable "{toks[1].text}".', 15)
            op = toks[2].text
            value = self._scalar(toks[3:])
            if op in ("+=", "-=", "*=", "/="):
                value = self._scalar(tokenize(f"{literal(st.variables[name])} {op[0]} "
                                              f"{literal(value)}"))
            st.variables[name] = value
            return
        if w[1:4] == ["TRANSACTION", "ISOLATION", "LEVEL"]:
            level = " ".join(w[4:])
            for num, lname in ISOLATION_NAMES.items():
                if lname == level:
                    st.isolation = num
                    return
            raise SqlError(102, near=level)
        if w[1] == "LOCK_TIMEOUT":
            st.lock_timeout = int(self._scalar(toks[2:]))
            self._apply_lock_timeout()
            return
        if w[1] == "TEXTSIZE":
            st.textsize = int(self._scalar(toks[2:]))
            return
        if w[1] == "CONTEXT_INFO":
            v = self._scalar(toks[2:])
            if isinstance(v, str):
                v = v.encode()
            st.context_info = None if v is None else bytes(v)[:128]
            return
        if w[1] == "LANGUAGE":
            st.language = unquote(toks[2])
            return
        if w[-1] in ("ON", "OFF") and len(w) >= 3:
            value = w[-1] == "ON"
            for opt in w[1:-1]:
                if opt != ",":
                    st.options[opt] = value
                    if opt == "ANSI_DEFAULTS":
                        for o in ("ANSI_NULLS", "ANSI_NULL_DFLT_ON", "ANSI_PADDING",
                                  "ANSI_WARNINGS", "QUOTED_IDENTIFIER", "CURSOR_CLOSE_ON_COMMIT",
                                  "IMPLICIT_TRANSACTIONS"):
                            st.options[o] = value
            return
        # other SET options (DATEFORMAT, DATEFIRST, DEADLOCK_PRIORITY, ROWCOUNT...) are kept
        st.options[w[1]] = True

    def _declare(self, toks: list[Tok]) -> None:
        # DECLARE @a INT = 1, @b NVARCHAR(10)
        i = 1
        n = len(toks)
        while i < n:
            if toks[i].kind != "var":
                raise SqlError(102, near=toks[i].text)
            name = toks[i].text.lower()
            j = i + 1
            depth = 0
            eq = None
            while j < n and not (depth == 0 and toks[j].text == ","):
                if toks[j].text == "(":
                    depth += 1
                elif toks[j].text == ")":
                    depth -= 1
                elif depth == 0 and toks[j].text == "=" and eq is None:
                    eq = j
                j += 1
            self.state.variables[name] = None if eq is None else self._scalar(toks[eq + 1 : j])
            i = j + 1

    def _args(self, toks: list[Tok]) -> list[Any]:
        """Comma-separated expressions (outside parentheses) evaluated to values."""
        return [self._scalar(p) for p in _types.split_top(toks) if p]

    def _raiserror(self, toks: list[Tok], out: list[Out]) -> None:
        inner = toks[1:]
        with_at = next((i for i, t in enumerate(inner) if t.up == "WITH"), len(inner))
        inner = inner[:with_at]
        if inner and inner[0].text == "(" and inner[-1].text == ")":
            inner = inner[1:-1]
        args = self._args(inner)
        if len(args) < 3:
            raise SqlError(102, near="RAISERROR")
        msg, severity, state = args[0], int(args[1]), int(args[2])
        number = 50000
        if isinstance(msg, int):
            number = msg
            text = error_text(msg)
        else:
            text = _printf(str(msg), args[3:])
        if severity <= 10:
            out.append(Info(number if number != 50000 else 0, text, severity, state))
            return
        err = SqlError(number, text, severity, state)
        self._on_error(err)
        out.append(err)

    def _throw(self, toks: list[Tok]) -> None:
        if len(toks) == 1:
            if self._catch is None:
                raise SqlError(10704, "To rethrow an error, a THROW statement must be used "
                               "inside a CATCH block.", 15)
            raise self._catch
        args = self._args(toks[1:])
        if len(args) != 3:
            raise SqlError(102, near="THROW")
        raise SqlError(int(args[0]), str(args[1]), 16, int(args[2]))

    def _waitfor(self, toks: list[Tok], wait: Waiter) -> None:
        if len(toks) < 3 or toks[1].up not in ("DELAY", "TIME"):
            raise SqlError(102, near="WAITFOR")
        value = str(self._scalar(toks[2:]))
        m = re.match(r"^(\d+):(\d+)(?::(\d+(?:\.\d*)?))?$", value.strip())
        if not m:
            raise SqlError(148, f"Incorrect time syntax in time string '{value}' used with "
                           "WAITFOR.", 15)
        secs = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3) or 0)
        if toks[1].up == "TIME":
            now = _dt.datetime.now()
            target = now.replace(hour=0, minute=0, second=0, microsecond=0) + _dt.timedelta(
                seconds=secs)
            secs = (target - now).total_seconds() % 86400
        wait(secs)

    def _use(self, name: str, out: list[Out]) -> None:
        real = self.engine.database_name(name)
        if real is None:
            raise SqlError(911, database=name)
        old = self.state.database
        if self._in_sqlite_tran:
            # a transaction stays on the database where it began
            pass
        self.state.database = real
        self.conn = self._connect(real)
        out.append(Env(P.ENV_DATABASE, real, old))
        out.append(Info(5701, f"Changed database context to '{real}'.", 0, 1))

    # ---------------------------------------------------------------- procedures

    def _exec(self, toks: list[Tok], out: list[Out], wait: Waiter) -> None:
        i = 1
        if i + 1 < len(toks) and toks[i].kind == "var" and toks[i + 1].text == "=":
            i += 2  # EXEC @rc = proc
        if i >= len(toks):
            raise SqlError(102, near="EXEC")
        if toks[i].text == "(":
            # EXEC ('sql')
            sql = str(self._scalar(toks[i:]))
            out.extend(self.run_nested(sql, wait))
            return
        name = "".join(unquote(t) if t.kind in ("br", "dq") else t.text for t in toks[i:i + 1])
        j = i + 1
        while j + 1 < len(toks) and toks[j].text == ".":
            name += "." + unquote(toks[j + 1])
            j += 2
        params: list[tuple[str | None, Any]] = []
        for p in _types.split_top(toks[j:]):
            if not p:
                continue
            if p[-1].up in ("OUTPUT", "OUT"):
                p = p[:-1]
            if len(p) >= 2 and p[0].kind == "var" and p[1].text == "=":
                params.append((p[0].text, self._scalar(p[2:])))
            else:
                params.append((None, self._scalar(p)))
        self.call(name, params, out, wait)

    def call(self, name: str, params: list[tuple[str | None, Any]], out: list[Out],
             wait: Waiter) -> None:
        short = name.split(".")[-1].lower()
        if short == "sp_reset_connection":
            self.reset()
            out.append(ReturnStatus(0))
        elif short == "sp_set_session_context":
            named = {(k or "").lower(): v for k, v in params}
            pos = [v for k, v in params if k is None]
            key = named.get("@key", pos[0] if pos else None)
            value = named.get("@value", pos[1] if len(pos) > 1 else None)
            read_only = named.get("@read_only", pos[2] if len(pos) > 2 else 0)
            if key is not None and str(key) in self.state.read_only_keys:
                raise SqlError(15664, f"Cannot set key '{key}' in the session context. The "
                               "key has been set as read_only for this session.", 16)
            if key is not None and read_only:
                self.state.read_only_keys.add(str(key))
            if key is None:
                raise SqlError(201, "Procedure or function 'sp_set_session_context' expects "
                               "parameter '@key', which was not supplied.", 16)
            if value is None:
                self.state.session_context.pop(str(key), None)
            else:
                self.state.session_context[str(key)] = value
            out.append(ReturnStatus(0))
        elif short == "sp_executesql":
            if not params:
                raise SqlError(201, "Procedure or function 'sp_executesql' expects parameter "
                               "'@statement', which was not supplied.", 16)
            sql = str(params[0][1])
            saved = self.state.variables
            local = dict(saved)
            for k, v in params[2:]:
                if k:
                    local[k.lower()] = v
            self.state.variables = local
            _types.declare_params(self, params[1][1] if len(params) > 1 else None)
            try:
                out.extend(self.run_nested(sql, wait))
            finally:
                self.state.variables = saved
            out.append(ReturnStatus(0))
        elif short == "sp_who" or short == "sp_who2":
            rows = [(s["spid"], s.get("status", "sleeping"), s["user"], s.get("host", ""),
                     s["database"]) for s in self.engine.sessions_provider()]
            out.append(Rows(infer_columns(["spid", "status", "loginame", "hostname", "dbname"],
                                          rows), rows))
            out.append(ReturnStatus(0))
        elif not _procs.call(self, name, params, out, wait):
            raise SqlError(2812, name=name)

    def run_nested(self, sql: str, wait: Waiter) -> list[Out]:
        out: list[Out] = []
        try:
            stmts = _plans.parse_cached(sql)
        except SqlSyntaxError as exc:
            raise SqlError(102, near=exc.near[:30]) from None
        self._run_list(stmts, out, wait)
        return out

    # ---------------------------------------------------------------- plain SQL

    def _sql(self, toks: list[Tok], out: list[Out], wait: Waiter | None = None) -> None:
        w0 = toks[0].up
        plan = _plans.plan(self, toks)  # translation cached by statement text
        sql, returning, kind = plan.sql, plan.returning, plan.kind
        writes = w0 not in ("SELECT", "WITH") or returning is not None or _selects_into(toks)
        names, rows, count = self.locks.run(lambda: self._execute(sql, writes), sql, writes,
                                            plan.nolock, wait)
        if kind == "ddl" or (writes and w0 == "SELECT"):
            self.locks.after_ddl(self.conn, plan.created, plan.temp)
        st = self.state
        if kind == "select" or returning:
            cols, rows = _types.describe(self, plan.shape, names, rows, infer_columns)
            out.append(Rows(cols, rows))
            st.rowcount = len(rows)
            out.append(Done(len(rows)))
        elif kind == "dml":
            st.rowcount = count
            out.append(Done(None if st.options.get("NOCOUNT") else count))
        else:
            st.rowcount = 0
            out.append(Done(None))
        if w0 == "INSERT":
            rid = self.conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            st.identity = rid
        st.error = 0

    def _execute(self, sql: str, writes: bool) -> tuple[list[str], list[tuple[Any, ...]], int]:
        self._refresh_catalog(sql)
        try:
            cur = self.conn.execute(sql)
            rows = cur.fetchall()
            names = [d[0] for d in cur.description] if cur.description else []
            count = cur.rowcount
        except sqlite3.OperationalError as exc:
            raise self._map_error(exc, sql) from None
        except sqlite3.IntegrityError as exc:
            raise self._map_error(exc, sql) from None
        except sqlite3.Error as exc:
            raise SqlError(50000, f"{exc}", 16) from None
        return names, rows, count

    def _query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        names, rows, _ = self._execute(sql, False)
        return names, rows

    def _run_raw(self, sql: str) -> None:
        try:
            self.conn.execute(sql)
        except sqlite3.OperationalError as exc:
            raise self._map_error(exc, sql) from None

    def _map_error(self, exc: sqlite3.Error, sql: str) -> SqlError:
        msg = str(exc)
        if self._divided_by_zero:
            self._divided_by_zero = False
            return SqlError(8134)
        m = re.search(r"no such table: (?:\w+\.)?(\S+)", msg)
        if m:
            name = m.group(1)
            if name.startswith(_TEMP_PREFIX):
                name = "#" + name[len(_TEMP_PREFIX):]
            return SqlError(208, name=name)
        m = re.search(r"no such column: (\S+)", msg)
        if m:
            return SqlError(207, name=m.group(1).split(".")[-1])
        m = re.search(r"no such function: (\S+)", msg)
        if m:
            text = f"'{m.group(1)}' is not a recognized built-in function name."
            if not translation_available():
                text += f" ({NO_TRANSLATION}.)"
            return SqlError(195, text, 15)
        if "database is locked" in msg or "database table is locked" in msg:
            return SqlError(1222)
        m = re.search(r"table (\S+) already exists", msg)
        if m:
            return SqlError(2714, name=m.group(1).strip('"'))
        m = re.search(r"UNIQUE constraint failed: (\w+)\.(\w+)", msg)
        if m:
            table, col = m.group(1), m.group(2)
            if _pk_column(self.conn, table, col):
                return SqlError(2627, name=f"PK__{table}", table=f"dbo.{table}", value="(?)")
            return SqlError(2601, name=f"UQ__{table}__{col}", table=f"dbo.{table}", value="(?)")
        m = re.search(r"NOT NULL constraint failed: (\w+)\.(\w+)", msg)
        if m:
            return SqlError(515, name=m.group(2), table=f"{self.state.database}.dbo.{m.group(1)}")
        if "FOREIGN KEY constraint failed" in msg:
            return SqlError(547, name="FK", database=self.state.database, table="?")
        m = re.search(r'near "([^"]*)": syntax error', msg)
        if m:
            err = SqlError(102, near=m.group(1))
            if not translation_available():
                err = SqlError(102, f"{err.text} ({NO_TRANSLATION}.)", err.severity)
            return err
        if "incomplete input" in msg:      # the statement ends too early: "SELECT 1 +"
            return SqlError(102, near=sql.split()[-1][:30] if sql.split() else "")
        log.debug("sqlite error %s for %r", msg, sql)
        return SqlError(50000, f"The TDS test server could not run this statement: {msg}", 16)

    # ---------------------------------------------------------------- translation

    def _translate_expr(self, toks: list[Tok]) -> str:
        text = self._rewrite(toks)
        sql = to_sqlite("SELECT " + text)
        return sql[7:] if sql is not None else text

    def _translate(self, toks: list[Tok]) -> tuple[str, str | None, str]:
        """(sqlite sql, RETURNING clause or None, kind: select/dml/ddl)."""
        w0 = toks[0].up
        kind = "select" if w0 in ("SELECT", "WITH") else "dml"
        if w0 in ("CREATE", "DROP", "ALTER", "TRUNCATE"):
            kind = "ddl" if w0 != "TRUNCATE" else "dml"
        if _selects_into(toks):
            kind = "dml"
        returning = None
        if w0 in ("INSERT", "UPDATE", "DELETE", "MERGE"):
            toks, returning = _extract_output(toks)
        if w0 == "CREATE" and len(toks) > 2 and toks[1].up == "TABLE":
            return self._create_table(toks), None, "ddl"
        if w0 == "CREATE" and any(t.up == "INDEX" for t in toks[1:4]):
            return self._rewrite(_strip_words(toks, {"CLUSTERED", "NONCLUSTERED"})), None, "ddl"
        if w0 == "TRUNCATE":
            return "DELETE FROM " + self._rewrite(toks[2:]), None, "dml"
        if w0 == "DROP" and len(toks) > 2 and toks[1].up == "TABLE":
            return self._drop_table(toks), None, "ddl"
        text = self._rewrite(_values_alias(toks))
        sql = to_sqlite(text) or text
        if kind == "dml" and w0 == "SELECT" and _selects_into(toks):
            target = next((toks[i + 1] for i, t in enumerate(toks[:-1]) if t.up == "INTO"), None)
            if target is not None and target.kind == "temp":
                sql = re.sub(r"^CREATE TABLE", "CREATE TEMP TABLE", sql)
        if returning:
            sql += " RETURNING " + returning
        return sql, returning, kind

    def _drop_table(self, toks: list[Tok]) -> str:
        w = [t.up for t in toks]
        if_exists = w[2:4] == ["IF", "EXISTS"]
        names = toks[4:] if if_exists else toks[2:]
        parts: list[list[Tok]] = [[]]
        for t in names:
            if t.text == ",":
                parts.append([])
            else:
                parts[-1].append(t)
        stmts = []
        for p in parts:
            name = self._rewrite(p).strip()
            stmts.append(f"DROP TABLE {'IF EXISTS ' if if_exists else ''}{name}")
        if len(stmts) > 1:
            for s in stmts[:-1]:
                self._run_raw(s)
        if not if_exists:
            for p in parts:
                name = self._rewrite(p).strip()
                probe = self.conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE lower(name)=lower(?) UNION ALL "
                    "SELECT 1 FROM sqlite_temp_master WHERE lower(name)=lower(?)",
                    (name.strip('"'), name.strip('"')),
                ).fetchone()
                if probe is None:
                    orig = unquote(p[-1]) if p else name
                    raise SqlError(3701, name=orig)
        return stmts[-1]

    def _create_table(self, toks: list[Tok]) -> str:
        temp = toks[2].kind == "temp"
        out: list[Tok] = []
        i = 0
        n = len(toks)
        depth = 0
        while i < n:
            t = toks[i]
            u = t.up
            if t.text == "(":
                depth += 1
            elif t.text == ")":
                depth -= 1
            if u == "IDENTITY":
                # the column type becomes INTEGER so that SQLite makes it the rowid
                k = len(out) - 1
                while k >= 0 and out[k].kind == "word" and out[k].up in ("NOT", "NULL"):
                    k -= 1
                # walk back over "(p, s)" of the type
                if k >= 0 and out[k].text == ")":
                    while k >= 0 and out[k].text != "(":
                        k -= 1
                    k -= 1
                if k >= 0 and out[k].kind == "word":
                    out[k] = Tok("word", "INTEGER", out[k].start, out[k].end)
                    # remove (p, s) after the type name
                    if k + 1 < len(out) and out[k + 1].text == "(":
                        e = k + 1
                        while e < len(out) and out[e].text != ")":
                            e += 1
                        del out[k + 1 : e + 1]
                if i + 1 < n and toks[i + 1].text == "(":
                    while i < n and toks[i].text != ")":
                        i += 1
                i += 1
                continue
            if u in ("CLUSTERED", "NONCLUSTERED"):
                i += 1
                continue
            if u == "MAX" and out and out[-1].text == "(":
                out.pop()
                i += 2
                depth -= 1
                continue
            if u == "WITH" and depth == 0:
                break
            if u == "ON" and depth == 0:
                break  # ON [PRIMARY]
            out.append(t)
            i += 1
        sql = self._rewrite(out, keep_types=True)
        if temp:
            sql = re.sub(r"^\s*CREATE\s+TABLE", "CREATE TEMP TABLE", sql, flags=re.IGNORECASE)
        sql = re.sub(r"\bgetdate\s*\(\s*\)|\bsysdatetime\s*\(\s*\)|\bgetutcdate\s*\(\s*\)",
                     "CURRENT_TIMESTAMP", sql, flags=re.IGNORECASE)
        sql = re.sub(r"\bnewid\s*\(\s*\)", "(lower(hex(randomblob(16))))", sql,
                     flags=re.IGNORECASE)
        return sql

    def _rewrite(self, toks: list[Tok], keep_types: bool = False) -> str:
        """Token rewrites that make T-SQL text palatable to sqlglot and SQLite."""
        st = self.state
        parts: list[str] = []
        i = 0
        n = len(toks)
        dbs = {d.lower() for d in self.engine.databases()}
        while i < n:
            t = toks[i]
            u = t.up
            nxt = toks[i + 1] if i + 1 < n else None
            # qualifiers: [db].[dbo].x, db..x, dbo.x
            if t.kind in ("word", "br") and nxt is not None and nxt.text == ".":
                name = unquote(t).lower()
                after = toks[i + 2] if i + 2 < n else None
                if name == "dbo" and after is not None and after.text != "*":
                    i += 2
                    continue
                if name in dbs and after is not None and (
                    after.text == "." or unquote(after).lower() == "dbo"
                ):
                    i += 2
                    continue
            if t.kind == "str":
                parts.append(t.text[1:] if t.text[0] in "Nn" else t.text)
            elif t.kind == "sysvar":
                parts.append(literal(self._sysvar(u.upper())))
            elif t.kind == "var":
                key = t.text.lower()
                if key not in st.variables:
                    raise SqlError(137, f'Must declare the scalar variable "{t.text}".', 15)
                parts.append(literal(st.variables[key]))
            elif t.kind == "temp":
                parts.append(_temp_name(t.text))
            elif (
                t.kind == "word" and nxt is not None and nxt.text == "("
                and i + 2 < n and toks[i + 2].text == ")" and u in self._niladic
            ):
                parts.append(literal(self._niladic[u](self)))
                i += 3
                continue
            elif t.kind == "word" and u in ("CURRENT_USER", "SYSTEM_USER", "SESSION_USER") and (
                nxt is None or nxt.text != "("
            ):
                parts.append(literal("dbo" if u != "SYSTEM_USER" else st.user))
            elif u == "MAX" and parts and parts[-1] == "(" and nxt is not None and nxt.text == ")":
                parts.pop()
                i += 2
                continue
            elif t.kind == "hex" and keep_types:
                parts.append("X'" + t.text[2:] + "'")
            else:
                parts.append(t.text)
            i += 1
        return " ".join(parts)

    _niladic: dict[str, Callable[[Executor], Any]] = {
        "SCHEMA_NAME": lambda e: "dbo",
        "DB_NAME": lambda e: e.state.database,
        "SUSER_SNAME": lambda e: e._login_name(),
        "SUSER_NAME": lambda e: e._login_name(),
        "ORIGINAL_LOGIN": lambda e: e.state.user,
        "USER_NAME": lambda e: e._user_name(),
        "HOST_NAME": lambda e: e.state.hostname,
        "APP_NAME": lambda e: e.state.appname,
        "CONTEXT_INFO": lambda e: e.state.context_info,
        "SCOPE_IDENTITY": lambda e: e.state.identity,
        "IDENT_CURRENT": lambda e: e.state.identity,
        "XACT_STATE": lambda e: 1 if e.state.trancount else 0,
        "ERROR_NUMBER": lambda e: e._catch.number if e._catch else None,
        "ERROR_MESSAGE": lambda e: e._catch.text if e._catch else None,
        "ERROR_SEVERITY": lambda e: e._catch.severity if e._catch else None,
        "ERROR_STATE": lambda e: e._catch.state if e._catch else None,
        "ERROR_LINE": lambda e: 1 if e._catch else None,
        "ERROR_PROCEDURE": lambda e: None,
        "GETDATE": lambda e: _dt.datetime.now().replace(microsecond=0),
        "SYSDATETIME": lambda e: _dt.datetime.now(),
        "GETUTCDATE": lambda e: _dt.datetime.utcnow(),
        "SYSUTCDATETIME": lambda e: _dt.datetime.utcnow(),
    }

    def _sysvar(self, name: str) -> Any:
        st = self.state
        opts = 0
        for opt, bit in _OPTION_BITS.items():
            if st.options.get(opt):
                opts |= bit
        return {
            "@@SPID": st.spid,
            "@@VERSION": VERSION_STRING,
            "@@TRANCOUNT": st.trancount,
            "@@ROWCOUNT": st.rowcount,
            "@@ERROR": st.error,
            "@@IDENTITY": st.identity,
            "@@OPTIONS": opts,
            "@@SERVERNAME": self.engine.server_name,
            "@@SERVICENAME": "MSSQLSERVER",
            "@@LANGUAGE": st.language,
            "@@LANGID": 0,
            "@@LOCK_TIMEOUT": st.lock_timeout,
            "@@TEXTSIZE": st.textsize,
            "@@MAX_PRECISION": 38,
            "@@DATEFIRST": 7,
            "@@MICROSOFTVERSION": (VERSION[0] << 24) | VERSION[2],
            "@@NESTLEVEL": 0,
            "@@PROCID": 0,
            "@@DBTS": b"\x00" * 8,
            "@@CONNECTIONS": 0,
            "@@MAX_CONNECTIONS": 32767,
            "@@FETCH_STATUS": -1,
        }.get(name)

    # ---------------------------------------------------------------- catalog views

    def _refresh_catalog(self, sql: str) -> None:
        low = sql.lower()
        if "sys." not in low and "information_schema." not in low:
            return
        con = self.conn
        for view in set(re.findall(r"\b(sys|information_schema)\.\"?(\w+)", low)):
            builder = CATALOG.get(view)
            if builder is None:
                continue
            columns, rows = builder(self)
            qname = f'{view[0]}."{view[1]}"'
            con.execute(f"DROP TABLE IF EXISTS {qname}")
            con.execute(f"CREATE TABLE {qname} ({', '.join(columns)})")
            if rows:
                marks = ",".join("?" * len(columns))
                con.executemany(f"INSERT INTO {qname} VALUES ({marks})", rows)

    def _tables(self) -> list[tuple[int, str, str, bool]]:
        """(object_id, name, sql, temp) for each table."""
        out: list[tuple[int, str, str, bool]] = []
        for rowid, name, sql in self.conn.execute(
            "SELECT rowid, name, sql FROM main.sqlite_master WHERE type='table' AND name NOT "
            "LIKE 'sqlite_%'"
        ):
            out.append((int(rowid) + 1000, name, sql or "", False))
        return out


_TEMP_PREFIX = "tmp__"


NO_TRANSLATION = (
    "T-SQL translation is off: sqlglot is not installed (pip install 'mssql_pool[testing]'); "
    "statements run on SQLite as written, so TOP, ISNULL, GETDATE and the like fail"
)
"""The WARNING a server logs when it is created without sqlglot (and the hint in errors)."""


def translation_available() -> bool:
    """True when sqlglot can be imported: T-SQL is then translated to SQLite's dialect.

    Without it the server still runs (logins, faults, the pool's own statements, plain SQL
    that SQLite understands); statements that need translation fail with an error whose
    text says why.
    """
    try:
        import sqlglot  # noqa: F401
    except ImportError:
        return False
    return True


# Statements that open a transaction in implicit transaction mode when none is open
# (SET IMPLICIT_TRANSACTIONS): SELECT only when it reads a table, ALTER only ALTER TABLE.
_IMPLICIT_HEADS = frozenset({
    "CREATE", "DELETE", "DENY", "DROP", "FETCH", "GRANT", "INSERT", "MERGE", "OPEN", "REVOKE",
    "TRUNCATE", "UPDATE",
})


def _reads_table(toks: list[Tok]) -> bool:
    """A FROM (or SELECT ... INTO) anywhere in the statement: it touches a table.

    ``SELECT 1``, ``SELECT @@TRANCOUNT`` and ``SELECT GETDATE()`` do not. Neither do an IF
    condition or a DECLARE's initial value that read a table (Babelfish, seen).
    """
    return any(t.kind == "word" and t.up in ("FROM", "INTO") for t in toks)


def opens_implicit(toks: list[Tok]) -> bool:
    """Whether this statement opens a transaction under SET IMPLICIT_TRANSACTIONS ON."""
    head = toks[0].up if toks else ""
    if head in _IMPLICIT_HEADS:
        # CREATE DATABASE cannot run inside a transaction at all
        return not (head == "CREATE" and len(toks) > 1 and toks[1].up == "DATABASE")
    if head == "ALTER":
        return len(toks) > 1 and toks[1].up == "TABLE"
    if head == "BEGIN":
        return len(toks) > 1 and toks[1].up in ("TRAN", "TRANSACTION", "DISTRIBUTED")
    if head in ("SELECT", "WITH"):
        return _reads_table(toks) or (head == "WITH" and any(
            t.kind == "word" and t.up in ("INSERT", "UPDATE", "DELETE", "MERGE") for t in toks))
    return False


def _number(value: Any) -> int | float | None:
    """A SQLite value as a number for tsql_div (text and blobs as SQLite would read them)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    try:
        text = value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
        return int(text) if text.strip().lstrip("+-").isdigit() else float(text)
    except (ValueError, UnicodeDecodeError):
        return None


@functools.lru_cache(maxsize=4096)
def to_sqlite(text: str) -> str | None:
    """sqlglot's T-SQL -> SQLite translation of rewritten text (cached); None if it fails.

    Every ``/`` becomes ``tsql_div(a, b)`` (installed per connection): SQLite's division by
    zero gives NULL where SQL Server raises 8134."""
    try:
        import sqlglot
    except ImportError:
        return None     # the server said so at start (NO_TRANSLATION); run the text as is
    try:
        from sqlglot import exp

        out: list[str] = []
        for tree in sqlglot.parse(text, read="tsql"):
            if tree is None:
                out.append("")
                continue
            for node in reversed(list(tree.find_all(exp.Div))):   # innermost first
                node.replace(exp.Anonymous(this="tsql_div",
                                           expressions=[node.left, node.right]))
            out.append(tree.sql(dialect="sqlite"))
        return ";".join(out)
    except Exception as exc:  # noqa: BLE001 - sqlglot raises many types; run the text as is
        log.debug("sqlglot could not translate %r: %s", text, exc)
        return None


def _temp_name(text: str) -> str:
    return _TEMP_PREFIX + text.lstrip("#")


def _values_alias(toks: list[Tok]) -> list[Tok]:
    """``(VALUES ...) AS a(c1, c2)`` -> ``(SELECT column1 AS c1, ... FROM (VALUES ...)) AS a``."""
    out = list(toks)
    i = 0
    while i < len(out):
        if out[i].text == "(" and i + 1 < len(out) and out[i + 1].up == "VALUES":
            depth = 0
            j = i
            while j < len(out):
                if out[j].text == "(":
                    depth += 1
                elif out[j].text == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            # j: closing paren of (VALUES ...)
            k = j + 1
            if k < len(out) and out[k].up == "AS":
                k += 1
            if k + 1 < len(out) and out[k + 1].text == "(":
                e = k + 2
                cols: list[str] = []
                while e < len(out) and out[e].text != ")":
                    if out[e].text != ",":
                        cols.append(out[e].text)
                    e += 1
                sel = ", ".join(f"column{n + 1} AS {c}" for n, c in enumerate(cols))
                mk = [Tok("word", x, 0, 0) for x in ("(", "SELECT", sel, "FROM")]
                new = mk + out[i : j + 1] + [Tok("op", ")", 0, 0), Tok("word", "AS", 0, 0),
                                              out[k]]
                out[i : e + 1] = new
                i += len(new)
                continue
        i += 1
    return out


def _selects_into(toks: list[Tok]) -> bool:
    return toks[0].up == "SELECT" and any(t.up == "INTO" for t in toks)


def _strip_words(toks: list[Tok], drop: set[str]) -> list[Tok]:
    return [t for t in toks if t.up not in drop]


def _pk_column(con: sqlite3.Connection, table: str, col: str) -> bool:
    try:
        for row in con.execute(f'PRAGMA table_info("{table}")'):
            if row[1] == col:
                return bool(row[5])
    except sqlite3.Error:
        pass
    return False


def _extract_output(toks: list[Tok]) -> tuple[list[Tok], str | None]:
    """Remove a T-SQL OUTPUT clause; return its column list for a RETURNING clause."""
    depth = 0
    start = None
    for i, t in enumerate(toks):
        if t.text == "(":
            depth += 1
        elif t.text == ")":
            depth -= 1
        elif depth == 0 and t.up == "OUTPUT":
            start = i
            break
    if start is None:
        return toks, None
    end = start + 1
    depth = 0
    stop = {"VALUES", "SELECT", "DEFAULT", "FROM", "WHERE", "INTO", "EXEC", "EXECUTE"}
    while end < len(toks):
        t = toks[end]
        if t.text == "(":
            depth += 1
        elif t.text == ")":
            depth -= 1
        elif depth == 0 and t.up in stop:
            break
        end += 1
    clause = toks[start + 1 : end]
    cols: list[str] = []
    i = 0
    while i < len(clause):
        t = clause[i]
        if t.up in ("INSERTED", "DELETED") and i + 1 < len(clause) and clause[i + 1].text == ".":
            i += 2
            continue
        cols.append(t.text)
        i += 1
    return toks[:start] + toks[end:], " ".join(cols)


def _printf(fmt: str, args: list[Any]) -> str:
    it = iter(args)

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        try:
            return str(next(it))
        except StopIteration:
            return "(null)"

    return re.sub(r"%%|%[-+ #0]*\d*(?:\.\d+)?(?:I64)?[dsiuxXo]", sub, fmt)


def monotonic() -> float:
    return time.monotonic()
