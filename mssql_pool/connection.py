"""The pooled connection: the record the pool keeps, and the proxy a borrower holds.

A :class:`ConnectionRecord` lives as long as one driver connection; the pool keeps it
while idle. Each checkout hands out a fresh, small :class:`PooledConnection` proxy that
points at the record, so a proxy kept after ``close()`` can no longer reach a connection
that now belongs to someone else.

The proxy behaves as a DB-API connection:

* ``cursor()`` returns a :class:`PooledCursor` that passes everything to the driver's
  cursor and records what ran (the reset bits of :mod:`mssql_pool.reset`: work done,
  session state changed) with a cached text scan: a dict lookup per known statement. A
  statement that leaves nothing behind on its connection (:func:`quiet_mask`: a pure read
  on SQL Server, any statement without transaction control under autocommit) is recorded
  only until its result set has been read to the end;
* ``commit()`` / ``rollback()`` are pymssql's in one round trip each (``COMMIT TRAN;BEGIN
  TRAN``, ``IF @@TRANCOUNT > 0 ROLLBACK TRAN;BEGIN TRAN``; the driver's own in autocommit
  mode and on other drivers) and clear the "work done" bit, unless a statement controlled
  transactions itself (``TXN``: BEGIN/COMMIT/ROLLBACK/SAVE TRAN, a procedure, dynamic SQL,
  anything reached through ``__getattr__``): the transaction count is then unknown after
  a commit (a nested BEGIN TRAN, or autocommit mode where these calls do nothing) and the
  reset on return rolls back whatever is open;
* ``autocommit(status)`` and ``autocommit_state`` pass through (pymssql); toggling it is
  a session change, undone on return;
* ``close()`` returns the connection to the pool (not a real close; idempotent);
  ``with conn:`` does the same on exit;
* ``invalidate(reason)`` marks it dead: the pool closes it instead of reusing it;
* ``raw`` is the driver's connection (statements run on it directly are not tracked:
  call ``mark_session_changed()`` after changing session state through it);
* the loan ends when the connection goes back: the proxy, every cursor taken from it
  and ``raw`` then raise :class:`~mssql_pool.errors.PoolError` when used (a cursor kept
  past its loan never runs inside the next borrower's transaction), and the proxy no
  longer holds the pool (a pool dropped without ``close()`` is collected even while an
  old proxy is referenced);
* ``info`` is a dict for user data that lives as long as the driver connection.

Any error raised by the driver connection or its cursors is marked as the driver's
(:func:`mssql_pool.classify.from_driver`); one that
:func:`mssql_pool.classify.is_disconnect` calls a disconnect marks the connection dead
and every connection the pool opened before the error as suspect (checked on next checkout).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ._driver import commit_error, default_mode_non_query, is_pymssql
from ._driver import rollback as driver_rollback
from ._scan import FAILED, HELD, PENDING, statement_flags
from ._scan import _stmt_cache as _scan_cache
from .classify import mark_driver_error
from .errors import PoolError
from .health import may_replay
from .reset import SESSION, TXN, WORK, rollback_work

if TYPE_CHECKING:
    from .endpoints import Landing
    from .pool import ConnectionPool

__all__ = ["ConnState", "ConnectionRecord", "PooledConnection", "PooledCursor"]

NO_REPLAY = -1.0   # ConnectionRecord.replay_timeout when a failed first statement is not replayed

_tokens = itertools.count(1)   # statements whose rows may be pending (ConnectionRecord.reading)

#: The bits a commit or rollback that the server confirmed at the baseline clears.
SETTLED = WORK | TXN | HELD | PENDING | FAILED

#: pymssql's commit() in one batch instead of two (it sends COMMIT TRAN, then BEGIN TRAN).
COMMIT_REOPEN = "COMMIT TRAN;BEGIN TRAN"


class ConnState(enum.Enum):
    """Where a connection is in its life."""

    IDLE = "idle"
    BUSY = "busy"
    CLOSED = "closed"


class ConnectionRecord:
    """Internal: one driver connection and what the pool knows about it."""

    __slots__ = (
        "raw", "seq", "generation", "created_at", "expires_at", "returned_at", "checkout_at",
        "state", "flags", "discard_reason", "_info", "autocommit", "stack", "leak_warned", "pid",
        "pinged_at", "conn_properties", "landing", "replay_timeout",
        "vouched", "free", "learn", "reading", "close_code", "lost",
    )

    def __init__(self, raw: Any, seq: int, generation: int, now: float, expires_at: float,
                 autocommit: bool | None, pid: int) -> None:
        self.raw = raw
        self.seq = seq                    # creation order (the #n in logs)
        self.vouched = seq                # ordinal of its opening or last passed check;
                                          # suspect when below the pool's mark
        self.generation = generation      # drain() bumps the pool's generation
        self.close_code: str | None = None   # discard reason code for the event (events.py)
        self.lost = False                 # found dead in use (counted in connections_lost)
        self.created_at = now
        self.expires_at = expires_at      # jittered max_lifetime (inf when off)
        self.returned_at = now            # last time it became idle (or was checked)
        self.checkout_at = now
        self.state = ConnState.IDLE
        self.flags = 0                    # reset bits since the last reset
        self.discard_reason: str | None = None   # set when it must be discarded: why
        self._info: dict[str, Any] | None = None
        self.autocommit = autocommit      # mode at creation, restored by a full reset
        self.stack: str | None = None     # checkout stack, kept only with leak_timeout
        self.leak_warned = False
        self.pid = pid
        self.pinged_at = now              # last keepalive ping
        self.conn_properties: str | None = None   # pymssql conn_properties given at connect
        self.landing: Landing | None = None       # endpoint dialled, node reached (endpoints.py)
        # The caller's checkout timeout (None: the pool's) while this checkout ran no check
        # and no commit/rollback: its first statement may be replayed (health.may_replay).
        self.replay_timeout: float | None = NO_REPLAY
        # The statement bits that leave nothing behind on this connection (None: not yet
        # worked out; see quiet_mask), whether the reset's next rollback should also ask
        # which engine this is, and the cursor whose result set is still being read.
        self.free: int | None = None
        self.learn = False
        self.reading = 0                  # token of the statement whose rows are pending

    @property
    def spid(self) -> int | None:
        """The server session id, when identification read it (``landing.spid``)."""
        landing = self.landing
        return None if landing is None else landing.spid

    @property
    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = {}
        return self._info

    def __repr__(self) -> str:
        doomed = " to discard" if self.discard_reason else ""
        return f"<ConnectionRecord #{self.seq} {self.state.value}{doomed}>"


def _driver_error(pool: ConnectionPool, rec: ConnectionRecord, exc: BaseException) -> None:
    """Every error raised by the driver connection or its cursors passes here: it is
    marked as the driver's (:func:`mssql_pool.classify.mark_driver_error`; the transaction
    layer never takes the application's own exceptions for the server's) and shown to the
    pool, which discards the connection on a disconnect."""
    mark_driver_error(exc)
    rec.flags |= WORK | FAILED
    pool.report_error(rec, exc)


def quiet_mask(rec: ConnectionRecord, pool: ConnectionPool) -> int:
    """Work out (once per connection) which statement bits leave nothing behind, so that
    the proxy need not record them: their connection goes back without a round trip.

    Only for pymssql under ``reset="auto"``, with no ``configure`` callback and no
    ``conn_properties`` that speak of the isolation level or implicit transactions (the
    session's baseline is then known: READ COMMITTED, no implicit transactions):

    * autocommit on: every statement without transaction control (TXN), session change or
      undoable state ends with its own transaction: ``WORK | HELD``;
    * autocommit off (pymssql's BEGIN TRAN open): a pure read (:func:`mssql_pool._scan.
      pure_read`) leaves nothing in the open transaction only on an engine that releases
      read locks at the end of the statement under READ COMMITTED: SQL Server and Azure
      SQL. The mask stays 0 until the next rollback this connection needs anyway asks
      ``@@VERSION`` in the same batch (:func:`mssql_pool.reset.rollback_work`); Babelfish
      (PostgreSQL keeps a read's ACCESS SHARE lock to the end of the transaction) and
      anything else keep 0.
    """
    mask = 0
    cfg = pool.config
    props = (rec.conn_properties or "").lower()
    if is_pymssql(rec.raw) and cfg.reset == "auto" \
            and cfg.configure is None and "isolation" not in props \
            and "implicit_transactions" not in props:
        if rec.autocommit:
            mask = WORK | HELD
        elif rec.autocommit is False:
            rec.learn = True
    rec.free = mask
    return mask


def _closed_error() -> PoolError:
    return PoolError("this pooled connection was returned to the pool; get a new one")


class PooledConnection:
    """What ``pool.getconn()`` / ``pool.connection()`` hand out (see the module docstring).

    If a proxy is garbage-collected without being returned, the pool logs a WARNING,
    closes the driver connection and frees its slot.
    """

    __slots__ = ("record", "lender")
    #: Internal, for the pool: the record of this loan and the pool that lent it; both
    #: None once the connection was returned.
    record: ConnectionRecord | None
    lender: ConnectionPool

    def __init__(self, rec: ConnectionRecord, pool: ConnectionPool) -> None:
        self.record = rec
        self.lender = pool

    @property
    def raw(self) -> Any:
        """The driver's connection, while the loan lasts."""
        rec = self.record
        if rec is None:
            raise _closed_error()
        return rec.raw

    # -- DB-API ----------------------------------------------------------------------
    def cursor(self, *args: Any, **kwargs: Any) -> PooledCursor:
        """A tracked cursor of the driver connection."""
        rec = self.record
        if rec is None:
            raise _closed_error()
        try:
            if args or kwargs:
                pooled = PooledCursor(self.raw.cursor(*args, **kwargs), rec, self)
                pooled._args = (args, kwargs)    # to open the same kind on a replacement
                return pooled
            return PooledCursor(self.raw.cursor(), rec, self)
        except Exception as exc:
            _driver_error(self.lender, rec, exc)
            raise

    def _live(self) -> ConnectionRecord:
        rec = self.record
        if rec is None:
            raise _closed_error()
        rec.replay_timeout = NO_REPLAY     # a later statement is not the checkout's first
        return rec

    def _driver_call(self, rec: ConnectionRecord, method: str) -> None:
        try:
            if method == "rollback":
                driver_rollback(self.raw)   # 3903 in any engine's wording is a no-op
            else:
                getattr(self.raw, method)()
        except Exception as exc:
            _driver_error(self.lender, rec, exc)
            raise

    def _ended(self, rec: ConnectionRecord, known: bool) -> None:
        """A commit or rollback returned. ``known``: it ran on the server (not pymssql's
        no-op in autocommit mode whose session baseline is not known)."""
        if rec.flags & TXN or not known:
            # A statement that controlled transactions itself (nested BEGIN TRAN, a
            # procedure, BEGIN TRAN in autocommit mode, where these calls do nothing)
            # leaves the count unknown until the reset on return asks the server.
            rec.flags &= ~PENDING
        else:
            rec.flags &= ~SETTLED

    def commit(self) -> None:
        """pymssql's ``commit()`` in one round trip (``COMMIT TRAN;BEGIN TRAN``), raising
        what it raises (``OperationalError("Cannot commit transaction: ...")``); in
        autocommit mode and on other drivers, the driver's own ``commit()``."""
        rec = self._live()
        execute = default_mode_non_query(self.raw)
        if execute is None:
            self._driver_call(rec, "commit")
            self._ended(rec, known=self._autocommit_known(rec))
            return
        try:
            execute(COMMIT_REOPEN)
        except Exception as exc:
            error = commit_error(exc)
            _driver_error(self.lender, rec, error)
            if error is exc:
                raise
            raise error from exc
        self._ended(rec, known=True)

    def rollback(self) -> None:
        """pymssql's ``rollback()`` in one round trip (``IF @@TRANCOUNT > 0 ROLLBACK
        TRAN;BEGIN TRAN``, which ends a nested BEGIN TRAN too); in autocommit mode and on
        other drivers, the driver's own ``rollback()``."""
        rec = self._live()
        if default_mode_non_query(self.raw) is None:
            self._driver_call(rec, "rollback")
            self._ended(rec, known=self._autocommit_known(rec))
            return
        try:
            rollback_work(self.raw, rec)
        except Exception as exc:
            _driver_error(self.lender, rec, exc)
            raise
        rec.flags &= ~SETTLED          # IF @@TRANCOUNT > 0 ROLLBACK asked the server

    def _autocommit_known(self, rec: ConnectionRecord) -> bool:
        """False for pymssql in autocommit mode whose baseline is not known (a
        ``configure`` callback or ``conn_properties`` may have turned implicit transactions
        on, and then its no-op commit()/rollback() would leave one open)."""
        if not is_pymssql(self.raw):
            return True
        free = rec.free if rec.free is not None else quiet_mask(rec, self.lender)
        return bool(free & HELD)

    def autocommit(self, status: bool) -> None:
        """pymssql's ``autocommit(status)``; the pool restores the original mode on return."""
        rec = self.record
        if rec is None:
            raise _closed_error()
        try:
            self.raw.autocommit(status)
        except Exception as exc:
            _driver_error(self.lender, rec, exc)
            raise
        rec.flags |= SESSION

    @property
    def autocommit_state(self) -> bool:
        return bool(self.raw.autocommit_state)

    def close(self) -> None:
        """Return the connection to the pool. Calling it again does nothing."""
        if self.record is not None:
            self.lender.putconn(self)

    # -- the loan (used by the pool) ---------------------------------------------------
    def detach(self, pool: ConnectionPool) -> ConnectionRecord | None:
        """End the loan (the pool calls this on return): the record, or None when it was
        returned already. Raises :class:`PoolError` for another pool's proxy."""
        rec = self.record
        if rec is None:
            return None
        if self.lender is not pool:
            raise PoolError(f"{self!r} does not belong to pool {pool.name!r}")
        self.record = None
        self.lender = None    # type: ignore[assignment]  # a returned proxy does not keep the pool alive
        return rec

    def take_over(self, fresh: PooledConnection) -> ConnectionRecord:
        """Continue this (returned) proxy's loan on ``fresh``'s connection: the replay of
        a failed first statement (the pool's ``replace_dead``)."""
        rec = fresh.record
        assert rec is not None
        self.lender = fresh.lender
        fresh.record = None
        fresh.lender = None   # type: ignore[assignment]
        self.record = rec
        return rec

    # -- pool-specific -----------------------------------------------------------------
    def invalidate(self, reason: str | None = None) -> None:
        """Mark the connection dead: it is closed, not reused, when it comes back."""
        rec = self.record
        if rec is not None and rec.discard_reason is None:
            rec.discard_reason = reason or "invalidated by its user"

    def mark_session_changed(self) -> None:
        """Ask for a full session reset on return (after using ``raw`` directly)."""
        if self.record is not None:
            self.record.flags |= SESSION | WORK | TXN | HELD

    def _settled(self) -> None:
        """Internal (transaction.py): the server just confirmed the transaction count is
        at its baseline (a COMMIT that checked ``@@TRANCOUNT`` and pymssql's new implicit
        transaction): nothing is left for the reset on return to roll back."""
        rec = self.record
        if rec is not None:
            rec.flags &= ~SETTLED

    @property
    def closed(self) -> bool:
        """True once returned to the pool."""
        return self.record is None

    @property
    def invalidated(self) -> bool:
        rec = self.record
        return rec is not None and rec.discard_reason is not None

    @property
    def info(self) -> dict[str, Any]:
        """User data tied to the driver connection (survives checkouts, not reconnects)."""
        rec = self.record
        if rec is None:
            raise _closed_error()
        return rec.info

    @property
    def landing(self) -> Landing | None:
        """Where this connection landed: endpoint dialled, node reached (see endpoints.py)."""
        rec = self.record
        if rec is None:
            raise _closed_error()
        return rec.landing

    @property
    def pool(self) -> ConnectionPool:
        """The pool that lent this connection (while the loan lasts)."""
        if self.record is None:
            raise _closed_error()
        return self.lender

    def __enter__(self) -> PooledConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.record is not None:
            self.lender.putconn(self)

    def __getattr__(self, name: str) -> Any:
        # Anything else the driver offers (bulk_copy, as_dict, ...) counts as work whose
        # effect on the transaction count is unknown.
        rec = self.record
        if rec is None:
            raise _closed_error()
        rec.flags |= WORK | TXN | HELD
        return getattr(self.raw, name)

    def __del__(self) -> None:
        rec = self.record
        if rec is not None:
            self.record = None
            self.lender.report_orphan(rec)

    def __repr__(self) -> str:
        rec = self.record
        if rec is None:
            return "<PooledConnection returned>"
        return f"<PooledConnection #{rec.seq} of pool {self.lender.name!r}>"


class PooledCursor:
    """A driver cursor that tells its record what ran. Everything else passes through."""

    __slots__ = ("_cur", "_rec", "_conn", "_args", "_token")
    _args: tuple[tuple[Any, ...], dict[str, Any]]   # set only when cursor() had arguments

    def __init__(self, cur: Any, rec: ConnectionRecord, conn: PooledConnection) -> None:
        self._cur = cur
        self._rec = rec
        self._conn = conn
        self._token = 0

    @property
    def connection(self) -> PooledConnection:
        return self._conn

    def _live(self) -> ConnectionRecord:
        if self._conn.record is None:    # the loan ended: the connection is someone else's
            raise _closed_error()
        return self._rec

    def execute(self, operation: Any, params: Any = None) -> Any:
        if self._conn.record is None:
            raise _closed_error()
        rec = self._rec
        flags = _scan_cache.get(operation)  # the common case without a function call
        if flags is None:
            flags = statement_flags(operation)
        before = rec.flags
        free = rec.free
        if free is None:
            free = quiet_mask(rec, self._conn.lender)
        quiet = not flags & ~free
        if quiet:
            # Leaves nothing behind once its results are read (quiet_mask): recorded only
            # as PENDING until then.
            rec.flags = before | PENDING
            rec.reading = self._token = next(_tokens)
        else:
            rec.flags = before | flags
            rec.reading = 0
        try:
            if params is None:
                result = self._cur.execute(operation)
            else:
                result = self._cur.execute(operation, params)
        except Exception as exc:
            mark_driver_error(exc)
            if before or rec.replay_timeout == NO_REPLAY or self._conn.record is not rec \
                    or not may_replay(exc, rec.raw, operation):
                _driver_error(self._conn.lender, rec, exc)
                raise
            error = exc
        else:
            if quiet:
                rec.replay_timeout = NO_REPLAY   # the next statement is not the first
                if self._cur.description is None:
                    self._read_out()
            return result
        return self._replay(error, operation, params)

    def _read_out(self) -> None:
        """This cursor's result set was read to its end (the statement has finished)."""
        rec = self._rec
        if self._token and rec.reading == self._token:
            rec.reading = 0
            rec.flags &= ~PENDING

    def _replay(self, error: Exception, operation: Any, params: Any) -> Any:
        """The checkout's first statement found its connection dead (see
        :func:`mssql_pool.health.may_replay`): run it once on a validated replacement.

        Runs outside the ``except`` block so that an error of the replay does not carry
        the original one as its context (the classifier reads the whole chain).
        """
        conn = self._conn
        flags = self._rec.flags            # this statement's reset bits (putconn clears them)
        new = conn.lender.replace_dead(conn, self._rec, error)
        if new is None:
            raise error
        args = getattr(self, "_args", None)
        try:
            cur = new.raw.cursor(*args[0], **args[1]) if args else new.raw.cursor()
        except Exception as exc:
            _driver_error(conn.lender, new, exc)
            raise
        stale, self._cur, self._rec = self._cur, cur, new
        new.flags |= flags | WORK | HELD   # recorded in full on the replacement
        try:
            stale.close()
        except Exception:
            pass   # its connection is closed already
        try:
            if params is None:
                return cur.execute(operation)
            return cur.execute(operation, params)
        except Exception as exc:
            _driver_error(conn.lender, new, exc)
            raise

    def executemany(self, operation: Any, seq_of_params: Sequence[Any]) -> Any:
        rec = self._live()
        rec.flags |= statement_flags(operation) | HELD   # never quiet
        rec.reading = 0
        try:
            return self._cur.executemany(operation, seq_of_params)
        except Exception as exc:
            _driver_error(self._conn.lender, rec, exc)
            raise

    def callproc(self, procname: str, parameters: Sequence[Any] = ()) -> Any:
        rec = self._live()
        rec.flags |= statement_flags(procname) | TXN | HELD   # a procedure may leave a
        rec.reading = 0                                     # transaction open
        try:
            return self._cur.callproc(procname, parameters)
        except Exception as exc:
            _driver_error(self._conn.lender, rec, exc)
            raise

    def _call(self, name: str, *args: Any) -> Any:
        self._live()
        try:
            return getattr(self._cur, name)(*args)
        except Exception as exc:
            _driver_error(self._conn.lender, self._rec, exc)
            raise

    def fetchone(self) -> Any:
        self._live()
        try:
            row = self._cur.fetchone()
        except Exception as exc:
            _driver_error(self._conn.lender, self._rec, exc)
            raise
        if row is None:
            self._read_out()
        return row

    def fetchmany(self, size: int | None = None) -> Any:
        if size is None:
            rows = self._call("fetchmany")
            size = getattr(self._cur, "arraysize", 1)
        else:
            rows = self._call("fetchmany", size)
        if size > 0 and len(rows) < size:
            self._read_out()
        return rows

    def fetchall(self) -> Any:
        self._live()
        try:
            rows = self._cur.fetchall()
        except Exception as exc:
            _driver_error(self._conn.lender, self._rec, exc)
            raise
        self._read_out()
        return rows

    def nextset(self) -> Any:
        more = self._call("nextset")
        if not more:
            self._read_out()
        return more

    def close(self) -> None:
        if self._conn.record is None:
            return       # the loan ended; the driver cursor went with it
        try:
            self._cur.close()
        except Exception as exc:
            _driver_error(self._conn.lender, self._rec, exc)
            raise

    def __iter__(self) -> Iterator[Any]:
        while True:
            row = self.fetchone()
            if row is None:
                return
            yield row

    def __enter__(self) -> PooledCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):      # an unset slot (_args), not the driver's
            raise AttributeError(name)
        self._live()
        return getattr(self._cur, name)

    def __repr__(self) -> str:
        return f"<PooledCursor on {self._conn!r}>"
