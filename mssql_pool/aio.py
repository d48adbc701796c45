"""asyncio: :class:`AsyncConnectionPool`, its connection and cursor, and async units of work.

The async pool is a thin layer over a :class:`~mssql_pool.ConnectionPool` it owns (its
``sync_pool``): the same options, checks, resets, maintenance, stats, endpoints and
circuits, because they are the same code. What the layer adds:

* **A FIFO queue of asyncio futures in front of the pool.** At most ``max_size`` tasks
  hold a *permit*; a task that gets one asks the sync pool for a connection in a worker
  thread, so the sync pool never has more callers than connections it may open and its
  own queue stays (almost) empty. A permit is handed from a returning task straight to
  the oldest waiting one (nobody barges in), and ``timeout=`` is one deadline on the
  event loop's clock for the wait in the queue and the checkout in the thread together.
* **Worker threads for everything that may block.** pymssql releases the GIL around
  network calls, so each round trip (checkout with its check, a statement, a fetch, the
  reset on return, ``check``, ``drain``) runs in a bounded pool of named daemon threads
  owned by the pool (``max_size + 2`` of them, started on demand) and the event loop
  only awaits its future. ``close()`` stops and joins them.
* **Cancellation that leaves nothing behind.** A task cancelled while its statement
  runs asks the server to cancel the statement (pymssql's ``cancel()``, sent from a
  separate thread) and the connection goes back only once the driver call has ended; the
  pool's reset on return then rolls back whatever the transaction held. A checkout whose
  task was cancelled (or timed out) while the worker thread was still getting the
  connection is given back by that thread: nothing is ever handed to nobody, and the
  permit comes back with it. A cancelled :func:`run_transaction` discards its connection
  (the server rolls the transaction back when the session ends) and never reports
  success.

A connection serves one operation at a time: awaiting two calls on the same connection
concurrently raises :class:`~mssql_pool.errors.PoolError` (as asyncpg does).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar, cast

from ._dsn import redact
from .classify import Classifier
from .config import Conninfo
from .connection import PooledConnection, PooledCursor
from .errors import (
    ConfigError,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyRequests,
    UnbalancedTransactionError,
)
from .events import EventBus, EventKind, Listener
from .pool import ConnectionPool
from .retry import RetryPolicy, is_testing
from .transaction import (
    _after_verify,
    _before_verify,
    _begin,
    _check_unit,
    _commit,
    _CommitOutcome,
    _failed,
    _isolation_sql,
    _Landed,
    _retrying,
    _rollback,
    _start,
    _unit_error_info,
    _verify_failed,
)

__all__ = ["AsyncConnection", "AsyncConnectionPool", "AsyncCursor", "run_transaction"]

logger = logging.getLogger("mssql_pool.aio")
T = TypeVar("T")

_FETCH_BATCH = 100     # rows per worker-thread hop in ``async for row in cursor``
_PREFETCH = 256        # rows read with ``execute`` in the same hop


def _execute_prefetch(cur: PooledCursor, operation: Any, params: Any) -> tuple[list[Any], bool]:
    """In a worker thread: run, then read the first rows (at most _PREFETCH)."""
    cur.execute(operation, params)
    if cur.description is None:
        return [], True       # no rows: fetches go to the driver, which says so
    rows = list(cur.fetchmany(_PREFETCH))
    return rows, len(rows) == _PREFETCH


# --------------------------------------------------------------------------- worker threads

class _Workers:
    """A small executor of named daemon threads, started on demand up to ``size``.

    ``concurrent.futures.ThreadPoolExecutor`` would do, but its threads are not daemonic
    (a driver call stuck on a dead socket would hold up interpreter exit) and it cannot
    be joined with a timeout.
    """

    def __init__(self, name: str, size: int) -> None:
        self._name = name
        self._size = size
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any],
                                             tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        fut: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise PoolClosed(f"{self._name}: the pool is closed")
            self._queue.put((fut, fn, args))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._size:
                t = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}",
                                     daemon=True)
                self._threads.append(t)
                t.start()
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args = item
            if fut.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
                    del result
            del item, fut, fn, args
            self._idle.release()

    @property
    def threads(self) -> int:
        return len(self._threads)

    def shutdown(self, timeout: float) -> bool:
        """Stop accepting work, let queued work finish, join the threads (up to
        ``timeout`` in all). True when every thread ended."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(deadline - time.monotonic(), 0.0))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            logger.warning("%s: %d worker thread(s) still busy after %.1f s: %s", self._name,
                           len(alive), timeout, ", ".join(alive))
        return not alive


# --------------------------------------------------------------------------- the FIFO gate

class _GateTimeout(Exception):
    pass


class _Gate:
    """``max_size`` permits handed out first come, first served (event-loop side only).

    A waiter's future gets ``None`` (a permit: check a connection out yourself) or, from a
    returning task that checked one out for it in the same worker hop (:meth:`take`), a
    connection that comes with the permit.
    """

    def __init__(self, size: int, max_waiting: int) -> None:
        self.free = size
        self.max_waiting = max_waiting
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.deadlines: dict[asyncio.Future[Any], float] = {}
        self.orphan: Callable[[Any], None] = lambda proxy: None   # set by the pool
        self.events: EventBus | None = None                        # set by the pool
        self.queued = 0          # acquisitions that had to wait
        self.wait_ms = 0.0
        self.timeouts = 0
        self.errors = 0
        self.cancelled = 0
        self.closed = False

    async def acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Any:
        """A permit (None) or a connection delivered with it."""
        if self.closed:
            self.errors += 1
            self._failed("closed", 0.0, None)
            raise PoolClosed("the pool is closed")
        if self.free and not self.waiters:
            self.free -= 1
            return None
        if self.max_waiting and len(self.waiters) >= self.max_waiting:
            self.errors += 1
            self._failed("full", 0.0, None)
            raise TooManyRequests(
                f"{len(self.waiters)} tasks already waiting (max_waiting="
                f"{self.max_waiting}); shed load or raise max_waiting/max_size")
        start = loop.time()
        if deadline <= start:
            self.timeouts += 1
            self._failed("timeout", 0.0, None)
            raise _GateTimeout()
        fut: asyncio.Future[Any] = loop.create_future()
        self.waiters.append(fut)
        self.deadlines[fut] = deadline
        self.queued += 1
        timer = loop.call_at(deadline, self._expire, fut)
        outcome: str | None = "cancelled"
        try:
            got = await fut
            outcome = None
            return got
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # The permit arrived with the cancellation: pass it on (with the
                # connection that came with it, if any).
                got = fut.result()
                if got is None:
                    self.release()
                else:
                    self.orphan(got)
            else:
                self._forget(fut)
            self.cancelled += 1
            raise
        except _GateTimeout:
            self.timeouts += 1
            outcome = "timeout"
            raise
        except PoolClosed:
            self.errors += 1
            outcome = "closed"
            raise
        finally:
            timer.cancel()
            self.deadlines.pop(fut, None)
            waited = loop.time() - start
            self.wait_ms += waited * 1000.0
            if outcome is None:
                if self.events is not None:
                    self.events.emit(EventKind.QUEUE_WAIT, wait=waited)
            else:
                self._failed(outcome, waited, waited)

    def _failed(self, why: str, took: float, wait: float | None) -> None:
        """A ``checkout_failed`` event for a request that ended in the queue."""
        if self.events is not None:
            self.events.emit(EventKind.CHECKOUT_FAILED, reason=why, duration=took, wait=wait)

    def _expire(self, fut: asyncio.Future[Any]) -> None:
        if not fut.done():
            self._forget(fut)
            fut.set_exception(_GateTimeout())

    def _forget(self, fut: asyncio.Future[Any]) -> None:
        try:
            self.waiters.remove(fut)
        except ValueError:
            pass

    def take(self, now: float) -> tuple[asyncio.Future[Any], float] | None:
        """The oldest waiter with time left, out of the queue: the caller's permit is now
        its, and the caller must resolve its future (or pass the permit on)."""
        while self.waiters:
            fut = self.waiters[0]
            if fut.done():
                self.waiters.popleft()
                continue
            deadline = self.deadlines.get(fut, now)
            if deadline - now < 0.001:
                return None        # about to time out: leave it to its timer
            self.waiters.popleft()
            return fut, deadline
        return None

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1

    def close(self) -> None:
        self.closed = True
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(PoolClosed("the pool closed while waiting"))


class _Checkout:
    """The hand-over between a checkout's worker thread and its task.

    Whoever comes second decides: a thread that finds the task gone gives the connection
    back itself; a task that gives up after the thread delivered owns the connection.
    """

    __slots__ = ("lock", "abandoned", "delivered")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.delivered = False


# --------------------------------------------------------------------------- cursor

class AsyncCursor:
    """A pooled cursor whose round trips are awaited (``await cur.execute(...)``).

    ``execute`` reads up to 256 rows of the first result set in the same worker-thread
    hop; ``fetch*`` serve them without another hop and go back to the driver only for
    the rest. Attributes that do no I/O (``description``, ``rowcount``...) are read
    straight from the driver's cursor. ``async for row in cur`` fetches in batches.
    """

    __slots__ = ("_cur", "_conn", "_buf", "_more", "arraysize")

    def __init__(self, cur: PooledCursor, conn: AsyncConnection) -> None:
        self._cur = cur
        self._conn = conn
        self._buf: deque[Any] = deque()
        self._more = False         # rows may remain in the driver beyond _buf
        self.arraysize = 1

    @property
    def connection(self) -> AsyncConnection:
        return self._conn

    @property
    def sync_cursor(self) -> PooledCursor:
        """The pool's (blocking) cursor under this one, for :meth:`AsyncConnection.run_sync`."""
        return self._cur

    async def execute(self, operation: Any, params: Any = None) -> None:
        self._buf.clear()
        self._more = False
        rows, self._more = await self._conn._run(_execute_prefetch, self._cur, operation,
                                                 params)
        self._buf.extend(rows)

    async def executemany(self, operation: Any, seq_of_params: Sequence[Any]) -> Any:
        self._buf.clear()
        self._more = True
        return await self._conn._run(self._cur.executemany, operation, seq_of_params)

    async def callproc(self, procname: str, parameters: Sequence[Any] = ()) -> Any:
        self._buf.clear()
        self._more = True
        return await self._conn._run(self._cur.callproc, procname, parameters)

    async def fetchone(self) -> Any:
        if self._buf:
            return self._buf.popleft()
        if not self._more:
            return None
        row = await self._conn._run(self._cur.fetchone)
        self._more = row is not None
        return row

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        n = size or self.arraysize
        buf = self._buf
        rows = [buf.popleft() for _ in range(min(n, len(buf)))]
        if len(rows) < n and self._more:
            more = list(await self._conn._run(self._cur.fetchmany, n - len(rows)))
            self._more = len(more) == n - len(rows)
            rows.extend(more)
        return rows

    async def fetchall(self) -> list[Any]:
        rows = list(self._buf)
        self._buf.clear()
        if self._more:
            rows.extend(await self._conn._run(self._cur.fetchall))
            self._more = False
        return rows

    async def nextset(self) -> Any:
        self._buf.clear()
        self._more = True
        return await self._conn._run(self._cur.nextset)

    async def close(self) -> None:
        if not self._conn.closed:
            await self._conn._run(self._cur.close)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._rows()

    async def _rows(self) -> AsyncIterator[Any]:
        while True:
            rows = await self.fetchmany(_FETCH_BATCH)
            if not rows:
                return
            for row in rows:
                yield row

    async def __aenter__(self) -> AsyncCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    def __repr__(self) -> str:
        return f"<AsyncCursor on {self._conn!r}>"


# --------------------------------------------------------------------------- connection

class AsyncConnection:
    """What :meth:`AsyncConnectionPool.getconn` / ``connection()`` hand out.

    ``cursor()`` is immediate; ``commit()``, ``rollback()``, ``autocommit(status)`` and
    every cursor call that talks to the server are awaited. ``await conn.close()`` (or
    leaving ``async with``) gives the connection back. ``run_sync(fn, *args)`` runs
    ``fn(sync_conn, *args)`` in a worker thread on the pool's blocking proxy
    (:class:`~mssql_pool.connection.PooledConnection`), for code written for the sync pool.
    """

    __slots__ = ("_proxy", "_pool", "_op", "_returning", "_interrupted", "__weakref__")

    def __init__(self, proxy: PooledConnection, pool: AsyncConnectionPool) -> None:
        self._proxy: PooledConnection | None = proxy
        self._pool = pool
        self._op: Future[Any] | None = None            # the driver call in flight
        self._returning: asyncio.Task[None] | None = None
        self._interrupted = False

    # -- running driver calls --------------------------------------------------------
    def _live(self) -> PooledConnection:
        proxy = self._proxy
        if proxy is None or self._returning is not None:
            raise PoolError("this connection was returned to the pool; get a new one")
        return proxy

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self._live()
        op = self._op
        if op is not None and not op.done():
            raise PoolError("another operation is still running on this connection: await "
                            "each call before starting the next (one connection, one "
                            "operation at a time)")
        cf = self._pool._workers.submit(fn, *args)
        self._op = cf
        try:
            return await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            if not cf.cancel():        # already running: cancel it on the server
                self._pool._interrupt(self, cf)
            raise

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(sync_conn, *args, **kwargs)`` in a worker thread (one blocking unit, one
        hop); cancelling the awaiting task cancels its statement on the server."""
        proxy = self._live()
        if kwargs:
            return await self._run(lambda: fn(proxy, *args, **kwargs))
        return await self._run(fn, proxy, *args)

    # -- DB-API ----------------------------------------------------------------------
    def cursor(self, *args: Any, **kwargs: Any) -> AsyncCursor:
        """A cursor (no round trip: pymssql opens cursors locally)."""
        return AsyncCursor(self._live().cursor(*args, **kwargs), self)

    async def commit(self) -> None:
        await self._run(self._live().commit)

    async def rollback(self) -> None:
        await self._run(self._live().rollback)

    async def autocommit(self, status: bool) -> None:
        await self._run(self._live().autocommit, status)

    @property
    def autocommit_state(self) -> bool:
        return self._live().autocommit_state

    async def close(self) -> None:
        """Give the connection back to the pool. Calling it again does nothing."""
        await self._pool.putconn(self)

    # -- pool-specific -----------------------------------------------------------------
    @property
    def sync_connection(self) -> PooledConnection:
        """The pool's blocking proxy. Calling it from the event loop blocks the loop."""
        return self._live()

    @property
    def raw(self) -> Any:
        return self._live().raw

    def invalidate(self, reason: str | None = None) -> None:
        """Mark the connection dead: it is closed, not reused, when it comes back."""
        proxy = self._proxy
        if proxy is not None:
            proxy.invalidate(reason)

    @property
    def invalidated(self) -> bool:
        proxy = self._proxy
        return proxy is not None and proxy.invalidated

    @property
    def closed(self) -> bool:
        return self._proxy is None or self._returning is not None

    @property
    def info(self) -> dict[str, Any]:
        return self._live().info

    @property
    def pool(self) -> AsyncConnectionPool:
        return self._pool

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pool.putconn(self)

    def __del__(self) -> None:
        if self._proxy is not None and self._returning is None:
            # Never returned: the proxy's own finaliser hands the connection to the sync
            # pool as leaked; the permit must come back too (on the loop's thread).
            self._proxy = None
            self._pool._release_threadsafe()

    def __repr__(self) -> str:
        proxy = self._proxy
        state = "returned" if proxy is None or self._returning is not None else repr(proxy)
        return f"<AsyncConnection {state}>"


class _ConnectionContext:
    """``async with pool.connection(timeout) as conn``."""

    __slots__ = ("_pool", "_timeout", "_conn")

    def __init__(self, pool: AsyncConnectionPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: AsyncConnection | None = None

    async def __aenter__(self) -> AsyncConnection:
        self._conn = await self._pool.getconn(self._timeout)
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.putconn(conn)


# --------------------------------------------------------------------------- the pool

class AsyncConnectionPool:
    """An asyncio pool of SQL Server connections, over a :class:`ConnectionPool`.

    ``AsyncConnectionPool(conninfo, *, connect=None, cancel_timeout=5.0, **options)``:
    ``conninfo``, ``connect`` and every option are those of
    :class:`~mssql_pool.ConnectionPool` (validated by it). ``cancel_timeout`` is how long
    the return of a connection whose task was cancelled mid-statement waits for the
    driver call to end after the server was asked to cancel it; past it the connection
    is discarded when the call ends (a query ``timeout`` in ``conninfo`` bounds that).

    The pool is usable from one event loop (the first that uses it).
    """

    def __init__(self, conninfo: Conninfo = None, *, connect: Callable[[], Any] | None = None,
                 cancel_timeout: float = 5.0, **options: Any) -> None:
        if isinstance(cancel_timeout, bool) or not isinstance(cancel_timeout, (int, float)) \
                or not cancel_timeout > 0:
            raise ConfigError("cancel_timeout", f"must be a number > 0, got {cancel_timeout!r}")
        self.cancel_timeout = float(cancel_timeout)
        #: The blocking pool underneath: its config, stats, endpoints, connect guard.
        self.sync_pool = ConnectionPool(conninfo, connect=connect, **options)
        cfg = self.sync_pool.config
        self.config = cfg
        self.name: str = cfg.name
        self._gate = _Gate(cfg.max_size, cfg.max_waiting)
        self._gate.orphan = self._orphan
        self._gate.events = self.sync_pool.events
        self._workers = _Workers(f"mssql_pool-aio-{cfg.name}", cfg.max_size + 2)
        self._canceller = _Workers(f"mssql_pool-aio-{cfg.name}-cancel", 1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._returns: set[asyncio.Task[None]] = set()
        self._closed = False
        self._statements_cancelled = 0

    # ------------------------------------------------------------------ helpers
    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise PoolError(f"pool {self.name!r} is bound to another event loop; create one "
                            "pool per loop")
        return loop

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._workers.submit(fn, *args))

    def _release_threadsafe(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._gate.release)
        except RuntimeError:   # the loop closed meanwhile: nobody is left to wait
            pass

    def _timeout_error(self, waited: float) -> PoolTimeout:
        s = self.sync_pool.get_stats()
        error = self.sync_pool.last_connect_error
        msg = (f"no connection from pool {self.name!r} after {waited:.2f} s "
               f"(size {s['pool_size']}/{s['pool_max']}, {len(self._gate.waiters)} waiting)")
        msg += (f"; last connection error: {redact(error)}" if error is not None else
                "; every connection stayed busy: raise max_size or return connections sooner")
        return PoolTimeout(msg, waited=waited, pool_size=s["pool_size"], max_size=s["pool_max"],
                           waiting=len(self._gate.waiters), last_error=error)

    # ------------------------------------------------------------------ checkout
    async def getconn(self, timeout: float | None = None) -> AsyncConnection:
        """Check a connection out, waiting up to ``timeout`` s (default: the pool's).

        Raises :class:`PoolTimeout`, :class:`PoolClosed` or :class:`TooManyRequests`.
        Give it back with :meth:`putconn` or ``await conn.close()``.
        """
        loop = self._bind_loop()
        if self._closed:
            self._gate.errors += 1
            self._gate._failed("closed", 0.0, None)
            raise PoolClosed(f"pool {self.name!r} is closed")
        limit = self.config.timeout if timeout is None else timeout
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
            raise ConfigError("timeout", f"must be a number >= 0, got {timeout!r}")
        start = loop.time()
        deadline = start + limit
        try:
            got = await self._gate.acquire(loop, deadline)
        except _GateTimeout:
            raise self._timeout_error(loop.time() - start) from None
        except PoolClosed:
            raise PoolClosed(f"pool {self.name!r} closed while waiting") from None
        if got is not None:        # checked out for us by the task that returned it
            return AsyncConnection(got, self)
        remaining = deadline - loop.time()
        if remaining <= 0:
            self._gate.release()
            self._gate.timeouts += 1
            self._gate._failed("timeout", loop.time() - start, None)
            raise self._timeout_error(loop.time() - start)
        co = _Checkout()
        try:
            cf = self._workers.submit(self._checkout_in_thread, co, remaining)
        except BaseException:
            self._gate.release()
            raise
        wrapped = asyncio.wrap_future(cf)
        wrapped.add_done_callback(_retrieve)
        try:
            done, _ = await asyncio.wait((wrapped,), timeout=remaining)
        except asyncio.CancelledError:
            self._gate.cancelled += 1
            self._gate._failed("cancelled", loop.time() - start, None)
            self._abandon(co, cf)
            raise
        if not done:
            self._abandon(co, cf)
            self._gate.timeouts += 1
            self._gate._failed("timeout", loop.time() - start, None)
            raise self._timeout_error(loop.time() - start)
        try:
            proxy = wrapped.result()
        except BaseException:
            self._gate.release()
            raise
        assert proxy is not None
        return AsyncConnection(proxy, self)

    def _checkout_in_thread(self, co: _Checkout, timeout: float) -> PooledConnection | None:
        try:
            proxy = self.sync_pool.getconn(timeout)
        except BaseException:
            with co.lock:
                gone = co.abandoned
                co.delivered = not gone     # the task (or its _abandon) releases the permit
            if gone:
                self._release_threadsafe()
            raise
        with co.lock:
            if not co.abandoned:
                co.delivered = True
                return proxy
        # The task timed out or was cancelled meanwhile: straight back, permit too.
        try:
            self.sync_pool.putconn(proxy)
        finally:
            self._release_threadsafe()
        return None

    def _abandon(self, co: _Checkout, cf: Future[PooledConnection | None]) -> None:
        with co.lock:
            if not co.delivered:
                co.abandoned = True     # the thread gives it back when it gets it
                return
        # Delivered just now: the connection is ours to give back (in a worker: the
        # return may run a reset).
        self._workers.submit(self._give_back_checkout, cf)

    def _give_back_checkout(self, cf: Future[PooledConnection | None]) -> None:
        try:
            proxy = cf.result()      # raises if the checkout failed: the permit still returns
            if proxy is not None:
                self.sync_pool.putconn(proxy)
        finally:
            self._release_threadsafe()

    def connection(self, timeout: float | None = None) -> _ConnectionContext:
        """``async with pool.connection(timeout=5) as conn``: checked out on entry, given
        back (reset as needed) on exit."""
        return _ConnectionContext(self, timeout)

    # ------------------------------------------------------------------ checkin
    async def putconn(self, conn: AsyncConnection) -> None:
        """Give a connection back (idempotent). The return runs as a task of the pool, so
        it completes even if the awaiting task is cancelled again."""
        if conn._pool is not self:
            raise PoolError(f"{conn!r} does not belong to pool {self.name!r}")
        task = conn._returning
        if task is None:
            if conn._proxy is None:
                return
            self._bind_loop()
            task = asyncio.get_running_loop().create_task(self._give_back(conn))
            conn._returning = task
            self._returns.add(task)
            task.add_done_callback(self._returns.discard)
        await asyncio.shield(task)

    async def _give_back(self, conn: AsyncConnection) -> None:
        proxy = conn._proxy
        assert proxy is not None
        try:
            op = conn._op
            if op is not None and not op.done():
                # A cancelled task's statement: the server was asked to cancel it; the
                # connection goes back only when the driver call has ended.
                ended = asyncio.wrap_future(op)
                ended.add_done_callback(_retrieve)
                done, _ = await asyncio.wait((ended,), timeout=self.cancel_timeout)
                if not done:
                    logger.warning("pool %r: a cancelled statement did not end within %.1f s; "
                                   "its connection is discarded when it does", self.name,
                                   self.cancel_timeout)
                    proxy.invalidate("a cancelled statement did not end in time")
                    await asyncio.wait((ended,))
            if conn._interrupted and proxy.raw is not None and not _can_cancel(proxy.raw):
                proxy.invalidate("interrupted mid-statement (the driver cannot cancel)")
        except BaseException:
            conn._proxy = None
            self._gate.release()
            raise
        conn._proxy = None
        loop = asyncio.get_running_loop()
        handoff = self._gate.take(loop.time())
        if handoff is None:
            try:
                await self._in_thread(self.sync_pool.putconn, proxy)
            except PoolClosed:      # the worker threads are gone: close it from here
                proxy.invalidate("the pool is closed")
                self.sync_pool.putconn(proxy)
            finally:
                self._gate.release()
            return
        # Tasks are waiting: return the connection and check one out for the oldest of
        # them in the same worker hop (the sync pool decides which connection, checks it).
        fut, deadline = handoff
        new: PooledConnection | None = None
        try:
            new = await self._in_thread(self._return_and_take, proxy, deadline - loop.time())
        except PoolClosed:
            proxy.invalidate("the pool is closed")
            self.sync_pool.putconn(proxy)
        finally:
            if new is None:
                if not fut.done():
                    fut.set_result(None)     # a plain permit: it checks out by itself
                else:
                    self._gate.release()
            elif not fut.done():
                fut.set_result(new)
            else:
                self._orphan(new)            # it left meanwhile: back, permit passed on

    def _return_and_take(self, proxy: PooledConnection,
                         timeout: float) -> PooledConnection | None:
        self.sync_pool.putconn(proxy)
        if timeout <= 0:
            return None
        try:
            return self.sync_pool.getconn(timeout)
        except Exception:      # the waiter checks out by itself and hears the error
            return None

    def _orphan(self, proxy: PooledConnection) -> None:
        """A connection checked out for a task that is gone: back to the sync pool, and
        its permit to the next task."""
        async def back() -> None:
            try:
                await self._in_thread(self.sync_pool.putconn, proxy)
            except PoolClosed:
                proxy.invalidate("the pool is closed")
                self.sync_pool.putconn(proxy)
            finally:
                self._gate.release()
        task = asyncio.get_running_loop().create_task(back())
        self._returns.add(task)
        task.add_done_callback(self._returns.discard)

    def _interrupt(self, conn: AsyncConnection, cf: Future[Any]) -> None:
        """The task awaiting ``cf`` (running in a worker) was cancelled."""
        conn._interrupted = True
        proxy = conn._proxy
        if proxy is None:
            return
        raw = proxy.raw
        if not _can_cancel(raw):
            return

        def cancel() -> None:       # in the canceller thread (one: no race on the count)
            if cf.done():
                return
            self._statements_cancelled += 1
            try:
                _cancel(raw)
            except Exception as exc:
                logger.warning("pool %r: cancelling a statement failed (%s); discarding its "
                               "connection", self.name, redact(exc))
                proxy.invalidate("cancelling its statement failed")
        try:
            self._canceller.submit(cancel)
        except PoolClosed:
            proxy.invalidate("interrupted while the pool closed")

    # ------------------------------------------------------------------ pool-wide
    async def wait(self, timeout: float = 30.0) -> None:
        """Until ``min_size`` connections are open (see :meth:`ConnectionPool.wait`)."""
        self._bind_loop()
        await self._in_thread(self.sync_pool.wait, timeout)

    async def check(self) -> int:
        """Check every idle connection now; returns how many failed."""
        self._bind_loop()
        return await self._in_thread(self.sync_pool.check)

    async def drain(self) -> None:
        """Retire every current connection (idle now, busy ones on return)."""
        self._bind_loop()
        await self._in_thread(self.sync_pool.drain)

    async def close(self, timeout: float = 5.0) -> None:
        """Close: queued tasks get :class:`PoolClosed`, returns in progress finish (up to
        ``timeout``), the sync pool closes, and the worker threads are joined."""
        if self._closed:
            return
        loop = self._bind_loop()
        self._closed = True
        self._gate.close()
        deadline = loop.time() + timeout
        if self._returns:
            await asyncio.wait(set(self._returns), timeout=timeout)
        left = max(deadline - loop.time(), 0.0)
        done: asyncio.Future[None] = loop.create_future()

        def finish() -> None:
            try:
                self.sync_pool.close(left)
                self._canceller.shutdown(left)
                self._workers.shutdown(left)
            finally:
                loop.call_soon_threadsafe(_set_done, done)
        closer = threading.Thread(target=finish, name=f"mssql_pool-aio-{self.name}-close",
                                  daemon=True)
        closer.start()
        await asyncio.shield(done)
        closer.join(1.0)     # it has only its return left to do
        logger.info("async pool %r closed", self.name)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def events(self) -> EventBus:
        """The sync pool's event bus: the same events (:mod:`mssql_pool.events`)."""
        return self.sync_pool.events

    def add_listener(self, fn: Listener, kinds: Any = None) -> Listener:
        """Call ``fn(event)`` for the pool's events (see
        :meth:`ConnectionPool.add_listener`; ``fn`` runs on its own thread, not on the
        event loop: hand over with ``loop.call_soon_threadsafe`` if it must)."""
        return self.sync_pool.add_listener(fn, kinds)

    def remove_listener(self, fn: Listener) -> bool:
        return self.sync_pool.remove_listener(fn)

    def get_stats(self) -> dict[str, int]:
        """The sync pool's stats (see :mod:`mssql_pool.stats`), with the waits in the
        async queue folded into the ``requests_*`` keys, plus ``requests_cancelled``
        (checkouts whose task was cancelled) and ``statements_cancelled`` (statements
        cancelled on the server because their task was)."""
        return self._stats(self.sync_pool.get_stats())

    def pop_stats(self) -> dict[str, int]:
        """Like :meth:`get_stats`, and set the counters back to zero."""
        out = self._stats(self.sync_pool.pop_stats())
        g = self._gate
        g.queued = g.timeouts = g.errors = g.cancelled = 0
        g.wait_ms = 0.0
        self._statements_cancelled = 0
        return out

    def _stats(self, out: dict[str, int]) -> dict[str, int]:
        g = self._gate
        out["requests_waiting"] += len(g.waiters)
        out["requests_queued"] += g.queued
        out["requests_wait_ms"] += int(g.wait_ms)
        out["requests_timeouts"] += g.timeouts
        out["requests_errors"] += g.errors
        out["requests_cancelled"] = g.cancelled
        out["statements_cancelled"] = self._statements_cancelled
        return out

    # ------------------------------------------------------------------ units of work
    async def run_transaction(self, fn: Callable[..., Awaitable[T]], *args: Any,
                              **kwargs: Any) -> T:
        """``await fn(conn, *args, **kwargs)`` as one transaction, retried as a unit
        (see :func:`run_transaction`)."""
        return await run_transaction(self, fn, *args, **kwargs)

    async def __aenter__(self) -> AsyncConnectionPool:
        self._bind_loop()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        s = self.get_stats()
        closed = " closed" if self._closed else ""
        return (f"<AsyncConnectionPool {self.name!r} idle={s['pool_available']} "
                f"busy={s['pool_size'] - s['pool_available']} "
                f"waiting={s['requests_waiting']} size={s['pool_size']}/{s['pool_max']}"
                f"{closed}>")


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark an outcome nobody may await as seen (no "exception never retrieved")."""
    if not fut.cancelled():
        fut.exception()


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _can_cancel(raw: Any) -> bool:
    return callable(getattr(getattr(raw, "_conn", None), "cancel", None)) \
        or callable(getattr(raw, "cancel", None))


def _cancel(raw: Any) -> None:
    """Ask the server to cancel the running statement (TDS attention), from a thread
    other than the one blocked in the statement: pymssql's ``_conn.cancel()``."""
    inner = getattr(raw, "_conn", None)
    cancel = getattr(inner, "cancel", None)
    if cancel is None:
        cancel = raw.cancel
    cancel()


# --------------------------------------------------------------------------- run_transaction

async def _acquire(pool: AsyncConnectionPool, policy: RetryPolicy) -> AsyncConnection:
    remaining = policy.remaining()
    if remaining is None:
        return await pool.getconn()
    return await pool.getconn(timeout=max(remaining, 0.001))


async def _pause(state: RetryPolicy) -> None:
    delay = state.next_delay
    if delay > 0 and not is_testing():
        await asyncio.sleep(delay)


async def run_transaction(
    pool: AsyncConnectionPool,
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    policy: RetryPolicy | None = None,
    isolation_level: str | None = None,
    idempotent: bool = False,
    verify: Callable[[AsyncConnection], Awaitable[bool]] | None = None,
    **kwargs: Any,
) -> T:
    """``await fn(conn, *args, **kwargs)`` as one transaction, re-run as a whole on
    retryable errors: :func:`mssql_pool.transaction.run_transaction`'s rules, policy and
    ambiguous-commit guarantee (its BEGIN, COMMIT and rollback steps run here, in a
    worker thread), with an async ``fn`` and an async ``verify(conn) -> bool``.

    A cancelled call never reports success and leaves no transaction open: the statement
    in flight is cancelled on the server and the connection is discarded (its session
    ends, which rolls back). If the cancellation hit COMMIT, the unit may have landed.
    """
    _check_unit(fn, verify, kind="an async callable")
    iso = _isolation_sql(isolation_level)

    async def attempt(state: RetryPolicy, classifier: Classifier) -> Any:
        return await _one_unit(pool, fn, args, kwargs, iso, classifier, state)

    check: Callable[[RetryPolicy], Awaitable[bool]] | None = None
    if verify is not None:
        landed = verify

        async def check(vstate: RetryPolicy) -> bool:      # verify= on a fresh connection
            vconn = await _acquire(pool, vstate)
            try:
                return bool(await landed(vconn))
            finally:
                await pool.putconn(vconn)

    return cast(T, await _run_attempts(pool, attempt, policy, idempotent=idempotent,
                                      check=check))


async def _run_attempts(pool: Any, attempt: Callable[[RetryPolicy, Classifier], Awaitable[Any]],
                       policy: RetryPolicy | None, *, idempotent: bool,
                       check: Callable[[RetryPolicy], Awaitable[bool]] | None) -> Any:
    """The retry loop of the async runners (this module's and SQLAlchemy's): ``attempt``
    until it returns, under :mod:`mssql_pool.transaction`'s rules. ``check`` is
    ``verify=`` in a fresh connection or session; ``pool`` is anything whose ``events``
    (or None) get the unit's ``retry_attempt`` and ``commit_unknown`` events."""
    state, classifier = _start(policy)
    while True:
        try:
            return await attempt(state, classifier)
        except _CommitOutcome as outcome:
            decided = _before_verify(pool, outcome, state, idempotent=idempotent,
                                     verify=check is not None, classifier=classifier)
            if decided is None:
                assert check is not None        # without one, _before_verify raised
                verified = await _verified(pool, check, outcome, state)
                if isinstance(verified, _Landed):
                    return verified.result
                decided = verified
            state = _retrying(pool, decided)
        except Exception as exc:
            state = _failed(pool, exc, state, classifier)
        await _pause(state)
        state = state.begin()


async def _one_unit(pool: AsyncConnectionPool, fn: Callable[..., Awaitable[Any]],
                    args: tuple[Any, ...], kwargs: dict[str, Any], iso: str | None,
                    classifier: Classifier, policy: RetryPolicy) -> Any:
    conn = await _acquire(pool, policy)
    try:
        try:
            await conn.run_sync(_begin, iso)
            result = await fn(conn, *args, **kwargs)
        except Exception as exc:
            await conn.run_sync(_rollback, _unit_error_info(exc, classifier), classifier)
            raise
        try:
            await conn.run_sync(_commit, classifier)
        except UnbalancedTransactionError:
            await conn.run_sync(_rollback, None, classifier)
            raise
        except _CommitOutcome as outcome:
            if outcome.ambiguous:
                conn.invalidate("connection lost during COMMIT")
            else:
                await conn.run_sync(_rollback, classifier.classify(outcome.error), classifier)
            outcome.result = result
            raise
        return result
    except BaseException as exc:
        if not isinstance(exc, Exception):
            # Cancelled (or interrupted) anywhere, COMMIT included: the session is
            # discarded, which rolls back whatever is still open on the server.
            conn.invalidate(f"interrupted by {type(exc).__name__}")
        raise
    finally:
        await pool.putconn(conn)


async def _verified(pool: Any,
                    check: Callable[[RetryPolicy], Awaitable[bool]], outcome: _CommitOutcome,
                    state: RetryPolicy) -> RetryPolicy | _Landed:
    """Await ``check`` (``verify=`` on a fresh connection) under the unit's policy until it
    answers; what the answer means (:func:`~mssql_pool.transaction._after_verify`).
    ``pool``: anything whose ``events`` (or None) get the unit's events."""
    vstate = state
    while True:
        try:
            landed = await check(vstate)
            break
        except Exception as verr:
            vstate = _verify_failed(pool, vstate, verr, outcome.error)
        await _pause(vstate)
        vstate = vstate.begin()
    return _after_verify(landed, outcome, vstate)

