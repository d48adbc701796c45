"""The background worker: reaping, lifetimes, keepalive, leak warnings, refill.

One named daemon thread per pool (``mssql_pool-<name>-maintenance``) runs
:meth:`Maintenance.run_once` every ``maintenance_interval`` seconds, or sooner when the
pool wakes it (a slot freed below ``min_size``, ``drain()``). A pass:

1. closes connections whose proxies were garbage-collected unreturned (leaks);
2. closes idle connections above ``min_size`` idle for ``max_idle`` seconds;
3. retires idle connections past their jittered ``max_lifetime``, at most
   ``max(1, max_size // 10)`` per pass so a fleet of same-aged connections never all
   reconnect at once (busy ones are never yanked; they retire on return);
4. pings idle connections unused for ``keepalive`` seconds (the ``check``), so
   idle-killing firewalls and Azure's idle timeout never see them idle; failures close;
5. logs a WARNING, once per checkout, for each connection held longer than
   ``leak_timeout``, with the stack where it was checked out;
6. refills to ``min_size``, one connection at a time, never during the pool-wide connect
   backoff (the ``connect_policy``'s pause after a failed connect, shared with callers);
   once connecting has failed for ``reconnect_timeout`` seconds, a ``reconnect_failed``
   event is emitted (once per outage), on time: the thread wakes for it. The
   ``reconnect_failed(pool)`` option is a listener of that event.

Every decision is a method of the pool's :class:`~mssql_pool._state.PoolState`
(``sweep``, ``take_for_ping``, ``pinged``, ``reserve_refill``); this module does the pings
and closes around them, through the pool's :class:`~mssql_pool._connect.Connector`. Idle
connections due for a ping are taken out one at a time, so a hung ping holds one
connection, never the whole idle set. A failing step is logged and the worker carries
on. ``Maintenance.stop()`` (from ``pool.close``) stops and joins the thread.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

from ._dsn import redact
from ._state import Effects
from .connection import ConnectionRecord
from .events import EventKind, error_info
from .health import check_connection

if TYPE_CHECKING:
    from .pool import ConnectionPool

__all__ = ["Maintenance"]

logger = logging.getLogger("mssql_pool.maintenance")


class Maintenance:
    """The maintenance worker of one pool (thread optional: ``run_once`` is the work)."""

    def __init__(self, pool: ConnectionPool) -> None:
        # A weak reference: a pool dropped without close() can still be collected; the
        # thread then ends by itself.
        self._pool_ref = weakref.ref(pool)
        self._name = pool.name
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failing = False
        self._reported = False

    @property
    def _pool(self) -> ConnectionPool:
        pool = self._pool_ref()
        if pool is None:
            raise ReferenceError("the pool is gone")
        return pool

    # -------------------------------------------------------------- thread control
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"mssql_pool-{self._name}-maintenance", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("pool %r: maintenance thread did not stop within %s s",
                               self._name, timeout)

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _run(self) -> None:
        while not self._stopping:
            pool = self._pool_ref()
            if pool is None:
                return
            try:
                self.run_once()
                delay = self.next_delay()
            except Exception:
                logger.exception("pool %r: maintenance pass failed", self._name)
                delay = pool.config.maintenance_interval
            del pool
            self._wake.wait(delay)
            self._wake.clear()

    # -------------------------------------------------------------- the work
    def run_once(self) -> None:
        pool = self._pool
        connector = pool.connector
        state = pool.state
        if connector.orphans:
            connector.reap_orphans()
        if state.closed:
            return
        cfg = pool.config
        now = cfg.clock()
        to_close, to_ping, leaks = state.sweep(
            now, max_idle=cfg.max_idle, keepalive=cfg.keepalive,
            leak_timeout=cfg.leak_timeout, expire_budget=max(1, cfg.max_size // 10))
        connector.apply(Effects(close=to_close))
        for rec in leaks:
            logger.warning("pool %r: connection #%d held for more than %s s (leak_timeout); "
                           "checked out at:\n%s", pool.name, rec.seq, cfg.leak_timeout,
                           rec.stack or "(stack unknown)")
            pool.events.emit(EventKind.LEAK_SUSPECTED, conn_id=rec.seq, spid=rec.spid,
                             duration=now - rec.checkout_at)
        # One at a time: the other idle connections stay available while one is pinged.
        for rec in to_ping:
            if state.take_for_ping(rec):
                self._ping(rec)
        self._refill()

    def _ping(self, rec: ConnectionRecord) -> None:
        pool = self._pool
        state = pool.state
        mark = state.suspect_before
        error: str | None = None
        try:
            check_connection(pool.config.check, rec.raw)
        except Exception as exc:
            error = redact(exc)
            rec.close_code = "keepalive_failed"
            pool.events.emit(EventKind.KEEPALIVE_FAILED, conn_id=rec.seq, spid=rec.spid,
                             error_info=error_info(exc))
        except BaseException:
            rec.close_code = "keepalive_failed"
            pool.events.emit(EventKind.KEEPALIVE_FAILED, conn_id=rec.seq, spid=rec.spid)
            pool.connector.apply(state.pinged(rec, pool.config.clock(), "interrupted",
                                              keepalive=True, mark=mark))
            raise
        if error is None:
            pool.events.emit(EventKind.KEEPALIVE, conn_id=rec.seq, spid=rec.spid)
        pool.connector.apply(state.pinged(rec, pool.config.clock(), error, keepalive=True,
                                          mark=mark))

    def _refill(self) -> None:
        pool = self._pool
        cfg = pool.config
        state = pool.state
        if state.size < cfg.min_size:
            error, _ = pool.connector.refill()
            if error is not None:
                logger.info("pool %r: refill failed: %s", pool.name, redact(error))
        if state.failing_since is None:      # the last connect succeeded (or none failed)
            if self._failing:
                logger.info("pool %r: connecting works again", pool.name)
            self._failing = self._reported = False
            return
        self._failing = True
        overdue = state.reconnect_overdue(cfg.clock(), cfg.reconnect_timeout)
        if overdue is not None and not self._reported:
            self._reported = True
            logger.error("pool %r: could not reconnect for %.1f s: %s", pool.name, overdue,
                         redact(state.last_error) if state.last_error else "(no error)")
            # The reconnect_failed option is a listener of this event (pool.py).
            outage = pool.connector.outage()
            pool.events.emit(EventKind.RECONNECT_FAILED, duration=overdue,
                             attempt=None if outage is None else outage[1],
                             error_info=error_info(state.last_error))

    def next_delay(self) -> float:
        """Seconds until the next pass: the interval, or sooner when a refill may retry
        (the connect backoff ends) or ``reconnect_timeout`` comes due."""
        pool = self._pool
        cfg = pool.config
        state = pool.state
        delay = cfg.maintenance_interval
        now = cfg.clock()
        if state.size < cfg.min_size and not state.closed:
            delay = min(delay, max(state.next_connect_at - now, 0.01))
        since = state.failing_since
        if since is not None and not self._reported:
            delay = min(delay, max(since + cfg.reconnect_timeout - now, 0.01))
        return delay
