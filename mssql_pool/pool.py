"""ConnectionPool: the I/O around the decisions of :class:`~mssql_pool._state.PoolState`.

The lifecycle of a connection, with the option that acts at each step:

1. **create** (:mod:`mssql_pool._connect`): resolves ``conninfo`` (a callable is called
   on every connect), opens the driver connection (``pymssql.connect`` or the
   ``connect=`` factory) through the connect guard, runs ``configure``.
2. **check** on checkout (:mod:`mssql_pool.health`): ``check``, ``validate_after``.
3. **use**: the proxy (:mod:`mssql_pool.connection`) tracks what ran.
4. **reset** on return (:mod:`mssql_pool.reset`): ``reset``.
5. **retire / discard**: ``max_lifetime``, ``max_idle``, ``keepalive`` (maintenance),
   dead or unresettable connections, :meth:`ConnectionPool.drain`.

Concurrency. Every decision (who gets which connection, when to open one, what to close,
what to count) is a method of :class:`~mssql_pool._state.PoolState`, taken under its lock
and returning what to do; this module does it after the lock is released: checks, resets,
closes, and connects (each on its own named thread, so the caller that needed one stays in
the queue and takes the first connection that comes, new or returned). Waiting callers
are served first come, first served; idle connections are used last-in first-out.

Fork safety: in a child process (``os.register_at_fork``) every pool forgets the
parent's connections without touching their sockets and starts afresh.
"""

from __future__ import annotations

import logging
import traceback
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from . import endpoints as _endpoints
from ._connect import Connector, inherited
from ._dsn import redact
from ._fork import ForkRegistry
from ._state import (
    REFUSED_CIRCUIT,
    REFUSED_CLOSED,
    REFUSED_FULL,
    REFUSED_LOGIN,
    REFUSED_TIMEOUT,
    Effects,
    PoolState,
    Refuse,
    Take,
    Wait,
    Waiter,
)
from .breaker import ConnectGuard
from .classify import is_disconnect
from .config import Conninfo, PoolConfig, check_timeout, make_config
from .connection import NO_REPLAY, ConnectionRecord, PooledConnection
from .errors import (
    CircuitOpenError,
    NotPooledConnection,
    PoolCircuitOpen,
    PoolClosed,
    PoolError,
    PoolTimeout,
    RedirectError,
    RetryExhausted,
    TooManyRequests,
)
from .events import EventBus, EventKind, Listener, error_info
from .health import check_connection
from .maintenance import Maintenance
from .reset import (
    CALLBACK,
    FULL,
    NO_FULL_RESET,
    NONE,
    ROLLBACK,
    Reset,
    ResetUnsupported,
    full_reset,
    plan,
    rollback_work,
)

__all__ = ["ConnectionPool"]

logger = logging.getLogger("mssql_pool.pool")
T = TypeVar("T")

_pools: ForkRegistry[ConnectionPool] = ForkRegistry()
_CHECKOUT = EventKind.CHECKOUT
_CHECKIN = EventKind.CHECKIN
_CHECK = EventKind.CHECK
_RESET_NAMES = {NONE: "none", ROLLBACK: "rollback", FULL: "full", CALLBACK: "callback"}


class _ReconnectFailedCallback:
    """The ``reconnect_failed`` option, as a listener of ``reconnect_failed`` events:
    ``fn(pool)``, the pool held weakly (a listener thread must not keep it alive)."""

    def __init__(self, pool: ConnectionPool, fn: Callable[[Any], object]) -> None:
        self.pool = weakref.ref(pool)
        self.fn = fn

    def __call__(self, event: Any) -> None:
        pool = self.pool()
        if pool is None:
            return
        try:
            self.fn(pool)
        except Exception:   # logged where the maintenance thread used to call it
            logging.getLogger("mssql_pool.maintenance").exception(
                "pool %r: reconnect_failed callback raised", pool.name)


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
        self.config: PoolConfig = make_config(conninfo=conninfo, connect=connect, **options)
        cfg = self.config
        self.name: str = cfg.name
        self._clock = cfg.clock
        self._check = cfg.check
        self._reset_mode = cfg.reset
        self._always_reset = cfg.reset == "full"
        self._no_full_reset = False   # set when the server lacks sp_reset_connection
        self._track_leaks = cfg.leak_timeout is not None
        #: Every decision of the pool (counts, queue, idle stack, counters).
        self.state = PoolState(
            min_size=cfg.min_size, max_size=cfg.max_size, has_check=cfg.check is not None,
            validate_after=cfg.validate_after, max_waiting=cfg.max_waiting,
            circuit_wait=cfg.circuit_wait, track_busy=self._track_leaks)
        #: The listener registry and dispatcher of this pool's events (events.py).
        self.events: EventBus = EventBus(cfg.name, clock=cfg.clock, listeners=cfg.listeners)
        if cfg.reconnect_failed is not None:
            self.events.add(_ReconnectFailedCallback(self, cfg.reconnect_failed),
                            kinds=[EventKind.RECONNECT_FAILED])
        #: Endpoint choice, failover partners, redirects (None for ``connect=`` pools).
        self.endpoints: _endpoints.EndpointRouter | None = _endpoints.make_endpoints(cfg)
        if self.endpoints is not None:
            self.endpoints.bind_events(self.events)
        #: The connect policy and the pool-wide circuit in front of every login
        #: (options ``connect_policy``, ``circuit_breaker``, ``circuit_wait``).
        #: ``circuit_breaker="auto"`` adds no pool circuit: conninfo pools have endpoint
        #: circuits (``endpoint_breaker=None`` turns circuits off), and a ``connect=``
        #: factory may put its own breaker in front of its logins (a second one would
        #: count every failure twice and keep callers out after the first has closed).
        self.connect_guard: ConnectGuard = ConnectGuard.from_options(
            connect_policy=cfg.connect_policy, circuit_breaker=cfg.circuit_breaker,
            circuit_wait=cfg.circuit_wait, clock=cfg.clock, sleep=cfg.sleep,
            random=cfg.random, name=cfg.name, other_circuits=True)
        self.connect_guard.bind_events(self.events)
        self._take_fast = self.state.take_fast      # the hot path, bound once
        # a checkout without a check: bypassed (the pool has one), or there is none
        self._unchecked = None if cfg.check is None else "skipped"
        self._release = self.state.release
        self._maintenance = Maintenance(self)
        #: Opens and closes this pool's driver connections.
        self.connector = Connector(cfg, self.state, self.connect_guard, self.endpoints,
                                   self._maintenance.wake, self.events)
        _pools.add(self)
        logger.info("pool %r created: %s", self.name, self.config)
        if cfg.background:
            self._maintenance.start()

    # ------------------------------------------------------------------ events
    def add_listener(self, fn: Listener, kinds: Any = None) -> Listener:
        """Call ``fn(event)`` with each :class:`~mssql_pool.events.PoolEvent` of ``kinds``
        (event kinds or their names; None: all). ``fn`` runs on its own named thread,
        never under the pool's lock; see :mod:`mssql_pool.events`. Returns ``fn``."""
        return self.events.add(fn, kinds)

    def remove_listener(self, fn: Listener) -> bool:
        """Stop calling ``fn``; returns whether it was a listener."""
        return self.events.remove(fn)

    @property
    def last_connect_error(self) -> BaseException | None:
        """The most recent connect error (None before any)."""
        return self.state.last_error

    # ------------------------------------------------------------------ checkout
    def getconn(self, timeout: float | None = None) -> PooledConnection:
        """Check a connection out, waiting up to ``timeout`` s (default: the pool's).

        The connection is checked first unless the bypass window applies; one that fails
        is replaced transparently. Raises :class:`PoolTimeout` (also when connecting is
        refused, see the docs), :class:`PoolClosed` or :class:`TooManyRequests`. Give it
        back with :meth:`putconn` or ``conn.close()``.
        """
        if timeout is not None:
            check_timeout("timeout", timeout)
        now = self._clock()
        rec = self._take_fast(now, timeout)    # unchecked: see health.may_replay
        if rec is not None:
            if self._track_leaks:
                self._track_busy(rec)
            if _CHECKOUT in self.events._by_kind:
                self.events.emit(_CHECKOUT, conn_id=rec.seq, spid=rec.spid, duration=0.0,
                                 reason=self._unchecked)
            return PooledConnection(rec, self)
        return self._getconn_slow(now, self.config.timeout if timeout is None else timeout)

    def _getconn_slow(self, start: float, timeout: float) -> PooledConnection:
        """Ask the state, then act: wait, check, or give up. Whatever interrupts the
        caller (``BaseException``) hands back what it held: its place in the queue, a
        connection delivered to it, or the connection it was checking."""
        clock = self._clock
        state = self.state
        connector = self.connector
        if connector.orphans:
            connector.reap_orphans()
        deadline = start + timeout
        result: Take | Wait | Refuse = state.acquire(start, deadline)
        held: Take | Wait | None = None
        try:
            while True:
                if isinstance(result, Wait):
                    held = result    # queued already: a failure to start its connect
                connector.apply(result.effects)   # must take it out of the queue
                if isinstance(result, Wait):
                    waiter = result.waiter
                    now = clock()
                    if not waiter.sleep(result.until - now):
                        now = max(clock(), result.until)   # the sleep ran its full length
                    else:
                        now = clock()
                    result = state.wait_over(waiter, now)
                    held = None
                    continue
                if isinstance(result, Refuse):
                    self.events.emit(EventKind.CHECKOUT_FAILED, reason=result.why,
                                     duration=clock() - start, wait=result.wait)
                    raise self._refusal(result)
                held = result
                rec = result.rec
                if result.check:
                    mark = state.suspect_before
                    try:
                        check_connection(self._check, rec.raw)
                    except Exception as exc:
                        if is_disconnect(exc):
                            self.mark_suspects()
                        rec.close_code = "check_failed"
                        self.events.emit(EventKind.CHECK_FAILED, conn_id=rec.seq, spid=rec.spid,
                                         error_info=error_info(exc))
                        fx = state.checked(rec, clock(), mark, redact(exc), result.waiter)
                        held = None
                        connector.apply(fx)
                        result = state.acquire(clock(), deadline, result.waiter)
                        continue
                    self.events.emit(_CHECK, conn_id=rec.seq, spid=rec.spid)
                    state.checked(rec, clock(), mark, None, result.waiter)
                held = None
                # Handed out without a check: a first statement that finds it dead may be
                # replayed on a replacement within the same timeout (health.may_replay).
                rec.replay_timeout = NO_REPLAY if result.check else timeout
                if self._track_leaks:
                    self._track_busy(rec)
                if _CHECKOUT in self.events._by_kind:
                    queued = result.waiter
                    self.events.emit(_CHECKOUT, conn_id=rec.seq, spid=rec.spid,
                                     duration=clock() - start,
                                     reason="checked" if result.check else
                                     "new" if result.fresh else self._unchecked,
                                     wait=None if queued is None else queued.waited)
                return PooledConnection(rec, self)
        except BaseException:
            if isinstance(held, Wait):
                connector.apply(state.cancel(held.waiter, clock()))
                self._interrupted(start, held.waiter)
            elif isinstance(held, Take):
                held.rec.close_code = "other"
                connector.apply(state.abandon(held.rec, clock(),
                                              "the caller was interrupted during its check",
                                              held.waiter))
                self._interrupted(start, held.waiter)
            raise

    def _interrupted(self, start: float, waiter: Waiter | None) -> None:
        """The ``checkout_failed`` event of a caller interrupted while waiting or checking
        (with the refusal's reason when the pool refused it meanwhile: counted so)."""
        refused = None if waiter is None else waiter.refused
        self.events.emit(EventKind.CHECKOUT_FAILED, reason=refused or "interrupted",
                         duration=self._clock() - start,
                         wait=None if waiter is None else waiter.waited)

    def _refusal(self, refused: Refuse) -> Exception:
        st = self.state
        error = refused.error
        why = refused.why
        waited = refused.waited
        if why == REFUSED_CLOSED:
            return PoolClosed(f"pool {self.name!r} is closed")
        if why == REFUSED_FULL:
            mw = self.config.max_waiting
            return TooManyRequests(
                f"pool {self.name!r}: {mw} callers already waiting (max_waiting={mw}); shed "
                f"load or raise max_waiting/max_size")
        size, waiting = st.size, len(st.waiters)
        if why == REFUSED_CIRCUIT:
            assert isinstance(error, CircuitOpenError)
            exc: PoolTimeout = PoolCircuitOpen(
                f"pool {self.name!r}: no connection open and the circuit is open (next probe "
                f"in {error.retry_in:.2f} s, after this caller's timeout): {redact(error)}",
                waited=waited, pool_size=size, max_size=st.max_size, waiting=waiting,
                last_error=error.last_error or error, retry_at=error.retry_at,
                retry_in=error.retry_in, endpoint=error.endpoint)
        elif why == REFUSED_LOGIN:
            assert error is not None
            if isinstance(error, RedirectError):   # misrouted logins do not heal by waiting
                again = RedirectError(str(error), hops=error.hops)
                again.__cause__ = error.__cause__
                return again
            cause = getattr(error, "last_error", None) or error
            if isinstance(error, RetryExhausted):
                text = (f"pool {self.name!r}: the connect policy gave up ({redact(error)}); "
                        f"last connection error: {redact(cause)}")
            elif self.connect_guard.give_up(error):
                text = (f"pool {self.name!r}: the server refused the login, not retried (check "
                        f"the user name and password, and that the login may use the "
                        f"database): {redact(error)}")
            else:
                text = (f"pool {self.name!r}: connecting failed with an error the connect "
                        f"policy does not retry: {redact(error)}")
            exc = PoolTimeout(text, waited=waited, pool_size=size, max_size=st.max_size,
                              waiting=waiting, last_error=cause)
            exc.__cause__ = cause
            return exc
        else:
            msg = (f"no connection from pool {self.name!r} after {waited:.2f} s "
                   f"(size {size}/{st.max_size}, {waiting} waiting)")
            if error is not None:
                msg += f"; last connection error: {redact(error)}"
            else:
                msg += ("; every connection stayed busy: raise max_size or return "
                        "connections sooner")
            exc = PoolTimeout(msg, waited=waited, pool_size=size, max_size=st.max_size,
                              waiting=waiting, last_error=error)
        if error is not None:
            exc.__cause__ = error
        return exc

    def _track_busy(self, rec: ConnectionRecord) -> None:
        rec.stack = "".join(traceback.format_stack(limit=16)[:-2])
        rec.leak_warned = False

    def connection(self, timeout: float | None = None) -> PooledConnection:
        """Check a connection out for a ``with`` block; it goes back when the block ends.

        ``with pool.connection(timeout=5) as conn: ...``. The connection is taken when
        this is called (the returned proxy is its own context manager).
        """
        return self.getconn(timeout)

    # ------------------------------------------------------------------ checkin
    def putconn(self, conn: PooledConnection) -> None:
        """Give a connection back: reset it as needed, then hand it on or keep it idle.

        Idempotent: a proxy already returned is ignored. Anything that is not a proxy
        lent by this pool raises :class:`PoolError`.
        """
        if not isinstance(conn, PooledConnection):
            raise NotPooledConnection(
                f"putconn() takes a connection that getconn() of pool {self.name!r} "
                f"returned, got {type(conn).__name__}")
        rec = conn.record
        if rec is None:
            return                   # returned already
        if conn.lender is not self:
            raise PoolError(f"{conn!r} does not belong to pool {self.name!r}")
        conn.record = None
        conn.lender = None  # type: ignore[assignment]  # a returned proxy keeps no pool alive
        reason = rec.discard_reason
        done = NONE
        flags = rec.flags
        bus = self.events
        if reason is not None:
            rec.close_code = "dead"
        elif flags or self._always_reset:
            try:
                reason, done = self._reset_for_return(rec, flags)
            except BaseException:
                # Interrupted mid-reset: the session is in an unknown state.
                rec.flags = 0
                rec.close_code = "reset_failed"
                now = self._clock()
                self._checkin_event(rec, now, NONE)
                self.connector.apply(self.state.release(rec, now,
                                                        "interrupted during its reset"))
                raise
        if flags:
            rec.flags = 0
        now = self._clock()
        if _CHECKIN in bus._by_kind:
            # before the state can hand it to anyone: a connection's events stay in order
            self._checkin_event(rec, now, done)
        fx = self._release(rec, now, reason, done)
        if fx is not None:
            self.connector.apply(fx)

    def _checkin_event(self, rec: ConnectionRecord, now: float, done: Reset) -> None:
        """The ``checkin`` of every return: held how long, the reset it needed, and why
        it is discarded (None: it may be reused)."""
        code = rec.close_code
        if code == "dead":
            code = "lost" if rec.lost else "invalidated"
        self.events.emit(_CHECKIN, conn_id=rec.seq, spid=rec.spid,
                         duration=now - rec.checkout_at, reset=_RESET_NAMES.get(done, "none"),
                         reason=code)

    def _reset_for_return(self, rec: ConnectionRecord, flags: int) -> tuple[str | None, Reset]:
        """The reset a returned connection needs, run: (why to discard it or None, the
        reset done). A reset round trip is a ``reset`` event."""
        decision = plan(flags, self._reset_mode)
        if isinstance(decision, str) or (decision == FULL and self._no_full_reset):
            rec.close_code = "reset_failed"
            return (decision if isinstance(decision, str) else NO_FULL_RESET), NONE
        if decision == NONE:
            return None, NONE
        begun = self._clock()
        try:
            self._do_reset(rec, decision)
        except ResetUnsupported:
            self._found_no_full_reset()
            rec.close_code = "reset_failed"
            return NO_FULL_RESET, NONE
        except Exception as exc:
            self.report_error(rec, exc)
            rec.close_code = "reset_failed"
            self.events.emit(EventKind.RESET, conn_id=rec.seq, spid=rec.spid,
                             reset=_RESET_NAMES[decision], error_info=error_info(exc),
                             duration=self._clock() - begun)
            return f"its reset failed: {redact(exc)}", NONE
        self.events.emit(EventKind.RESET, conn_id=rec.seq, spid=rec.spid,
                         reset=_RESET_NAMES[decision], duration=self._clock() - begun)
        return None, decision

    def _found_no_full_reset(self) -> None:
        """The server has no sp_reset_connection: found out once, said once."""
        if not self._no_full_reset:
            self._no_full_reset = True
            logger.info("pool %r: the server has no sp_reset_connection (Babelfish?): "
                        "connections whose session state changed are closed instead of "
                        "reset", self.name)

    def _do_reset(self, rec: ConnectionRecord, decision: Reset) -> None:
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

    # ------------------------------------------------------------------ errors
    def report_error(self, rec: ConnectionRecord, exc: BaseException) -> None:
        """Called by proxies and cursors with every driver error they see."""
        try:
            dead = is_disconnect(exc)
        except Exception:  # a classifier bug must not hide the user's error
            logger.exception("pool %r: classifying an error failed", self.name)
            return
        if dead:
            if rec.discard_reason is None:
                rec.discard_reason = f"disconnected: {redact(exc)}"
                rec.lost = True
                self.state.count("connections_lost")
            self.mark_suspects()
        elif _endpoints.is_failover_error(exc):
            logger.info("pool %r: connection #%d saw a failover error (%s); every older "
                        "connection is checked on checkout", self.name, rec.seq, redact(exc))
            self.mark_suspects()

    def replace_dead(self, conn: PooledConnection, rec: ConnectionRecord,
                     error: BaseException) -> ConnectionRecord | None:
        """``conn``'s first statement found ``rec`` dead (health.may_replay said a replay is
        safe): give ``rec`` back as dead, take a validated replacement within the caller's
        checkout timeout, and point ``conn`` at it. None (``conn`` returned) if none came."""
        timeout = rec.replay_timeout
        rec.replay_timeout = NO_REPLAY     # never again through another cursor of ``rec``
        self.report_error(rec, error)
        if rec.discard_reason is None:   # a classifier that does not call it a disconnect
            rec.discard_reason = f"dead at its first statement: {redact(error)}"
            rec.lost = True
            self.state.count("connections_lost")
        self.mark_suspects()
        self.putconn(conn)
        try:
            fresh = self.getconn(timeout)
        except Exception as exc:
            logger.info("pool %r: no replacement for dead connection #%d (%s); the caller "
                        "sees its error", self.name, rec.seq, exc)
            return None
        new = conn.take_over(fresh)
        new.replay_timeout = NO_REPLAY     # one replay per statement
        self.state.count("connections_replaced")
        self.events.emit(EventKind.REPLACED, conn_id=new.seq, spid=new.spid,
                         error_info=error_info(error))
        logger.info("pool %r: connection #%d was dead at its first statement; replaying it "
                    "on #%d", self.name, rec.seq, new.seq)
        return new

    def mark_suspects(self) -> None:
        """A disconnect was seen: every connection opened (or last checked) before now is
        suspect (checked on its next checkout, bypass window or not). The server may have
        restarted; this makes the pool converge in one pass instead of failing once per
        stale connection. A connection that passes that check is trusted again."""
        count = self.state.mark_suspects()
        if count is not None:
            logger.info("pool %r: a connection died; the %d open ones are checked on checkout",
                        self.name, count)

    def report_orphan(self, rec: ConnectionRecord) -> None:
        """A proxy was garbage-collected unreturned (from ``__del__``: no locks, no logging)."""
        self.connector.orphans.append(rec)

    # ------------------------------------------------------------------ pool-wide
    def wait(self, timeout: float = 30.0) -> None:
        """Block until ``min_size`` connections are open (opening them here), or raise
        :class:`PoolTimeout` carrying the last connection error."""
        start = self._clock()
        deadline = start + timeout
        state = self.state
        while True:
            error, give_up = self.connector.refill()
            now = self._clock()
            if state.closed:
                raise PoolClosed(f"pool {self.name!r} is closed")
            if state.n_open >= state.min_size:
                return
            if give_up is not None:
                raise self._refusal(Refuse(REFUSED_LOGIN, give_up, now - start, Effects()))
            if now >= deadline:
                raise self._refusal(Refuse(REFUSED_TIMEOUT, error or state.last_error, now - start,
                                           Effects()))
            pause = state.next_connect_at - now
            self.config.sleep(min(max(pause, 0.01), max(deadline - now, 0.0)))

    def drain(self) -> None:
        """Retire every current connection: idle ones now, busy ones as they come back.

        New connections are opened as needed (e.g. after a failover or a password change).
        """
        fx = self.state.drain(self._clock())
        self.connector.apply(fx)
        logger.info("pool %r drained: %d idle closed, busy ones retire on return",
                    self.name, len(fx.close))
        self._maintenance.wake()

    def check(self) -> int:
        """Check every idle connection now, one at a time (the others stay available);
        close the failures. Returns how many failed."""
        failed = 0
        state = self.state
        for rec in state.idle_records():
            if not state.take_for_ping(rec):
                continue
            mark = state.suspect_before
            error: str | None = None
            try:
                check_connection(self._check, rec.raw)
            except Exception as exc:
                failed += 1
                error = redact(exc)
                rec.close_code = "check_failed"
                self.events.emit(EventKind.CHECK_FAILED, conn_id=rec.seq, spid=rec.spid,
                                 error_info=error_info(exc))
                if is_disconnect(exc):
                    self.mark_suspects()
            except BaseException:
                rec.close_code = "check_failed"
                self.events.emit(EventKind.CHECK_FAILED, conn_id=rec.seq, spid=rec.spid)
                self.connector.apply(state.pinged(rec, self._clock(), "interrupted",
                                                  keepalive=False, mark=mark))
                raise
            if error is None:
                self.events.emit(_CHECK, conn_id=rec.seq, spid=rec.spid)
            self.connector.apply(state.pinged(rec, self._clock(), error, keepalive=False,
                                              mark=mark))
        return failed

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiters get :class:`PoolClosed`, idle connections close now,
        busy ones as they come back; the maintenance thread and connects in flight are
        joined (up to ``timeout``)."""
        was_open, fx = self.state.close(self._clock())
        self.connector.apply(fx)
        if self.connector.orphans:
            self.connector.reap_orphans()
        self._maintenance.stop(timeout)
        self.connector.join(timeout)
        self.connector.abort_outage()
        # Delivers what is queued, joins the listener threads; later events (busy
        # connections coming back) reach listeners on the returning thread.
        self.events.close(timeout)
        if was_open:
            logger.info("pool %r closed", self.name)

    @property
    def closed(self) -> bool:
        return self.state.closed

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
        out = self.state.snapshot(reset)
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
        idle, busy, waiting, size = self.state.counts()
        closed = " closed" if self.state.closed else ""
        return (f"<ConnectionPool {self.name!r} idle={idle} busy={busy} "
                f"waiting={waiting} size={size}/{self.state.max_size}{closed}>")

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's connections, never touch their sockets."""
        breaker = self.connect_guard.breaker
        if breaker is not None:   # a lock another thread of the parent held stays held
            breaker.after_fork()
        inherited.extend(rec.raw for rec in self.state.forget_after_fork())
        self.connector.orphans.clear()
        self._maintenance = Maintenance(self)
        self.connector = Connector(self.config, self.state, self.connect_guard,
                                   self.endpoints, self._maintenance.wake, self.events)
        if self.config.background and not self.state.closed:
            self._maintenance.start()
