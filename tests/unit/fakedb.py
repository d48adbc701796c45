"""A fake DB-API driver you can break on cue (shared by the unit tests and the benchmark).

Usage::

    db = FakeDB()                          # one fake "server" and its driver
    pool = ConnectionPool(connect=db.connect, ...)
    db.fail_next("execute", 1)             # the next execute raises a disconnect error
    db.fail_next("connect", 2, error=db.login_failed())
    db.shutdown()                          # server down: open connections dead, connects refused
    db.restart()                           # server up again (old connections stay dead)
    db.kill(conn_or_raw)                   # one connection dies (next use raises)
    db.latency = 200e-6                    # every round trip sleeps this long (GIL released)
    db.round_trips, db.connects, db.statements   # what happened, for assertions

Errors look exactly like pymssql's (``args == (number, bytes_text)`` for statement errors,
``args == ((number, bytes_text),)`` for connect errors), so
:func:`mssql_pool.classify.is_disconnect` sees 20047/20009 as disconnects.

Connections keep a tiny session model so tests can prove a reset happened:
``raw.session`` (a dict: SET options, ``#temp`` tables as ``temp:<name>``, ``USE`` as
``database``), ``raw.in_transaction`` (set by execute, cleared by commit/rollback), and
the ``raw.reset_session()`` hook the pool calls for a full reset on non-pymssql drivers.
With ``FakeDB(pymssql_like=True)`` connections also expose pymssql's
``_conn.init_procedure(name).execute()`` / ``_conn.execute_non_query(sql)`` and
``autocommit_state`` / ``autocommit(status)``, so the pymssql reset path runs.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["FakeDB", "FakeClock", "pool_factory", "FakeConnection", "FakeCursor", "Error",
           "OperationalError", "InterfaceError", "ProgrammingError", "disconnect_error",
           "refused_error", "syntax_error", "eof_error", "not_connected_error",
           "query_timeout_error", "wait_for"]


class Error(Exception):
    """DB-API base error of the fake driver."""


class OperationalError(Error):
    pass


class ProgrammingError(Error):
    pass


class InterfaceError(Error):
    pass


def disconnect_error() -> OperationalError:
    """What pymssql raises on first use of a connection whose socket died (20047)."""
    return OperationalError(
        20047, b"DB-Lib error message 20047, severity 9:\nDBPROCESS is dead or not enabled\n")


def eof_error() -> OperationalError:
    """The server closed the socket mid reply (20017): the statement may have run."""
    return OperationalError(
        20017, b"DB-Lib error message 20017, severity 9:\nUnexpected EOF from the server\n")


def not_connected_error() -> InterfaceError:
    """pymssql's error for any call after a fatal one (raised before any I/O)."""
    return InterfaceError("Not connected to any MS SQL server")


def query_timeout_error() -> OperationalError:
    """A query timeout as pymssql reports it: FreeTDS sends no cancel, it closes the socket,
    and the error is 20047 with 20003 in its text; the connection is dead."""
    return OperationalError(
        20047, b"DB-Lib error message 20047, severity 9:\nDBPROCESS is dead or not enabled\n"
               b"DB-Lib error message 20003, severity 6:\nAdaptive Server connection timed "
               b"out\n")


def refused_error() -> OperationalError:
    """What pymssql's connect() raises when nothing listens (20009)."""
    return OperationalError((20009, b"DB-Lib error message 20009, severity 9:\nUnable to "
                                    b"connect: Adaptive Server is unavailable or does not exist\n"))


def syntax_error() -> ProgrammingError:
    return ProgrammingError(102, b"Incorrect syntax near 'x'.")


_SET = re.compile(r"^\s*SET\s+(\w+)\s*(.*?)\s*;?\s*$", re.I)
_TEMP = re.compile(r"CREATE\s+TABLE\s+(#\w+)", re.I)
_USE = re.compile(r"^\s*USE\s+\[?(\w+)\]?", re.I)
_SELECT_TEMP = re.compile(r"FROM\s+(#\w+)", re.I)


class FakeDB:
    """A fake server plus its driver module. See the module docstring."""

    Error = Error
    OperationalError = OperationalError
    ProgrammingError = ProgrammingError
    InterfaceError = InterfaceError

    def __init__(self, *, latency: float = 0.0, pymssql_like: bool = False,
                 sleep: Callable[[float], object] = time.sleep, record: bool = True) -> None:
        self.latency = latency
        self.pymssql_like = pymssql_like
        self.sleep = sleep
        self.record = record          # keep ``statements`` (turn off for benchmarks)
        self.up = True
        self.round_trips = 0
        self.connects = 0
        self.closes = 0
        self.statements: list[tuple[int, str]] = []
        self.rows: dict[str, list[tuple[Any, ...]]] = {}
        self.connections: list[FakeConnection] = []
        self._ids = itertools.count(1)
        self._failures: dict[str, list[BaseException]] = {}
        self._lock = threading.Lock()

    # ---- switches
    def fail_next(self, op: str = "execute", count: int = 1,
                  error: BaseException | None = None) -> None:
        """Make the next ``count`` calls of ``op`` raise ``error``.

        ``op`` is one of ``connect``, ``execute``, ``commit``, ``rollback``, ``reset``
        (the reset hook / sp_reset_connection), ``close``. The default error is a
        disconnect for statements (and the connection is then dead, as with pymssql) and
        "connection refused" for ``connect``.
        """
        if error is None:
            error = refused_error() if op == "connect" else disconnect_error()
        with self._lock:
            self._failures.setdefault(op, []).extend([error] * count)

    def _take_failure(self, op: str) -> BaseException | None:
        if not self._failures:
            return None
        with self._lock:
            queue = self._failures.get(op)
            if queue:
                return queue.pop(0)
        return None

    def shutdown(self) -> None:
        """The server goes away: every open connection is dead, new connects are refused."""
        self.up = False
        for conn in list(self.connections):
            conn.alive = False

    def restart(self) -> None:
        """The server is back (connections from before stay dead, like a real restart)."""
        self.up = True

    def kill(self, conn: Any) -> None:
        """Kill one connection (a proxy or a raw fake connection)."""
        raw = getattr(conn, "raw", conn)
        raw.alive = False

    # ---- the driver entry point
    def connect(self, **kwargs: Any) -> FakeConnection:
        """The driver's ``connect()``; pass ``db.connect`` as the pool's ``connect=``."""
        self.round_trips += 1
        failure = self._take_failure("connect")
        if failure is not None:
            raise failure
        if not self.up:
            raise refused_error()
        if self.latency:
            self.sleep(self.latency)
        conn = FakeConnection(self, next(self._ids), kwargs)
        self.connects += 1
        self.connections.append(conn)
        return conn

    def open_connections(self) -> list[FakeConnection]:
        return [c for c in self.connections if not c.closed]


class FakeConnection:
    """A fake DB-API connection."""

    def __init__(self, db: FakeDB, ident: int, kwargs: dict[str, Any]) -> None:
        self.db = db
        self.id = ident
        self.kwargs = kwargs
        self.alive = True
        self.closed = False
        self.round_trips = 0
        self.in_transaction = False
        self.session: dict[str, Any] = {}
        self.resets = 0
        self.rollbacks = 0
        self.commits = 0
        self._autocommit = bool(kwargs.get("autocommit", False))
        if db.pymssql_like:
            self._conn = _FakeInner(self)

    # ---- internals
    def _round_trip(self, op: str, sql: str | None = None) -> None:
        db = self.db
        db.round_trips += 1
        self.round_trips += 1
        if self.closed:
            raise InterfaceError("Connection is closed")
        failure = db._take_failure(op)
        if failure is not None:
            if _is_dead(failure):
                self.alive = False
            raise failure
        if not self.alive:
            raise disconnect_error()
        if db.latency:
            db.sleep(db.latency)
        if sql is not None and db.record:
            db.statements.append((self.id, sql))

    def _apply(self, sql: str) -> None:
        m = _SET.match(sql)
        if m:
            self.session[m.group(1).upper()] = m.group(2)
        m = _TEMP.search(sql)
        if m:
            self.session["temp:" + m.group(1).lower()] = True
        m = _USE.match(sql)
        if m:
            self.session["database"] = m.group(1)

    # ---- DB-API
    def cursor(self, *args: Any, **kwargs: Any) -> FakeCursor:
        if self.closed:
            raise InterfaceError("Connection is closed")
        return FakeCursor(self)

    def commit(self) -> None:
        self._round_trip("commit")
        self.in_transaction = False
        self.commits += 1

    def rollback(self) -> None:
        self._round_trip("rollback")
        self.in_transaction = False
        self.rollbacks += 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.db.closes += 1
            failure = self.db._take_failure("close")
            if failure is not None:
                raise failure

    def ping(self) -> None:
        """One round trip. pymssql has no ping(); this exists so that DBUtils' ping
        option (which calls ``ping()`` when present) can be measured in bench/."""
        self._round_trip("execute", "<ping>")

    # ---- the pool's full-reset hook for non-pymssql drivers
    def reset_session(self) -> None:
        """Clear the session state (what sp_reset_connection does). One round trip."""
        self._round_trip("reset", "<reset_session>")
        self.session.clear()
        self.in_transaction = False
        self.resets += 1

    # ---- pymssql-like extras (only meaningful with pymssql_like=True)
    @property
    def autocommit_state(self) -> bool:
        return self._autocommit

    def autocommit(self, status: bool) -> None:
        if status != self._autocommit:
            self._round_trip("execute", "ROLLBACK TRAN" if status else "BEGIN TRAN")
            self._autocommit = status


def _is_dead(exc: BaseException) -> bool:
    args = exc.args
    if isinstance(exc, InterfaceError):
        return "Not connected" in str(exc)
    return bool(args) and (args[0] in (20047, 20017, 20003, 20006)
                           or (isinstance(args[0], tuple) and args[0][0] in (20009, 20002)))


class _FakeInner:
    """pymssql's ``conn._conn`` (an ``_mssql.MSSQLConnection``), the bits the pool uses."""

    def __init__(self, conn: FakeConnection) -> None:
        self._outer = conn

    def init_procedure(self, name: str) -> _FakeProc:
        return _FakeProc(self._outer, name)

    def execute_non_query(self, sql: str) -> None:
        self._outer._round_trip("execute", sql)
        for part in sql.split(";"):
            head = part.strip().upper()
            if head == "BEGIN TRAN":
                self._outer.in_transaction = True
            elif head == "IF @@TRANCOUNT > 0 ROLLBACK TRAN":
                self._outer.in_transaction = False
                self._outer.rollbacks += 1
            elif head:
                self._outer._apply(part)


class _FakeProc:
    def __init__(self, conn: FakeConnection, name: str) -> None:
        self._conn = conn
        self.name = name

    def execute(self) -> None:
        conn = self._conn
        conn._round_trip("reset" if self.name == "sp_reset_connection" else "execute",
                         f"RPC {self.name}")
        if self.name == "sp_reset_connection":
            conn.session.clear()
            conn.in_transaction = False
            conn.resets += 1


class FakeCursor:
    """A fake DB-API cursor: ``SELECT`` returns ``db.rows.get(sql, [(1,)])``."""

    arraysize = 1

    def __init__(self, conn: FakeConnection) -> None:
        self.connection = conn
        self.description: tuple[Any, ...] | None = None
        self.rowcount = -1
        self._rows: list[tuple[Any, ...]] = []
        self.closed = False

    def execute(self, sql: str, params: Any = None) -> None:
        conn = self.connection
        conn._round_trip("execute", sql)
        if not conn._autocommit:
            conn.in_transaction = True
        head = sql.lstrip()[:6].upper()
        if head == "SELECT":
            m = _SELECT_TEMP.search(sql)
            if m and "temp:" + m.group(1).lower() not in conn.session:
                raise ProgrammingError(208, f"Invalid object name '{m.group(1)}'.".encode())
            self._rows = list(conn.db.rows.get(sql, [(1,)]))
            self.description = (("col", 3, None, None, None, None, None),)
            self.rowcount = len(self._rows)
        else:
            conn._apply(sql)
            self._rows = []
            self.description = None
            self.rowcount = 1

    def executemany(self, sql: str, seq: Sequence[Any]) -> None:
        for params in seq:
            self.execute(sql, params)

    def callproc(self, name: str, params: Sequence[Any] = ()) -> Sequence[Any]:
        self.connection._round_trip("execute", f"EXEC {name}")
        return params

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows.pop(0) if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        n = size or self.arraysize
        out, self._rows = self._rows[:n], self._rows[n:]
        return out

    def fetchall(self) -> list[tuple[Any, ...]]:
        if self.description is None:
            raise OperationalError("Statement not executed or executed statement has no "
                                   "resultset")
        out, self._rows = self._rows, []
        return out

    def nextset(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


class FakeClock:
    """An injectable monotonic clock: ``clock()`` returns ``clock.now``; ``advance(s)``.

    ``clock.sleep`` advances instead of sleeping (pass it as the pool's ``sleep=``).
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@contextmanager
def pool_factory(db: FakeDB, clock: FakeClock, **defaults: Any) -> Iterator[Callable[..., Any]]:
    """Yield ``make(**options)`` building pools on ``db`` with ``clock``, no background
    thread (drive maintenance with ``pool.run_maintenance()``); closes them all on exit."""
    from mssql_pool import ConnectionPool

    pools: list[ConnectionPool] = []

    def make(**options: Any) -> ConnectionPool:
        opts = {"background": False, **defaults, **options}
        pool = ConnectionPool(connect=db.connect, clock=clock, sleep=clock.sleep, **opts)
        pools.append(pool)
        return pool

    try:
        yield make
    finally:
        for pool in pools:
            pool.close()


def wait_for(predicate: Callable[[], Any], limit: float = 10.0) -> None:
    """Poll ``predicate`` until it holds (a real wait, for tests with threads); fail after
    ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)
