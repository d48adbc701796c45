"""Row locks, lock waits, deadlock detection and undo logs for the TDS test server.

SQLite lets one connection write a database file at a time, which would serialise every
session's transaction. Instead, every statement runs in SQLite's autocommit mode and the
T-SQL transaction is made here, the way a lock-based server makes it:

* a trigger on every table calls ``__tds_row`` for each row a statement inserts, updates or
  deletes; that takes an exclusive lock on the row (database, table, rowid) for the session,
  and, inside a transaction, records the row's before-image in the session's undo log;
* a row locked by another session aborts the statement (SQLite undoes it); the session waits
  for the lock, then runs the statement again;
* reads see committed data without waiting, as with READ_COMMITTED_SNAPSHOT ON (Azure SQL
  Database's default): a SELECT of a table in which other sessions hold row locks runs inside
  a SQLite transaction that first applies their undo logs, then is rolled back. ``WITH
  (NOLOCK)`` and READ UNCOMMITTED read the uncommitted rows instead;
* ``SET LOCK_TIMEOUT n`` ends a wait with 1222 (the statement is cancelled, the transaction
  lives); a wait that would close a cycle makes the waiting session the deadlock victim: 1205,
  and its transaction is rolled back, which releases its locks;
* COMMIT forgets the undo log and releases the locks; ROLLBACK replays the undo log backwards.

Granularity: rows (SQLite rowids). Locks are exclusive only (no shared, update or key-range
locks), so REPEATABLE READ and SERIALIZABLE behave like READ COMMITTED SNAPSHOT; inserting a
duplicate of another session's uncommitted key fails at once (2627) instead of waiting.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import sqlite3
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import _types
from ._results import SqlError, Waiter

if TYPE_CHECKING:
    from ._engine import Engine, Executor

log = logging.getLogger("mssql_pool.testing.locks")

T = TypeVar("T")
RowKey = tuple[str, str, int]  # (database, table, rowid), names in lower case
TableKey = tuple[str, str]
Want = tuple[str, Any]  # ("row", RowKey) or ("table", TableKey)

POLL = 0.004  # seconds between looks at a lock while waiting (attention is checked too)
TRIGGER_PREFIX = "__tds_"


class Deadlock(Exception):
    """The wait would close a cycle: this session is the victim."""


class LockTimeout(Exception):
    """SET LOCK_TIMEOUT ran out."""


class _Conflict(Exception):
    """Raised inside a trigger: the row is locked by another session."""


class LockManager:
    """Exclusive row locks of all sessions of one server, and who waits for whom."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._rows: dict[RowKey, int] = {}
        self._owned: dict[int, set[RowKey]] = {}
        self._tables: dict[TableKey, dict[int, int]] = {}
        self._waiting: dict[int, Want] = {}
        self.sessions: weakref.WeakValueDictionary[int, SessionLocks] = (
            weakref.WeakValueDictionary())
        self.deadlocks = 0
        self.timeouts = 0
        self.waits = 0

    def try_lock(self, owner: int, key: RowKey) -> int | None:
        """Take the row for owner; the spid holding it instead, or None when granted."""
        with self._mutex:
            holder = self._rows.get(key)
            if holder is not None:
                return None if holder == owner else holder
            self._rows[key] = owner
            self._owned.setdefault(owner, set()).add(key)
            counts = self._tables.setdefault(key[:2], {})
            counts[owner] = counts.get(owner, 0) + 1
            return None

    def release_all(self, owner: int) -> None:
        with self._mutex:
            keys = self._owned.pop(owner, None)
            if not keys:
                return
            for key in keys:
                self._rows.pop(key, None)
                counts = self._tables.get(key[:2])
                if counts is not None:
                    counts.pop(owner, None)
                    if not counts:
                        del self._tables[key[:2]]

    def holds(self, owner: int) -> int:
        with self._mutex:
            return len(self._owned.get(owner, ()))

    def locked_tables(self, owner: int, database: str) -> dict[str, set[int]]:
        """Tables of ``database`` in which other sessions hold row locks -> those sessions."""
        if not self._tables:
            return {}
        with self._mutex:
            out: dict[str, set[int]] = {}
            for (db, t), counts in self._tables.items():
                others = {o for o in counts if o != owner}
                if db == database and others:
                    out[t] = others
            return out

    def _blockers(self, owner: int, want: Want) -> set[int]:
        kind, key = want
        if kind == "row":
            holder = self._rows.get(key)
            return set() if holder is None or holder == owner else {holder}
        return {o for o in self._tables.get(key, {}) if o != owner}

    def _cycle(self, owner: int) -> bool:
        seen: set[int] = set()
        stack = list(self._blockers(owner, self._waiting[owner]))
        while stack:
            other = stack.pop()
            if other == owner:
                return True
            if other in seen:
                continue
            seen.add(other)
            want = self._waiting.get(other)
            if want is not None:
                stack.extend(self._blockers(other, want))
        return False

    def wait(self, owner: int, want: Want, timeout_ms: int, poll: Waiter) -> None:
        """Block until ``want`` is free of other sessions' locks.

        Raises Deadlock (this session closes a cycle), LockTimeout (``timeout_ms`` >= 0 ran
        out) or whatever ``poll`` raises (an attention, a KILL, a closed socket).
        """
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000.0
        with self._mutex:
            if not self._blockers(owner, want):
                return
            self._waiting[owner] = want
            self.waits += 1
            if self._cycle(owner):
                del self._waiting[owner]
                self.deadlocks += 1
                raise Deadlock()
        try:
            while True:
                left = POLL if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    with self._mutex:
                        self.timeouts += 1
                    raise LockTimeout()
                poll(min(POLL, left))
                with self._mutex:
                    if not self._blockers(owner, want):
                        return
                    if self._cycle(owner):
                        self.deadlocks += 1
                        raise Deadlock()
        finally:
            with self._mutex:
                self._waiting.pop(owner, None)

    def snapshot(self) -> dict[str, Any]:
        with self._mutex:
            return {"locks": len(self._rows), "waiting": dict(self._waiting),
                    "waits": self.waits, "deadlocks": self.deadlocks, "timeouts": self.timeouts}


_managers: weakref.WeakValueDictionary[str, LockManager] = weakref.WeakValueDictionary()
_serials: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_next_serial = itertools.count(1)
_managers_lock = threading.Lock()


def manager_for(engine: Engine) -> tuple[LockManager, int]:
    """The lock manager of ``engine``'s data (replicas sharing data share it), and the
    number that makes this server's session ids distinct in it."""
    with _managers_lock:
        mgr = _managers.get(engine.data_dir)
        if mgr is None:
            mgr = LockManager()
            _managers[engine.data_dir] = mgr
        serial = _serials.get(engine)
        if serial is None:
            serial = _serials[engine] = next(_next_serial)
        return mgr, serial


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _poll_sleep(seconds: float) -> None:
    time.sleep(seconds)


class SessionLocks:
    """One session's side: triggers on its connections, its undo log, its waits."""

    def __init__(self, ex: Executor) -> None:
        self.ex = ex
        self.manager, serial = manager_for(ex.engine)
        self.owner = serial * 100_000 + ex.state.spid  # the lock owner: server and session
        # (connection, database, table, undo statement, its parameters)
        self.undo: list[tuple[sqlite3.Connection, str, str, str, tuple[Any, ...]]] = []
        self.savepoints: list[tuple[str, int]] = []
        self._conflict: tuple[str, Any] | None = None
        self._replaying = False
        # a KILL interrupts SQLite from another thread: never while the undo log replays
        self._interrupt_guard = threading.Lock()
        self._undoing = 0
        self.manager.sessions[self.owner] = self

    @property
    def spid(self) -> int:
        return self.ex.state.spid

    def interrupt(self, con: sqlite3.Connection) -> bool:
        """Interrupt the statement running on ``con`` (a KILL, from any thread), unless this
        session is rolling back: a rollback always runs to its end. True when delivered."""
        with self._interrupt_guard:
            if self._undoing:
                return False
            con.interrupt()
            return True

    # ---------------------------------------------------------------- connections

    def install(self, con: sqlite3.Connection, database: str) -> None:
        db = database.lower()

        def row_hook(*args: Any) -> int:
            return self._row(con, db, args)

        con.create_function("__tds_row", -1, row_hook)
        self._triggers(con)

    def _triggers(self, con: sqlite3.Connection) -> None:
        try:
            ensure_triggers(con)
        except sqlite3.Error as exc:  # e.g. busy past lock_wait: the next DDL tries again
            log.warning("session %d: could not install row-lock triggers: %s", self.spid, exc)

    def _row(self, con: sqlite3.Connection, db: str, args: tuple[Any, ...]) -> int:
        if self._replaying:
            return 0
        op, table, cols_json, temp, old_id, new_id = args[:6]
        old_values = args[6:]
        schema = "temp" if temp else "main"
        if not temp:
            for rid in (old_id, new_id):
                if rid is None:
                    continue
                key = (db, str(table).lower(), int(rid))
                holder = self.manager.try_lock(self.owner, key)
                if holder is not None:
                    self._conflict = ("row", key)
                    raise _Conflict()
        if self.ex.state.trancount > 0:
            qt = f"{schema}.{_ident(table)}"
            cols = _columns(cols_json)
            tdb = "" if temp else db
            tl = str(table).lower()
            if op == "I":
                self.undo.append((con, tdb, tl, f"DELETE FROM {qt} WHERE rowid = ?", (new_id,)))
            elif op == "D":
                names = ", ".join(["rowid", *(_ident(c) for c in cols)])
                marks = ", ".join("?" * (len(cols) + 1))
                self.undo.append((con, tdb, tl, f"INSERT INTO {qt} ({names}) VALUES ({marks})",
                                  (old_id, *old_values)))
            else:
                sets = ", ".join(["rowid = ?", *(f"{_ident(c)} = ?" for c in cols)])
                self.undo.append((con, tdb, tl, f"UPDATE {qt} SET {sets} WHERE rowid = ?",
                                  (old_id, *old_values, new_id)))
        return 0

    # ---------------------------------------------------------------- statements

    def run(self, execute: Callable[[], T], sql: str, writes: bool, nolock: bool,
            wait: Waiter | None) -> T:
        """Run one statement: wait for conflicting locks, retry, keep the undo log exact."""
        poll = wait or _poll_sleep
        mark = len(self.undo)
        st = self.ex.state
        try:
            while True:
                if not writes and not nolock and st.isolation != 1:
                    steps = self._others_undo(sql)
                    if steps:
                        return self._snapshot_read(execute, steps)
                self._conflict = None
                try:
                    return execute()
                except Exception:
                    del self.undo[mark:]
                    want = self._conflict
                    if want is None:
                        raise
                    self._conflict = None
                    self._wait(want, poll)
        finally:
            if st.trancount == 0:
                self.manager.release_all(self.owner)

    def _others_undo(self, sql: str) -> list[tuple[str, tuple[Any, ...]]]:
        """Undo steps of other sessions' open transactions on the tables ``sql`` reads."""
        db = self.ex.state.database.lower()
        tables = self.manager.locked_tables(self.owner, db)
        if not tables:
            return []
        low = sql.lower()
        read = {t: owners for t, owners in tables.items()
                if t in low and re.search(r'(?<![\w$])"?' + re.escape(t) + r'"?(?![\w$])', low)}
        steps: list[tuple[str, tuple[Any, ...]]] = []
        for owner in set().union(*read.values()) if read else ():
            other = self.manager.sessions.get(owner)
            if other is None:
                continue
            for _con, edb, table, stmt, params in reversed(list(other.undo)):
                if edb == db and table in read:
                    steps.append((stmt, params))
        return steps

    def _snapshot_read(self, execute: Callable[[], T], steps: list[tuple[str, tuple[Any, ...]]],
                       ) -> T:
        """Run a read as of the last commit: others' changes undone in a rolled-back txn."""
        con = self.ex.conn
        self._replaying = True
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                for stmt, params in steps:
                    try:
                        con.execute(stmt, params)
                    except sqlite3.Error:
                        if not con.in_transaction:  # interrupted: SQLite ended the txn,
                            raise  # a further step would commit another session's undo
                        # else the change was rolled back meanwhile: nothing to hide
                return execute()
            finally:
                _retry_interrupted(con, "ROLLBACK", (), lambda: con.in_transaction)
        finally:
            self._replaying = False

    def _wait(self, want: Want, poll: Waiter) -> None:
        try:
            self.manager.wait(self.owner, want, self.ex.state.lock_timeout, poll)
        except LockTimeout:
            log.info("session %d: lock request timed out on %s", self.spid, want[1])
            raise SqlError(1222) from None
        except Deadlock:
            log.info("session %d: chosen as deadlock victim waiting for %s", self.spid, want[1])
            raise SqlError(1205, spid=self.spid) from None

    def after_ddl(self, con: sqlite3.Connection, created: str | None, temp: bool) -> None:
        """Triggers for new or altered tables; a table created in a transaction is undone."""
        _types.forget_tables()
        self._triggers(con)
        if created and self.ex.state.trancount > 0:
            schema = "temp" if temp else "main"
            self.undo.append((con, "", "", f"DROP TABLE IF EXISTS {schema}.{_ident(created)}",
                              ()))

    # ---------------------------------------------------------------- transactions

    def savepoint(self, name: str) -> None:
        self.savepoints.append((name.lower(), len(self.undo)))

    def has_savepoint(self, name: str) -> bool:
        return any(n == name.lower() for n, _ in self.savepoints)

    def rollback_to(self, name: str) -> bool:
        for i in range(len(self.savepoints) - 1, -1, -1):
            n, mark = self.savepoints[i]
            if n == name.lower():
                self._replay(mark)
                del self.savepoints[i + 1 :]
                return True
        return False

    def end(self, commit: bool) -> None:
        """COMMIT (forget the undo log) or ROLLBACK (replay it); release every lock."""
        try:
            if not commit:
                self._replay(0)
        finally:
            self.undo.clear()
            self.savepoints.clear()
            self.manager.release_all(self.owner)

    def _replay(self, mark: int) -> None:
        entries = self.undo[mark:]
        del self.undo[mark:]
        if not entries:
            return
        with self._interrupt_guard:
            self._undoing += 1
        self._replaying = True
        try:
            for con, _db, _table, sql, params in reversed(entries):
                try:
                    # an interrupt delivered just before the guard can still be pending
                    _retry_interrupted(con, sql, params, lambda: True)
                except sqlite3.Error as exc:
                    log.warning("session %d: undo step failed (%s): %s", self.spid, exc, sql)
        finally:
            self._replaying = False
            with self._interrupt_guard:
                self._undoing -= 1


def _retry_interrupted(con: sqlite3.Connection, sql: str, params: tuple[Any, ...],
                       needed: Callable[[], bool], tries: int = 50) -> None:
    """Run ``sql`` while ``needed()``, again after an interrupt (a KILL racing with it)."""
    for left in range(tries - 1, -1, -1):
        if not needed():
            return
        try:
            con.execute(sql, params)
            return
        except sqlite3.OperationalError as exc:
            if left == 0 or "interrupt" not in str(exc):
                raise


def _columns(cols_json: str, _cache: dict[str, list[str]] = {}) -> list[str]:  # noqa: B006
    cols = _cache.get(cols_json)
    if cols is None:
        cols = _cache[cols_json] = list(json.loads(cols_json))
    return cols


def ensure_triggers(con: sqlite3.Connection) -> None:
    """Make sure each table (main and temp) has the three row triggers for its columns."""
    for schema in ("main", "temp"):
        master = "sqlite_master" if schema == "main" else "sqlite_temp_master"
        try:
            tables = [r[0] for r in con.execute(
                f"SELECT name FROM {schema}.{master} WHERE type = 'table' AND name NOT LIKE "
                "'sqlite_%' AND sql NOT LIKE '%WITHOUT ROWID%'")]
            triggers = {r[0]: r[1] for r in con.execute(
                f"SELECT name, tbl_name FROM {schema}.{master} WHERE type = 'trigger' AND "
                f"name LIKE '{TRIGGER_PREFIX}%'")}
        except sqlite3.Error:
            continue
        for table in tables:
            _table_triggers(con, schema, table, triggers)


def _table_triggers(con: sqlite3.Connection, schema: str, table: str,
                    existing: dict[str, str]) -> None:
    info = con.execute(f"PRAGMA {schema}.table_info({_ident(table)})").fetchall()
    pks = [r for r in info if r[5]]
    cols = [r[1] for r in info
            if not (len(pks) == 1 and r[5] and str(r[2]).upper() == "INTEGER")]
    cols_json = json.dumps(cols)
    tag = f"{zlib.crc32((table + cols_json).encode()):08x}"
    wanted = {f"{TRIGGER_PREFIX}{op}_{tag}": op for op in ("i", "u", "d")}
    mine = {n for n, t in existing.items() if t.lower() == table.lower()}
    if set(wanted) <= mine:
        return
    temp = 1 if schema == "temp" else 0
    create = "CREATE TEMP TRIGGER" if temp else "CREATE TRIGGER"
    for name in mine - set(wanted):
        con.execute(f"DROP TRIGGER IF EXISTS {schema}.{_ident(name)}")
    for name, op in wanted.items():
        if name in mine:
            continue
        event = {"i": "INSERT", "u": "UPDATE", "d": "DELETE"}[op]
        old_id = "NULL" if op == "i" else "old.rowid"
        new_id = "NULL" if op == "d" else "new.rowid"
        olds = "".join(f", old.{_ident(c)}" for c in cols) if op != "i" else ""
        con.execute(
            f"{create} IF NOT EXISTS {_ident(name)} AFTER {event} ON {_ident(table)} BEGIN "
            f"SELECT __tds_row('{op.upper()}', {_sql_str(table)}, {_sql_str(cols_json)}, "
            f"{temp}, {old_id}, {new_id}{olds}); END"
        )
