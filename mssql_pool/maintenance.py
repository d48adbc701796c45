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
6. refills to ``min_size``. Failures back off exponentially (0.1 s doubling to 30 s,
   with 0-50 % jitter); once the pool has failed to refill for ``reconnect_timeout``
   seconds, ``reconnect_failed(pool)`` is called (once per outage).

Decisions are made under the pool lock; pings and closes happen outside it. A failing
step is logged and the worker carries on. ``Maintenance.stop()`` (from ``pool.close``)
stops and joins the thread.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

from ._dsn import redact
from .connection import ConnectionRecord, ConnState
from .health import run_check

if TYPE_CHECKING:
    from .pool import ConnectionPool

__all__ = ["Maintenance"]

logger = logging.getLogger("mssql_pool.maintenance")

REFILL_BACKOFF = (0.1, 30.0)


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
        self._backoff = REFILL_BACKOFF[0]
        self._next_refill = 0.0
        self._failing_since: float | None = None
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
            cfg = pool.config
            try:
                self.run_once()
            except Exception:
                logger.exception("pool %r: maintenance pass failed", self._name)
            delay = cfg.maintenance_interval
            if self._failing_since is not None:
                delay = min(delay, max(self._next_refill - cfg.clock(), 0.01))
            del pool
            self._wake.wait(delay)
            self._wake.clear()

    # -------------------------------------------------------------- the work
    def run_once(self) -> None:
        pool = self._pool
        if pool._orphans:
            pool._reap_orphans()
        if pool.closed:
            return
        cfg = pool.config
        now = cfg.clock()
        to_close: list[tuple[ConnectionRecord, str]] = []
        to_ping: list[ConnectionRecord] = []
        leaks: list[ConnectionRecord] = []
        with pool._lock:
            st = pool._stats
            idle = pool._idle
            expired_budget = max(1, cfg.max_size // 10)
            keep: list[ConnectionRecord] = []
            # oldest-returned first, so max_idle reaps the coldest connections
            for rec in sorted(idle, key=lambda r: r.returned_at):
                if now >= rec.expires_at and expired_budget > 0:
                    expired_budget -= 1
                    st.connections_expired += 1
                    to_close.append((rec, "past its lifetime"))
                elif (cfg.max_idle is not None and now - rec.returned_at >= cfg.max_idle
                      and pool._size - len(to_close) > cfg.min_size):
                    st.connections_idle_closed += 1
                    to_close.append((rec, f"idle for more than {cfg.max_idle} s"))
                elif (cfg.keepalive is not None
                      and now - max(rec.returned_at, rec.pinged_at) >= cfg.keepalive):
                    to_ping.append(rec)
                else:
                    keep.append(rec)
            if to_close or to_ping:
                # keep LIFO order for the survivors: most recently returned at the right
                idle.clear()
                idle.extend(sorted(keep, key=lambda r: r.returned_at))
                for rec, _ in to_close:
                    pool._drop_locked(rec)
                for rec in to_ping:
                    rec.state = ConnState.BUSY   # out of the idle deque while pinged
            if pool._busy_recs and cfg.leak_timeout is not None:
                for rec in pool._busy_recs:
                    if not rec.leak_warned and now - rec.checkout_at >= cfg.leak_timeout:
                        rec.leak_warned = True
                        leaks.append(rec)
        for rec, reason in to_close:
            pool._close_record(rec, reason)
        for rec in leaks:
            logger.warning("pool %r: connection #%d held for more than %s s (leak_timeout); "
                           "checked out at:\n%s", pool.name, rec.seq, cfg.leak_timeout,
                           rec.stack or "(stack unknown)")
        for rec in to_ping:
            self._ping(rec)
        self._refill(now)

    def _ping(self, rec: ConnectionRecord) -> None:
        pool = self._pool
        error: BaseException | None = None
        try:
            run_check(pool.config.check, rec.raw)
        except Exception as exc:
            error = exc
        now = pool.config.clock()
        with pool._lock:
            pool._stats.keepalives_run += 1
            if error is None and not pool.closed:
                rec.pinged_at = now
                rec.state = ConnState.IDLE
                # back in without touching returned_at (max_idle still counts from use)
                if pool._waiters:
                    pool._give_locked(rec, now)
                else:
                    pool._idle.appendleft(rec)
                return
            if error is not None:
                pool._stats.connections_lost += 1
            pool._drop_locked(rec)
        reason = "the pool is closed" if error is None else f"keepalive failed: {redact(error)}"
        pool._close_record(rec, reason, level=logging.WARNING if error else logging.INFO)

    def _refill(self, now: float) -> None:
        pool = self._pool
        cfg = pool.config
        if pool._size >= cfg.min_size or now < self._next_refill:
            return
        error = pool._refill()
        if error is None:
            if self._failing_since is not None:
                logger.info("pool %r: connecting works again", pool.name)
            self._failing_since = None
            self._reported = False
            self._backoff = REFILL_BACKOFF[0]
            self._next_refill = 0.0
            return
        now = cfg.clock()
        if self._failing_since is None:
            self._failing_since = now
        delay = self._backoff * (1.0 + 0.5 * cfg.random())
        self._backoff = min(self._backoff * 2, REFILL_BACKOFF[1])
        self._next_refill = now + delay
        logger.info("pool %r: refill failed, next attempt in %.2f s: %s", pool.name, delay,
                    redact(error))
        if (not self._reported and now - self._failing_since >= cfg.reconnect_timeout):
            self._reported = True
            logger.error("pool %r: could not reconnect for %.1f s: %s", pool.name,
                         now - self._failing_since, redact(error))
            if cfg.reconnect_failed is not None:
                try:
                    cfg.reconnect_failed(pool)
                except Exception:
                    logger.exception("pool %r: reconnect_failed callback raised", pool.name)
