"""SQL Server semantics over SQLite: one executor per session, one SQLite file per database.

T-SQL arrives as text; the statements SQLite cannot run (SET, DECLARE, IF, WAITFOR, PRINT,
RAISERROR, THROW, USE, EXEC, transactions) are handled here, the rest is rewritten at the token
level (variables, ``@@`` values, ``#temp`` names, ``dbo.`` qualifiers, ``N''``, ``(max)``,
``OUTPUT inserted.x``) and translated with sqlglot.
"""

from __future__ import annotations

import datetime as _dt
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

from . import _locks, _plans, _procs, _sqlite_exec, _statements, _types
from . import _protocol as P
from ._columns import register_converters
from ._options import (
    LOGIN_OPTIONS,
    STATEMENT_ERRORS,
    VERSION,
)
from ._results import (
    Env,
    Info,
    Out,
    ReturnFromProcedure,
    SqlError,
    Waiter,
)
from ._translate import (
    NO_TRANSLATION,
    opens_implicit,
    temp_name,
    translation_available,
)
from ._tsql import Block, IfStmt, Simple, SqlSyntaxError, Tok, TryCatch, unquote

log = logging.getLogger("mssql_pool.testing.engine")


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
                "lower(name) = lower(?)", (temp_name(base),),
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
        st = self.state
        if st.trancount == 0 and st.options.get("IMPLICIT_TRANSACTIONS") and opens_implicit(toks):
            self.begin(out)  # the unseen BEGIN TRAN of implicit transaction mode
        if (self._transaction_statement(toks, w, out)
                or self._session_statement(toks, w, out)
                or self._flow_statement(toks, w, out, wait)):
            return
        if self._is_bare_call(toks):
            # A procedure called without EXEC (SQL Server allows it as a batch's first
            # statement).
            self._exec([Tok("word", "EXEC", toks[0].start, toks[0].start), *toks], out, wait)
        else:
            self._sql(toks, out, wait)

    def _transaction_statement(self, toks: list[Tok], w: list[str], out: list[Out]) -> bool:
        """BEGIN TRAN, COMMIT, ROLLBACK [name], SAVE TRAN; False for anything else."""
        head = w[0]
        if head == "BEGIN" and len(w) > 1 and w[1] in ("TRAN", "TRANSACTION", "DISTRIBUTED"):
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
            if self.state.trancount <= 0:
                raise SqlError(628, "Cannot issue SAVE TRANSACTION when there is no active "
                               "transaction.", 16)
            self.locks.savepoint(unquote(toks[-1]))
        else:
            return False
        return True

    def _session_statement(self, toks: list[Tok], w: list[str], out: list[Out]) -> bool:
        """SET, DECLARE, USE, EXECUTE AS, SETUSER, REVERT, KILL, CREATE DATABASE."""
        head = w[0]
        st = self.state
        if head == "SET":
            self._set(toks, out)
        elif head == "DECLARE":
            self._declare(toks)
            _types.declare(self, toks)
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
        elif head == "KILL":
            spid = int(self._scalar(toks[1:]) or 0)
            if spid == st.spid:
                raise SqlError(6104, "Cannot use KILL to kill your own process.", 16)
            if not self.engine.kill(spid):
                raise SqlError(6106, f"Process ID {spid} is not an active process ID.", 16)
        elif head == "CREATE" and len(w) > 1 and w[1] == "DATABASE":
            self.engine.add_database(unquote(toks[2]))
        else:
            return False
        return True

    def _flow_statement(self, toks: list[Tok], w: list[str], out: list[Out],
                        wait: Waiter) -> bool:
        """PRINT, RAISERROR, THROW, WAITFOR, EXEC, RETURN (and WHILE, refused)."""
        head = w[0]
        if head == "PRINT":
            out.append(Info(0, str(self._scalar(toks[1:])), 0))
        elif head == "RAISERROR":
            self._raiserror(toks, out)
        elif head == "THROW":
            self._throw(toks)
        elif head == "WAITFOR":
            self._waitfor(toks, wait)
        elif head in ("EXEC", "EXECUTE"):
            self._exec(toks, out, wait)
        elif head == "RETURN":  # the value is a procedure's return status
            raise ReturnFromProcedure(self._scalar(toks[1:]) if len(toks) > 1 else 0)
        elif head == "WHILE":
            raise SqlError(102, near="WHILE")
        else:
            return False
        return True

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
        return _statements.execute_as(self, toks)

    def _login_name(self) -> str:
        return _statements.login_name(self)

    def _user_name(self) -> str:
        return _statements.user_name(self)

    def _has_savepoint(self, name: str) -> bool:
        return self.locks.has_savepoint(name)

    def _set(self, toks: list[Tok], out: list[Out]) -> None:
        return _statements.set_statement(self, toks, out)

    def _declare(self, toks: list[Tok]) -> None:
        # DECLARE @a INT = 1, @b NVARCHAR(10)
        return _statements.declare(self, toks)

    def _args(self, toks: list[Tok]) -> list[Any]:
        return _statements.args(self, toks)

    def _raiserror(self, toks: list[Tok], out: list[Out]) -> None:
        return _statements.raiserror(self, toks, out)

    def _throw(self, toks: list[Tok]) -> None:
        return _statements.throw(self, toks)

    def _waitfor(self, toks: list[Tok], wait: Waiter) -> None:
        return _statements.waitfor(self, toks, wait)

    def _use(self, name: str, out: list[Out]) -> None:
        return _statements.use(self, name, out)

    # ---------------------------------------------------------------- procedures

    def _exec(self, toks: list[Tok], out: list[Out], wait: Waiter) -> None:
        return _statements.exec_statement(self, toks, out, wait)

    def call(self, name: str, params: list[tuple[str | None, Any]], out: list[Out],
             wait: Waiter) -> None:
        return _statements.call(self, name, params, out, wait)

    def run_nested(self, sql: str, wait: Waiter) -> list[Out]:
        return _statements.run_nested(self, sql, wait)

    # ---------------------------------------------------------------- plain SQL

    def _sql(self, toks: list[Tok], out: list[Out], wait: Waiter | None = None) -> None:
        return _sqlite_exec.sql(self, toks, out, wait)

    def _execute(self, sql: str, writes: bool) -> tuple[list[str], list[tuple[Any, ...]], int]:
        return _sqlite_exec.execute(self, sql, writes)

    def _query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        return _sqlite_exec.query(self, sql)

    def _run_raw(self, sql: str) -> None:
        return _sqlite_exec.run_raw(self, sql)

    def _map_error(self, exc: sqlite3.Error, sql: str) -> SqlError:
        return _sqlite_exec.map_error(self, exc, sql)

    # ---------------------------------------------------------------- translation

    def _translate_expr(self, toks: list[Tok]) -> str:
        return _sqlite_exec.translate_expr(self, toks)

    def _translate(self, toks: list[Tok]) -> tuple[str, str | None, str]:
        return _sqlite_exec.translate(self, toks)

    def _drop_table(self, toks: list[Tok]) -> str:
        return _sqlite_exec.drop_table(self, toks)

    def _create_table(self, toks: list[Tok]) -> str:
        return _sqlite_exec.create_table(self, toks)

    def _rewrite(self, toks: list[Tok], keep_types: bool = False) -> str:
        return _sqlite_exec.rewrite(self, toks, keep_types)

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
        return _statements.sysvar(self, name)

    # ---------------------------------------------------------------- catalog views

    def _refresh_catalog(self, sql: str) -> None:
        return _sqlite_exec.refresh_catalog(self, sql)

    def _tables(self) -> list[tuple[int, str, str, bool]]:
        return _sqlite_exec.tables(self)


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


def monotonic() -> float:
    return time.monotonic()
