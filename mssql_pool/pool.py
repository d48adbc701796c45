"""ConnectionPool: checkout, checkin, fair waiting, and the decisions that go with them.

The lifecycle of a connection, with the option that acts at each step:

1. **create**: :meth:`ConnectionPool._connect_new` resolves ``conninfo`` (a callable is
   called on every connect), opens the driver connection (``pymssql.connect`` or the
   ``connect=`` factory), runs ``configure``. Failures go to ``last_connect_error``.
2. **check** on checkout (:mod:`mssql_pool.health`): ``check``, ``validate_after``.
3. **use**: the proxy (:mod:`mssql_pool.connection`) tracks what ran.
4. **reset** on return (:mod:`mssql_pool.reset`): ``reset``.
5. **retire / discard**: ``max_lifetime``, ``max_idle``, ``keepalive`` (maintenance),
   dead or unresettable connections, :meth:`ConnectionPool.drain`.

Concurrency rules. One ``threading.Lock`` guards the pool's state; every decision is
made under it and every round trip, connect and close happens after it is released.
Callers that cannot be served queue as :class:`_Waiter` objects in a FIFO deque; a
returning connection goes straight to the oldest waiter (never to a thread that barges
in: idle connections exist only while nobody waits). A waiter whose caller timed out
removes itself under the lock, so nothing is ever delivered to nobody. Idle connections
are used last-in first-out, which keeps the hot ones hot (their checks are bypassed)
and lets the cold ones age out through ``max_idle``.

Fork safety: in a child process (``os.register_at_fork``) every pool forgets the
parent's connections without touching their sockets and starts afresh.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from . import endpoints as _endpoints
from ._dsn import parse_conninfo, redact
from .breaker import ConnectGuard
from .classify import is_disconnect
from .config import Conninfo, PoolConfig, check_timeout, make_config
from .connection import NO_REPLAY, ConnectionRecord, ConnState, PooledConnection
from .errors import (
    CircuitOpenError,
    PoolClosed,
    PoolError,
    PoolTimeout,
    RedirectError,
    TooManyRequests,
)
from .health import run_check
from .maintenance import Maintenance
from .reset import (
    CALLBACK,
    FULL,
    NO_FULL_RESET,
    NONE,
    ROLLBACK,
    ResetUnsupported,
    full_reset,
    plan,
    rollback_work,
)
from .stats import PoolStats

__all__ = ["ConnectionPool"]

logger = logging.getLogger("mssql_pool.pool")
T = TypeVar("T")

_INF = float("inf")
_IDLE = ConnState.IDLE
_BUSY = ConnState.BUSY
_SLOT = object()     # delivered to a waiter: "a slot is reserved for you, open a connection"
_CLOSED = object()   # delivered to a waiter: "the pool closed"
_CONNECT_BACKOFF = (0.05, 2.0)   # first and largest pause between a caller's connect attempts

_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
_inherited: list[Any] = []       # parent's connections in a forked child: never used or closed


class _Waiter:
    """One queued caller. Completed (under the pool lock) by whoever has something for it."""

    __slots__ = ("lock", "result")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.result: object = None

    def deliver(self, result: object) -> None:
        self.result = result
        self.lock.release()


class ConnectionPool:
    """A thread-safe pool of SQL Server connections (pymssql), validated and reset.

    ``conninfo`` is a URL (``mssql://user:pass@host:1433/db?tds_version=7.4``), a mapping
    of ``pymssql.connect`` arguments, or a zero-argument callable returning either
    (resolved on every connect). Alternatively ``connect=factory`` gives any zero-argument
    callable returning a DB-API connection. Every other option is keyword-only and
    described in :mod:`mssql_pool.config`.
    """

    def __init__(self, conninfo: Conninfo = None, *, connect: Callable[[], Any] | None = None,
                 **options: Any) -> None:
        guard_options = ConnectGuard.pop_options(options)
        self.config: PoolConfig = make_config(conninfo=conninfo, connect=connect, **options)
        cfg = self.config
        self.name: str = cfg.name
        self.last_connect_error: BaseException | None = None
        self._clock = cfg.clock
        self._min_size = cfg.min_size
        self._max_size = cfg.max_size
        self._check = cfg.check
        self._validate_after = cfg.validate_after
        self._reset_mode = cfg.reset
        self._no_full_reset = False   # set when the server lacks sp_reset_connection
        self._lock = threading.Lock()
        self._idle: deque[ConnectionRecord] = deque()
        self._waiters: deque[_Waiter] = deque()
        self._size = 0          # open + being opened
        self._opening = 0       # being opened
        self._nbusy = 0
        self._closed = False
        self._generation = 0
        self._seq = 0
        self._suspect_before = 0   # records with a smaller .trusted are suspect (_mark_suspects)
        self._ordinal = 0          # last .trusted given out (a new connection, a passed check)
        self._orphans: deque[ConnectionRecord] = deque()
        self._busy_recs: set[ConnectionRecord] | None = set() if cfg.leak_timeout else None
        self._stats = PoolStats()
        self._pid = os.getpid()
        #: Endpoint choice, failover partners, redirects (None for ``connect=`` pools).
        self.endpoints: _endpoints.Endpoints | None = _endpoints.make_endpoints(cfg)
        #: The connect policy and the pool-wide circuit in front of every login
        #: (options ``connect_policy``, ``circuit_breaker``, ``circuit_wait``).
        #: ``circuit_breaker="auto"`` adds no pool circuit: conninfo pools have endpoint
        #: circuits (``endpoint_breaker=None`` turns circuits off), and a ``connect=``
        #: factory may put its own breaker in front of its logins (a second one would
        #: count every failure twice and keep callers out after the first has closed).
        self.connect_guard: ConnectGuard = ConnectGuard.from_options(
            **guard_options, clock=cfg.clock, sleep=cfg.sleep, random=cfg.random,
            name=cfg.name, other_circuits=True)
        self._connect_failing = False   # the last connect failed: wake waiters on success
        self._maintenance = Maintenance(self)
        _pools.add(self)
        logger.info("pool %r created: %s", self.name, self.config)
        if cfg.background:
            self._maintenance.start()

    # ------------------------------------------------------------------ checkout
    def getconn(self, timeout: float | None = None) -> PooledConnection:
        """Check a connection out, waiting up to ``timeout`` s (default: the pool's).

        The connection is checked first unless the bypass window applies; one that fails
        is replaced transparently. Raises :class:`PoolTimeout`, :class:`PoolClosed` or
        :class:`TooManyRequests`. Give it back with :meth:`putconn` or ``conn.close()``.
        """
        if timeout is not None:
            check_timeout("timeout", timeout)
        now = self._clock()
        rec = None
        # Fast path: an idle connection, fresh enough to skip its check.
        with self._lock:
            if self._idle:
                rec = self._idle[-1]
                if (now - rec.returned_at < self._validate_after
                        and rec.trusted >= self._suspect_before and now < rec.expires_at
                        and rec.generation == self._generation):
                    self._idle.pop()
                    rec.state = _BUSY
                    rec.checkout_at = now
                    rec.replay_timeout = timeout    # unchecked: see health.may_replay
                    self._nbusy += 1
                    st = self._stats
                    st.requests_num += 1
                    if self._check is not None:
                        st.checks_skipped += 1
                else:
                    rec = None
        if rec is not None:
            if self._busy_recs is not None:
                self._track_busy(rec)
            return PooledConnection(rec, self)
        return self._getconn_slow(now, self.config.timeout if timeout is None else timeout)

    def _getconn_slow(self, start: float, timeout: float) -> PooledConnection:
        """Everything but the fast path: stale idle connections, connecting, queueing.

        Each turn of the loop decides under the lock (take an idle connection, reserve a
        slot to connect, or queue), then acts outside it. After a failed connect the
        caller queues for a backoff pause (a returned connection still reaches it) before
        connecting again, until its deadline.
        """
        clock = self._clock
        deadline = start + timeout
        now = start
        connect_error: BaseException | None = None
        backoff = _CONNECT_BACKOFF[0]
        backing_off = False     # a connect just failed: pause before the next attempt
        reserved = False        # we hold a reserved slot (handed over or kept)
        queued = False
        while True:
            rec: ConnectionRecord | None = None
            to_close: ConnectionRecord | None = None
            waiter: _Waiter | None = None
            connect = reserved
            reserved = False
            check = False
            if self._orphans:
                self._reap_orphans()
            if not connect:
                with self._lock:
                    if self._closed:
                        self._stats.requests_errors += 1
                        raise PoolClosed(f"pool {self.name!r} is closed")
                    if self._idle:
                        rec = self._idle.pop()
                        if now >= rec.expires_at or rec.generation != self._generation:
                            to_close = rec
                            self._drop_locked(rec)
                            self._stats.connections_expired += 1
                            rec = None
                        else:
                            rec.state = ConnState.BUSY
                            self._nbusy += 1
                            check = self._needs_check_locked(rec, now)
                    elif self._size < self._max_size and not backing_off:
                        self._size += 1
                        self._opening += 1
                        connect = True
                    else:
                        waiter = self._enqueue_locked(now, deadline, start, connect_error)
                        if not queued:
                            queued = True
                            self._stats.requests_queued += 1
            if to_close is not None:
                self._close_record(to_close, "past its lifetime")
                continue
            if waiter is not None:
                limit = deadline - now
                if backing_off:
                    pause = backoff * (0.5 + self.config.random())
                    probe_in = getattr(connect_error, "retry_in", 0.0)
                    if probe_in:   # an open circuit: be there when its next probe is due
                        pause = min(pause, probe_in + 0.02 * self.config.random())
                    else:          # a throttling hint (40501: 10 s) sets the least pause
                        pause = max(pause, self.connect_guard.min_delay(connect_error))
                    limit = min(limit, pause)
                    backoff = min(backoff * 2, _CONNECT_BACKOFF[1])
                    backing_off = False
                waiter.lock.acquire(True, min(max(limit, 0.0), threading.TIMEOUT_MAX))
                now = clock()
                with self._lock:
                    result = waiter.result
                    if result is None:
                        self._waiters.remove(waiter)   # out of the queue: no late delivery
                        if now >= deadline:
                            self._raise_timeout_locked(now - start, connect_error)
                        continue                       # backoff pause over: connect again
                    if isinstance(result, ConnectionRecord):
                        rec = result
                        check = self._needs_check_locked(rec, now)
                if result is _CLOSED:
                    raise PoolClosed(f"pool {self.name!r} closed while waiting")
                if result is _SLOT:
                    connect = True
            if connect:
                try:
                    rec = self._connect_new(max(deadline - clock(), 0.0))
                except Exception as exc:
                    connect_error = exc
                    backing_off = True
                    refused = isinstance(exc, CircuitOpenError)
                    # Not retried (18456): the caller hears it now, not at its deadline.
                    fatal = not refused and self.connect_guard.give_up(exc)
                    with self._lock:
                        self._opening -= 1
                        self._size -= 1
                        if not refused:
                            # A real attempt failed: the next waiter may try its own.
                            # A circuit's refusal is not passed on, or the slot would
                            # spin through every waiter until the probe is due.
                            self._slot_freed_locked()
                        now = clock()
                        if fatal:
                            self._stats.requests_errors += 1
                        elif now >= deadline:
                            self._raise_timeout_locked(now - start, connect_error)
                    if fatal:
                        raise self._login_refused(exc, now - start) from exc
                    if isinstance(exc, RedirectError):
                        raise        # misrouted logins do not heal by waiting
                    if refused:
                        assert isinstance(exc, CircuitOpenError)
                        if now + exc.retry_in >= deadline:
                            raise    # the next probe is past the caller's deadline: fail fast
                        # Sleep until the probe is due (a returned connection still comes).
                        backoff = max(backoff, exc.retry_in)
                    continue
                with self._lock:
                    self._opening -= 1
                    if self._closed:
                        self._drop_locked(rec)
                        to_close = rec
                    else:
                        rec.state = ConnState.BUSY
                        self._nbusy += 1
                if to_close is not None:
                    self._close_record(to_close, "the pool is closed")
                    raise PoolClosed(f"pool {self.name!r} is closed")
                check = False
            assert rec is not None
            if check:
                mark = self._suspect_before
                try:
                    run_check(self._check, rec.raw)
                except Exception as exc:
                    if is_disconnect(exc):
                        self._mark_suspects()
                    with self._lock:
                        self._stats.checks_failed += 1
                        self._stats.connections_lost += 1
                        self._stats.connections_discarded += 1
                        self._nbusy -= 1
                        rec.state = ConnState.CLOSED
                        if self._idle or not self._waiters:
                            self._size -= 1          # the loop takes an idle one or reserves
                        else:
                            self._opening += 1       # others wait: keep the slot, reconnect
                            reserved = True
                    self._close_record(rec, f"its check failed: {redact(exc)}")
                    now = clock()
                    continue
                rec.returned_at = now = clock()
                self._vouch(rec, mark)
            # Handed out without a check: a first statement that finds it dead may be
            # replayed on a replacement within the same timeout (health.may_replay).
            rec.replay_timeout = NO_REPLAY if check else timeout
            with self._lock:
                rec.checkout_at = now
                self._stats.requests_num += 1
                if queued:   # counted once per request, however many turns it took
                    self._stats.requests_wait_ms += (now - start) * 1000.0
            if self._busy_recs is not None:
                self._track_busy(rec)
            return PooledConnection(rec, self)

    def _enqueue_locked(self, now: float, deadline: float, start: float,
                        connect_error: BaseException | None) -> _Waiter:
        mw = self.config.max_waiting
        if mw and len(self._waiters) >= mw:
            self._stats.requests_errors += 1
            raise TooManyRequests(
                f"pool {self.name!r}: {len(self._waiters)} callers already waiting "
                f"(max_waiting={mw}); shed load or raise max_waiting/max_size")
        if deadline - now <= 0:
            self._raise_timeout_locked(now - start, connect_error)
        waiter = _Waiter()
        self._waiters.append(waiter)
        return waiter

    def _needs_check_locked(self, rec: ConnectionRecord, now: float) -> bool:
        if self._check is None:
            return False
        if rec.trusted < self._suspect_before or now - rec.returned_at >= self._validate_after:
            self._stats.checks_run += 1
            return True
        self._stats.checks_skipped += 1
        return False

    def _raise_timeout_locked(self, waited: float, error: BaseException | None) -> None:
        self._stats.requests_timeouts += 1
        msg = (f"no connection from pool {self.name!r} after {waited:.2f} s "
               f"(size {self._size}/{self._max_size}, {len(self._waiters)} waiting)")
        if error is not None:
            msg += f"; last connection error: {redact(error)}"
        else:
            msg += "; every connection stayed busy: raise max_size or return connections sooner"
        raise PoolTimeout(msg, waited=waited, pool_size=self._size, max_size=self._max_size,
                          waiting=len(self._waiters), last_error=error)

    def _login_refused(self, error: BaseException, waited: float) -> PoolTimeout:
        """The error for a login the connect policy never retries (18456): at once, with
        the server's message (passwords masked) and what to check."""
        return PoolTimeout(
            f"pool {self.name!r}: the server refused the login, not retried (check the user "
            f"name and password, and that the login may use the database): {redact(error)}",
            waited=waited, pool_size=self._size, max_size=self._max_size,
            waiting=len(self._waiters), last_error=error)

    def _track_busy(self, rec: ConnectionRecord) -> None:
        rec.stack = "".join(traceback.format_stack(limit=16)[:-2])
        rec.leak_warned = False
        with self._lock:
            if self._busy_recs is not None:
                self._busy_recs.add(rec)

    def connection(self, timeout: float | None = None) -> PooledConnection:
        """Check a connection out for a ``with`` block; it goes back when the block ends.

        ``with pool.connection(timeout=5) as conn: ...``. The connection is taken when
        this is called (the returned proxy is its own context manager).
        """
        return self.getconn(timeout)

    # ------------------------------------------------------------------ checkin
    def putconn(self, conn: PooledConnection) -> None:
        """Give a connection back: reset it as needed, then hand it on or keep it idle.

        Idempotent: a proxy already returned is ignored.
        """
        if not isinstance(conn, PooledConnection):
            raise TypeError(f"putconn() takes a connection from getconn(), "
                            f"got {type(conn).__name__}")
        rec = conn._rec
        if rec is None:
            return
        if conn._pool is not self:
            raise PoolError(f"{conn!r} does not belong to pool {self.name!r}")
        conn._rec = None
        reason = rec.dead
        done = NONE
        flags = rec.flags
        if reason is None and (flags or self._reset_mode == "full"):
            decision = plan(flags, self._reset_mode)
            if isinstance(decision, str):
                reason = decision
            elif decision == FULL and self._no_full_reset:
                reason = NO_FULL_RESET
            elif decision != NONE:
                try:
                    self._do_reset(rec, decision)
                    done = decision
                except ResetUnsupported:
                    self._found_no_full_reset()
                    reason = NO_FULL_RESET
                except Exception as exc:
                    self._on_error(rec, exc)
                    reason = f"its reset failed: {redact(exc)}"
        rec.flags = 0
        now = self._clock()
        with self._lock:
            st = self._stats
            st.usage_ms += (now - rec.checkout_at) * 1000.0
            if done == NONE:
                st.resets_none += 1
            elif done == ROLLBACK:
                st.resets_rollback += 1
            else:
                st.resets_full += 1
            if self._busy_recs is not None:
                self._busy_recs.discard(rec)
            if reason is None:
                if now < rec.expires_at and rec.generation == self._generation \
                        and not self._closed:
                    rec.returned_at = now
                    if self._waiters:      # straight to the oldest waiter, still busy
                        rec.checkout_at = now
                        self._waiters.popleft().deliver(rec)
                    else:
                        self._nbusy -= 1
                        rec.state = _IDLE
                        self._idle.append(rec)
                    return
                if self._closed:
                    reason = "the pool is closed"
                else:
                    st.connections_expired += 1
                    reason = ("the pool was drained" if rec.generation != self._generation
                              else "past its lifetime")
            else:
                st.connections_discarded += 1
            self._drop_locked(rec, busy=True)
        level = logging.WARNING if rec.dead is not None or "reset" in reason or "state" in reason \
            else logging.INFO
        if reason is NO_FULL_RESET:
            level = logging.DEBUG    # said once at INFO by _found_no_full_reset
        self._close_record(rec, reason, level=level)

    def _found_no_full_reset(self) -> None:
        """The server has no sp_reset_connection: found out once, said once."""
        if not self._no_full_reset:
            self._no_full_reset = True
            logger.info("pool %r: the server has no sp_reset_connection (Babelfish?): "
                        "connections whose session state changed are closed instead of "
                        "reset", self.name)

    def _do_reset(self, rec: ConnectionRecord, decision: int) -> None:
        raw = rec.raw
        if decision == ROLLBACK:
            rollback_work(raw, rec)
        elif decision == FULL:
            full_reset(raw, autocommit=rec.autocommit, conn_properties=rec.conn_properties,
                       configure=self.config.configure)
        elif decision == CALLBACK:
            callback = self._reset_mode
            assert callable(callback)
            callback(raw)

    def _give_locked(self, rec: ConnectionRecord, now: float) -> None:
        """Hand ``rec`` to the oldest waiter, or make it idle. Caller holds the lock."""
        if self._waiters:
            rec.state = ConnState.BUSY
            rec.checkout_at = now
            self._nbusy += 1
            self._waiters.popleft().deliver(rec)
        else:
            rec.state = ConnState.IDLE
            self._idle.append(rec)

    def _drop_locked(self, rec: ConnectionRecord, busy: bool = False) -> None:
        """Forget ``rec`` (the caller closes it after releasing the lock)."""
        rec.state = ConnState.CLOSED
        if busy:
            self._nbusy -= 1
        self._size -= 1
        self._slot_freed_locked()

    def _slot_freed_locked(self) -> None:
        """A slot became free: the oldest waiter gets it to open a connection."""
        if self._waiters and not self._closed and self._size < self._max_size:
            self._size += 1
            self._opening += 1
            self._waiters.popleft().deliver(_SLOT)
        elif self._size < self._min_size and not self._closed:
            self._maintenance.wake()

    def _close_record(self, rec: ConnectionRecord | None, reason: str,
                      level: int = logging.INFO) -> None:
        """Close a record's driver connection (never under the lock)."""
        if rec is None:
            return
        logger.log(level, "pool %r: closing connection #%d: %s", self.name, rec.seq, reason)
        if rec.pid != os.getpid():
            _inherited.append(rec.raw)   # the parent's socket: leave it alone
            return
        try:
            rec.raw.close()
        except Exception as exc:
            logger.debug("pool %r: closing connection #%d failed: %s", self.name, rec.seq,
                         redact(exc))

    # ------------------------------------------------------------------ connect
    def _connect_new(self, timeout: float | None = None) -> ConnectionRecord:
        """Open one new driver connection and return its (unowned) record.

        The single place where connections are made: resolves ``conninfo`` (calling it when
        it is callable), calls the driver or the ``connect`` factory through
        :attr:`connect_guard` (its circuit; endpoints add theirs), runs ``configure``, and
        records the outcome (``last_connect_error``, stats). ``timeout`` is what is left of
        the caller's acquire timeout (with ``circuit_wait`` it may be spent waiting for the
        circuit's next probe); None (refills) never waits. The caller has reserved the slot.
        """
        cfg = self.config
        start = self._clock()
        conn_properties = None
        landing = None
        try:
            guard = self.connect_guard
            if cfg.connect is not None:
                raw = guard.connect(cfg.connect, timeout)
            else:
                info = cfg.conninfo
                resolved: str | Mapping[str, Any] = info() if callable(info) else info  # type: ignore[assignment]
                kwargs = parse_conninfo(resolved)
                props = kwargs.get("conn_properties")
                conn_properties = props if props is None or isinstance(props, str) \
                    else " ".join(props)
                import pymssql  # the hard dependency, imported when first needed

                endpoints = self.endpoints
                assert endpoints is not None
                raw, landing = guard.connect(lambda: endpoints.connect(kwargs, pymssql.connect),
                                             timeout)
            if cfg.configure is not None:
                try:
                    cfg.configure(raw)
                except BaseException:
                    try:
                        raw.close()
                    except Exception:
                        pass
                    raise
        except Exception as exc:
            fast = _endpoints.circuit_open(exc)   # refused without a login: no attempt to count
            with self._lock:
                if not fast:
                    self._stats.connections_errors += 1
                self.last_connect_error = exc
                self._connect_failing = True
            logger.log(logging.DEBUG if fast else logging.WARNING,
                       "pool %r: connecting failed: %s", self.name, redact(exc))
            raise
        now = self._clock()
        autocommit = getattr(raw, "autocommit_state", None)
        lifetime = cfg.max_lifetime
        expires = _INF if lifetime is None else now + lifetime * (1.0 - 0.05 * cfg.random())
        with self._lock:
            self._seq += 1
            self._ordinal += 1
            rec = ConnectionRecord(raw, self._seq, self._generation, now, expires,
                                   None if autocommit is None else bool(autocommit), os.getpid())
            rec.trusted = self._ordinal
            st = self._stats
            st.connections_num += 1
            st.connections_ms += (now - start) * 1000.0
            if self._connect_failing:
                # Connecting works again (e.g. a circuit's probe got through): callers
                # pausing between connect attempts connect now, not when their backoff
                # ends. Bounded by max_size.
                self._connect_failing = False
                while self._waiters and self._size < self._max_size and not self._closed:
                    self._size += 1
                    self._opening += 1
                    self._waiters.popleft().deliver(_SLOT)
        rec.conn_properties = conn_properties
        rec.landing = landing
        logger.debug("pool %r: opened connection #%d in %.1f ms", self.name, rec.seq,
                     (now - start) * 1000)
        return rec

    # ------------------------------------------------------------------ errors
    def _on_error(self, rec: ConnectionRecord, exc: BaseException) -> None:
        """Called by proxies and cursors with every driver error they see."""
        try:
            dead = is_disconnect(exc)
        except Exception:  # a classifier bug must not hide the user's error
            logger.exception("pool %r: classifying an error failed", self.name)
            return
        if dead:
            if rec.dead is None:
                rec.dead = f"disconnected: {redact(exc)}"
                with self._lock:
                    self._stats.connections_lost += 1
            self._mark_suspects()
        elif _endpoints.is_failover_error(exc):
            logger.info("pool %r: connection #%d saw a failover error (%s); every older "
                        "connection is checked on checkout", self.name, rec.seq, redact(exc))
            self._mark_suspects()

    def _replace(self, conn: PooledConnection, rec: ConnectionRecord,
                 error: BaseException) -> ConnectionRecord | None:
        """``conn``'s first statement found ``rec`` dead (health.may_replay said a replay is
        safe): give ``rec`` back as dead, take a validated replacement within the caller's
        checkout timeout, and point ``conn`` at it. None (``conn`` returned) if none came."""
        timeout = rec.replay_timeout
        rec.replay_timeout = NO_REPLAY     # never again through another cursor of ``rec``
        self._on_error(rec, error)
        if rec.dead is None:               # a classifier that does not call it a disconnect
            rec.dead = f"dead at its first statement: {redact(error)}"
            with self._lock:
                self._stats.connections_lost += 1
        self._mark_suspects()
        self.putconn(conn)
        try:
            fresh = self.getconn(timeout)
        except Exception as exc:
            logger.info("pool %r: no replacement for dead connection #%d (%s); the caller "
                        "sees its error", self.name, rec.seq, exc)
            return None
        new = fresh._rec
        assert new is not None
        fresh._rec = None                  # the caller's proxy takes it over
        new.replay_timeout = NO_REPLAY     # one replay per statement
        conn._rec = new
        conn.raw = new.raw
        with self._lock:
            self._stats.connections_replaced += 1
        logger.info("pool %r: connection #%d was dead at its first statement; replaying it "
                    "on #%d", self.name, rec.seq, new.seq)
        return new

    def _vouch(self, rec: ConnectionRecord, mark: int) -> None:
        """``rec`` passed a check begun when the suspect mark was ``mark``: no longer
        suspect (its bypass window applies again), unless a newer mark came meanwhile."""
        with self._lock:
            if self._suspect_before == mark:
                self._ordinal += 1
                rec.trusted = self._ordinal

    def _mark_suspects(self) -> None:
        """A disconnect was seen: every connection opened (or last checked) before now is
        suspect (checked on its next checkout, bypass window or not). The server may have
        restarted; this makes the pool converge in one pass instead of failing once per
        stale connection. A connection that passes that check is trusted again."""
        with self._lock:
            newer = self._ordinal + 1 > self._suspect_before
            if newer:
                self._suspect_before = self._ordinal + 1
                count = self._size
        if newer:
            logger.info("pool %r: a connection died; the %d open ones are checked on checkout",
                        self.name, count)

    def _orphaned(self, rec: ConnectionRecord) -> None:
        """A proxy was garbage-collected unreturned (from ``__del__``: no locks, no logging)."""
        self._orphans.append(rec)

    def _reap_orphans(self) -> None:
        closing = []
        with self._lock:
            while self._orphans:
                rec = self._orphans.popleft()
                if rec.state is not ConnState.BUSY:
                    continue
                self._stats.connections_leaked += 1
                self._stats.connections_discarded += 1
                if self._busy_recs is not None:
                    self._busy_recs.discard(rec)
                self._drop_locked(rec, busy=True)
                closing.append(rec)
        for rec in closing:
            logger.warning("pool %r: connection #%d was garbage-collected without being "
                           "returned; closing it%s", self.name, rec.seq,
                           f"; checked out at:\n{rec.stack}" if rec.stack else "")
            self._close_record(rec, "leaked")

    # ------------------------------------------------------------------ pool-wide
    def wait(self, timeout: float = 30.0) -> None:
        """Block until ``min_size`` connections are open (opening them here), or raise
        :class:`PoolTimeout` carrying the last connection error."""
        start = self._clock()
        deadline = start + timeout
        backoff = _CONNECT_BACKOFF[0]
        while True:
            error = self._refill()
            with self._lock:
                if self._closed:
                    raise PoolClosed(f"pool {self.name!r} is closed")
                if self._size - self._opening >= self._min_size:
                    return
                now = self._clock()
                if error is not None and not isinstance(error, CircuitOpenError) \
                        and self.connect_guard.give_up(error):
                    raise self._login_refused(error, now - start) from error
                if now >= deadline:
                    self._raise_timeout_locked(now - start, error or self.last_connect_error)
            self.config.sleep(min(backoff, max(deadline - now, 0.0)))
            backoff = min(backoff * 2, _CONNECT_BACKOFF[1])

    def _refill(self) -> BaseException | None:
        """Open connections up to ``min_size``; return the error if one failed."""
        with self._lock:
            missing = self._min_size - self._size
            if self._closed or missing <= 0:
                return None
            self._size += missing
            self._opening += missing
        error: BaseException | None = None
        for _ in range(missing):
            rec: ConnectionRecord | None = None
            if error is None:
                try:
                    rec = self._connect_new()
                except Exception as exc:
                    error = exc
            close = None
            with self._lock:
                self._opening -= 1
                if rec is not None and not self._closed:
                    self._give_locked(rec, self._clock())
                else:
                    self._size -= 1
                    self._slot_freed_locked()
                    close = rec
            if close is not None:
                self._close_record(close, "the pool is closed")
        if error is None:
            logger.debug("pool %r: refilled to %d", self.name, self._min_size)
        return error

    def drain(self) -> None:
        """Retire every current connection: idle ones now, busy ones as they come back.

        New connections are opened as needed (e.g. after a failover or a password change).
        """
        with self._lock:
            self._generation += 1
            idle = list(self._idle)
            self._idle.clear()
            for rec in idle:
                self._drop_locked(rec)
                self._stats.connections_expired += 1
        for rec in idle:
            self._close_record(rec, "drained")
        logger.info("pool %r drained: %d idle closed, busy ones retire on return",
                    self.name, len(idle))
        self._maintenance.wake()

    def check(self) -> int:
        """Check every idle connection now; close the failures. Returns how many failed."""
        with self._lock:
            recs = list(self._idle)
            self._idle.clear()
            for rec in recs:
                rec.state = ConnState.BUSY
                self._nbusy += 1
        failed = 0
        for rec in recs:
            mark = self._suspect_before
            try:
                run_check(self._check, rec.raw)
                ok = True
                self._vouch(rec, mark)
            except Exception as exc:
                ok = False
                failed += 1
                self._close_record(rec, f"its check failed: {redact(exc)}")
            with self._lock:
                self._nbusy -= 1
                self._stats.checks_run += 1
                if ok and not self._closed:
                    now = self._clock()
                    rec.returned_at = now
                    self._give_locked(rec, now)
                    continue
                if ok:
                    rec_to_close = rec
                else:
                    self._stats.checks_failed += 1
                    self._stats.connections_lost += 1
                    rec_to_close = None
                self._drop_locked(rec)
            if rec_to_close is not None:
                self._close_record(rec_to_close, "the pool is closed")
        return failed

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiters get :class:`PoolClosed`, idle connections close now,
        busy ones as they come back; the maintenance thread is joined (up to ``timeout``)."""
        with self._lock:
            already = self._closed
            self._closed = True
            waiters = list(self._waiters)
            self._waiters.clear()
            idle = list(self._idle)
            self._idle.clear()
            for rec in idle:
                self._drop_locked(rec)
            for w in waiters:
                w.deliver(_CLOSED)
        for rec in idle:
            self._close_record(rec, "the pool is closed")
        if self._orphans:
            self._reap_orphans()
        self._maintenance.stop(timeout)
        if not already:
            logger.info("pool %r closed", self.name)

    @property
    def closed(self) -> bool:
        return self._closed

    def run_maintenance(self) -> None:
        """Run one maintenance pass now (what the background thread does every second)."""
        self._maintenance.run_once()

    # ------------------------------------------------------------------ stats
    def get_stats(self) -> dict[str, int]:
        """The documented stats dict (see :mod:`mssql_pool.stats`)."""
        return self._stats_dict(reset=False)

    def pop_stats(self) -> dict[str, int]:
        """Like :meth:`get_stats`, and set the counters back to zero."""
        return self._stats_dict(reset=True)

    def _stats_dict(self, reset: bool) -> dict[str, int]:
        with self._lock:
            out = {
                "pool_min": self._min_size,
                "pool_max": self._max_size,
                "pool_size": self._size,
                "pool_available": len(self._idle),
                "requests_waiting": len(self._waiters),
            }
            out.update(self._stats.snapshot(reset))
        if self.endpoints is not None:
            out.update(self.endpoints.counters(reset))
        else:
            out.update(dict.fromkeys(_endpoints.ENDPOINT_COUNTERS, 0))
        return out

    # ------------------------------------------------------------------ transactions
    def run_transaction(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` as one transaction, retried as a unit
        (see :mod:`mssql_pool.transaction`)."""
        from .transaction import run_transaction

        return run_transaction(self, fn, *args, **kwargs)  # type: ignore[no-any-return,unused-ignore]

    def transactional(self, **opts: Any) -> Any:
        """Decorator form of :meth:`run_transaction` (see :mod:`mssql_pool.transaction`)."""
        from .transaction import transactional

        return transactional(self, **opts)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, ...)`` with retries but no transaction wrapper
        (see :mod:`mssql_pool.transaction`)."""
        from .transaction import run

        return run(self, fn, *args, **kwargs)  # type: ignore[no-any-return,unused-ignore]

    # ------------------------------------------------------------------ misc
    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        closed = " closed" if self._closed else ""
        return (f"<ConnectionPool {self.name!r} idle={len(self._idle)} busy={self._nbusy} "
                f"waiting={len(self._waiters)} size={self._size}/{self._max_size}{closed}>")

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's connections, never touch their sockets."""
        self._lock = threading.Lock()
        breaker = self.connect_guard.breaker
        if breaker is not None:   # a lock another thread of the parent held stays held
            breaker._cond = threading.Condition(threading.Lock())
        _inherited.extend(rec.raw for rec in self._idle)
        self._idle.clear()
        self._waiters.clear()
        self._orphans.clear()
        self._size = self._nbusy   # busy proxies may still come back; they are dropped
        self._opening = 0
        self._generation += 1
        self._pid = os.getpid()
        if self._busy_recs is not None:
            self._busy_recs = set()
        self._maintenance = Maintenance(self)
        if self.config.background and not self._closed:
            self._maintenance.start()


def _after_fork() -> None:
    for pool in list(_pools):
        try:
            pool._after_fork_in_child()
        except Exception:  # pragma: no cover - must never break the child
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
