"""SQLAlchemy's asyncio engine on pymssql, with an :class:`~mssql_pool.AsyncConnectionPool`
underneath::

    from mssql_pool.sqlalchemy_async import create_async_engine, run_transaction

    engine = create_async_engine("mssql+pymssql://app:secret@db/orders", max_size=20)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE ..."))
    Session = async_sessionmaker(engine)
    await run_transaction(Session, transfer, 1, 2, 100)   # async def transfer(session, ...)

How SQLAlchemy runs async drivers: the ``AsyncEngine`` runs its ordinary (sync) engine
code inside a greenlet; wherever that code calls the DB-API, the dialect's adapted
connection and cursor hand a coroutine to the event loop (``await_``) and the greenlet
resumes with its result. Here the coroutines are the async pool's: each DB-API call
becomes one hop to a worker thread, where the pool's blocking proxy runs it on pymssql.

* The dialect (``mssql+mssql_pool_async``) is SQLAlchemy's pymssql dialect with
  ``is_async = True`` and a DB-API facade: pymssql's module (exceptions, ``paramstyle``)
  whose connections come only from the pool.
* The adapted cursor runs a statement and fetches all its result sets in one hop and
  serves ``fetch*`` from that buffer, as SQLAlchemy's own async adapters do.
* :class:`AsyncMssqlPoolAdapter` is the engine's ``Pool``: checkouts await the async
  pool (FIFO, ``timeout=``), and it behaves as the sync
  :class:`~mssql_pool.sqlalchemy.MssqlPoolAdapter`: one SQLAlchemy record per driver
  connection (``connect`` fires once per connection, ``record.info`` persists), no
  pre-ping and no reset-on-return of SQLAlchemy's (the pool checks and resets, only as
  far as needed), invalidation discards the connection, ``dispose()`` drains.
  ``commit()``/``rollback()`` are the sync engine's (one round trip each; a rollback with
  nothing recorded to undo sends nothing).

Needs SQLAlchemy with its asyncio extra (greenlet): ``pip install mssql_pool[asyncio]``.
"""

from __future__ import annotations

import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pymssql
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.mssql.pymssql import MSDialect_pymssql
from sqlalchemy.engine import URL, AdaptedConnection
from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection

from .aio import AsyncConnection, AsyncConnectionPool, _run_attempts
from .classify import Classifier, get_default_classifier
from .errors import ConfigError
from .errors import PoolTimeout as _PoolTimeout
from .reset import SESSION
from .retry import RetryPolicy
from .sqlalchemy import (
    _POOL_OPTIONS,
    _SA_POOL_ARGS,
    _conninfo,
    _dialect_url,
    _engine_timeout,
    _EngineConnection,
    _Gauges,
    _opener_for,
    _read_any_version,
    _translate_pool_args,
    pool_events,
)
from .transaction import (
    _check_unit,
    _CommitOutcome,
    _unit_error_info,
    commit_outcome_unknown,
)

try:  # SQLAlchemy 2.1 renamed await_only
    from sqlalchemy.util.concurrency import await_
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util.concurrency import await_only as await_

__all__ = [
    "AsyncMssqlPoolAdapter", "MSDialectAsync_mssql_pool", "create_async_engine",
    "run_transaction",
]

logger = logging.getLogger("mssql_pool.sqlalchemy")
T = TypeVar("T")

DRIVER = "mssql_pool_async"
_RECORD_KEY = "mssql_pool.sqlalchemy_async.record"
#: A retried unit's remaining time: checkouts made for it wait at most this long.
_checkout_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "mssql_pool_checkout_timeout", default=None)


# --------------------------------------------------------------------------- DB-API facade

class _AsyncDBAPI:
    """pymssql's module as the dialect's DB-API: its exceptions, types and paramstyle.
    Connections come from the pool only."""

    def __init__(self) -> None:
        self.paramstyle = pymssql.paramstyle
        self.__version__ = getattr(pymssql, "__version__", None)

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigError("connect", "the mssql_pool async dialect opens connections through "
                                     "its AsyncConnectionPool; use "
                                     "mssql_pool.sqlalchemy_async.create_async_engine")

    def __getattr__(self, name: str) -> Any:
        return getattr(pymssql, name)


def _execute_buffered(proxy: Any, many: bool, operation: Any, params: Any
                      ) -> tuple[list[tuple[Any, list[Any]]], int, Any]:
    """In a worker thread: run, then read every result set (one hop for the loop)."""
    cur = proxy.cursor()
    try:
        if many:
            cur.executemany(operation, params)
        elif params is None:
            cur.execute(operation)
        else:
            cur.execute(operation, params)
        sets: list[tuple[Any, list[Any]]] = []
        rowcount = -1
        while True:
            desc = cur.description
            sets.append((desc, list(cur.fetchall()) if desc else []))
            if len(sets) == 1:
                rowcount = cur.rowcount
            if not cur.nextset():
                break
        # pymssql's lastrowid is a query of its own (SCOPE_IDENTITY()): not read here;
        # SQLAlchemy's SQL Server dialect asks for identities itself (OUTPUT or SELECT).
        return sets, rowcount, None
    finally:
        cur.close()


class AsyncAdapt_mssql_pool_cursor:
    """The DB-API cursor SQLAlchemy's sync code drives; each call awaits the pool."""

    __slots__ = ("_adapt", "_sets", "_rows", "description", "rowcount", "lastrowid",
                 "arraysize")
    server_side = False

    def __init__(self, adapt: AsyncAdapt_mssql_pool_connection) -> None:
        self._adapt = adapt
        self._sets: deque[tuple[Any, list[Any]]] = deque()
        self._rows: deque[Any] = deque()
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: Any = None
        self.arraysize = 1

    def _run(self, many: bool, operation: Any, params: Any) -> None:
        sets, self.rowcount, self.lastrowid = await_(
            self._adapt._aconn.run_sync(_execute_buffered, many, operation, params))
        self._sets = deque(sets)
        self._next()

    def _next(self) -> bool:
        if not self._sets:
            self.description, self._rows = None, deque()
            return False
        desc, rows = self._sets.popleft()
        self.description, self._rows = desc, deque(rows)
        return True

    def execute(self, operation: Any, parameters: Any = None) -> None:
        self._run(False, operation, parameters)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        self._run(True, operation, seq_of_parameters)

    def nextset(self) -> bool | None:
        return True if self._next() else None

    def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        n = self.arraysize if size is None else size
        rows = self._rows
        return [rows.popleft() for _ in range(min(n, len(rows)))]

    def fetchall(self) -> list[Any]:
        out = list(self._rows)
        self._rows.clear()
        return out

    def __iter__(self) -> Any:
        while self._rows:
            yield self._rows.popleft()

    def setinputsizes(self, *args: Any) -> None:
        pass

    def setoutputsize(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        self._rows.clear()
        self._sets.clear()

    async def _async_soft_close(self) -> None:
        """Called by SQLAlchemy (2.0.44+) on async results; the rows are buffered and the
        driver's cursor closed already: nothing to do."""


def _commit(proxy: Any) -> None:
    proxy.commit()


def _rollback(proxy: Any) -> None:
    proxy.rollback()


class AsyncAdapt_mssql_pool_connection(AdaptedConnection):
    """The DB-API connection SQLAlchemy's sync code drives, over an
    :class:`~mssql_pool.aio.AsyncConnection` (``driver_connection``)."""

    __slots__ = ("_aconn",)

    def __init__(self, aconn: AsyncConnection) -> None:
        self._aconn = aconn
        self._connection = cast(Any, aconn)

    def cursor(self, *args: Any, **kwargs: Any) -> AsyncAdapt_mssql_pool_cursor:
        return AsyncAdapt_mssql_pool_cursor(self)

    def commit(self) -> None:
        await_(self._aconn.run_sync(_commit))

    def rollback(self) -> None:
        await_(self._aconn.run_sync(_rollback))

    def autocommit(self, status: bool) -> None:
        await_(self._aconn.autocommit(status))

    @property
    def autocommit_state(self) -> bool:
        return self._aconn.autocommit_state

    def invalidate(self, reason: str | None = None) -> None:
        self._aconn.invalidate(reason)

    @property
    def info(self) -> dict[str, Any]:
        return self._aconn.info

    @property
    def closed(self) -> bool:
        return self._aconn.closed

    def close(self) -> None:
        """Give the connection back (SQLAlchemy closes only what it discards: the pool
        is told to close it, not reuse it)."""
        if not self._aconn.closed:
            self._aconn.invalidate("closed by SQLAlchemy (invalidated or detached)")
            await_(self._aconn.close())

    def __repr__(self) -> str:
        return f"<AsyncAdapt_mssql_pool_connection {self._aconn!r}>"


# --------------------------------------------------------------------------- the engine's pool

class AsyncMssqlPoolAdapter(_Gauges, Pool):
    """A ``sqlalchemy.pool.Pool`` for the async engine whose connections come from an
    :class:`~mssql_pool.AsyncConnectionPool` (see the module docstring)."""

    mssql_pool: AsyncConnectionPool

    def __init__(self, pool: AsyncConnectionPool, *, logging_name: str | None = None,
                 echo: Any = None, events: list[tuple[Any, str]] | None = None,
                 dialect: Any = None, _dispatch: Any = None) -> None:
        if not isinstance(pool, AsyncConnectionPool):
            raise ConfigError("pool", f"must be an AsyncConnectionPool, got {pool!r}")
        self.mssql_pool = pool
        self._pending: AsyncAdapt_mssql_pool_connection | None = None
        super().__init__(self._open_record, recycle=-1, echo=echo, logging_name=logging_name,
                         reset_on_return=None, events=events, dialect=dialect, pre_ping=False,
                         _dispatch=_dispatch)

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            aconn = await_(self.mssql_pool.getconn(_checkout_timeout.get()))
        except _PoolTimeout as exc:
            raise _engine_timeout(exc) from exc.last_error
        try:
            proxy = aconn.sync_connection
            proxy.__class__ = _EngineConnection    # commit/rollback as the sync engine's
            adapted = AsyncAdapt_mssql_pool_connection(aconn)
            held = aconn.info.get(_RECORD_KEY)
            record: Any = held[1] if held is not None and held[0] is self else None
            if record is None:
                self._pending = adapted
                try:
                    record = self._create_connection()
                finally:
                    self._pending = None
                rec = proxy.record
                if rec is not None:
                    # Session state set by connect events is the connection's baseline,
                    # not a borrower's change (re-applied by a new record after a full
                    # reset undid it: see _do_return_conn).
                    rec.flags &= ~SESSION
                aconn.info[_RECORD_KEY] = (self, record)
            else:
                record.dbapi_connection = adapted
            return cast(ConnectionPoolEntry, record)
        except BaseException:
            if not aconn.closed:
                aconn.invalidate("SQLAlchemy checkout failed")
                await_(aconn.close())
            raise

    def _open_record(self, connection_record: ConnectionPoolEntry | None = None) -> Any:
        adapted = self._pending
        if adapted is None:   # SQLAlchemy reconnects a record itself: a fresh checkout
            try:
                aconn = await_(self.mssql_pool.getconn(_checkout_timeout.get()))
            except _PoolTimeout as exc:
                raise _engine_timeout(exc) from exc.last_error
            aconn.sync_connection.__class__ = _EngineConnection
            adapted = AsyncAdapt_mssql_pool_connection(aconn)
            if connection_record is not None:
                aconn.info[_RECORD_KEY] = (self, connection_record)
        self._pending = None
        return adapted

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        rec: Any = record
        adapted = rec.dbapi_connection
        if adapted is None:
            return
        rec.dbapi_connection = None
        aconn: AsyncConnection = adapted._aconn
        if aconn.closed:
            return
        pooled = aconn.sync_connection.record
        if pooled is not None and (pooled.flags & SESSION
                                   or self.mssql_pool.config.reset == "full"):
            # The pool's full reset undoes what connect events set: a new record (and
            # its connect events) for this connection next time.
            aconn.info.pop(_RECORD_KEY, None)
        await_(aconn.close())

    def _close_connection(self, connection: Any, *, terminate: bool = False) -> None:
        if isinstance(connection, AsyncAdapt_mssql_pool_connection):
            connection.close()
        else:  # pragma: no cover - only our connections are handed to SQLAlchemy
            super()._close_connection(connection, terminate=terminate)

    def _invalidate(self, connection: PoolProxiedConnection,
                    exception: BaseException | None = None, _checkin: bool = True) -> None:
        """A disconnect: discard this connection only (the pool checks the older ones)."""
        if _checkin and getattr(connection, "is_valid", False):
            connection.invalidate(exception)

    def dispose(self) -> None:
        """Retire every connection: idle ones close now, busy ones when they come back."""
        await_(self.mssql_pool.drain())

    def recreate(self) -> AsyncMssqlPoolAdapter:
        return AsyncMssqlPoolAdapter(self.mssql_pool, logging_name=self._orig_logging_name,
                                     echo=self.echo, dialect=self._dialect,
                                     _dispatch=self.dispatch)

    def status(self) -> str:
        s = self.mssql_pool.get_stats()
        return (f"Pool {self.mssql_pool.name!r} (mssql_pool, asyncio): size={s['pool_size']}/"
                f"{s['pool_max']} idle={s['pool_available']} waiting={s['requests_waiting']} "
                f"checkouts={s['requests_num']} lost={s['connections_lost']} "
                f"timeouts={s['requests_timeouts']} cancelled={s['statements_cancelled']}")

    def size(self) -> int:
        return self.mssql_pool.config.max_size

    def __repr__(self) -> str:
        return f"<AsyncMssqlPoolAdapter {self.mssql_pool!r}>"


# --------------------------------------------------------------------------- the dialect

class MSDialectAsync_mssql_pool(MSDialect_pymssql):
    """SQLAlchemy's pymssql dialect, asyncio flavour, on an AsyncConnectionPool."""

    driver = DRIVER
    is_async = True
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> Any:
        return _AsyncDBAPI()

    @classmethod
    def get_pool_class(cls, url: URL) -> type[Pool]:
        return AsyncMssqlPoolAdapter

    def get_driver_connection(self, connection: Any) -> Any:
        return connection._aconn


registry.register(f"mssql.{DRIVER}", __name__, "MSDialectAsync_mssql_pool")


def create_async_engine(url: str | URL, *, pool: AsyncConnectionPool | None = None,
                        **kwargs: Any) -> AsyncEngine:
    """An ``AsyncEngine`` on pymssql with an :class:`~mssql_pool.AsyncConnectionPool`.

    ``url`` is an ``mssql+pymssql://`` or ``mssql://`` URL. Pool options
    (``min_size``, ``max_size``, ``timeout``, ``check``, ``reset``, ``cancel_timeout``...)
    and SQLAlchemy's ``pool_*`` arguments are taken as by
    :func:`mssql_pool.sqlalchemy.create_engine`; everything else goes to SQLAlchemy's
    ``create_async_engine``. With ``pool=`` an existing AsyncConnectionPool is used.

    ``await engine.dispose()`` drains the pool; ``await engine.pool.mssql_pool.close()``
    closes it (and joins its threads) when the application stops.
    """
    u = _dialect_url(url).set(drivername=f"mssql+{DRIVER}")
    opts = {k: kwargs.pop(k) for k in list(kwargs) if k in _POOL_OPTIONS or k == "cancel_timeout"}
    sa_pool_args = {k: kwargs.pop(k) for k in list(kwargs) if k in _SA_POOL_ARGS}
    adapter_args = _translate_pool_args(sa_pool_args, opts if pool is None else {})
    if pool is not None:
        if opts:
            raise ConfigError(sorted(opts)[0], "pool options cannot be combined with pool=; "
                                               "configure the AsyncConnectionPool you pass")
        if not isinstance(pool, AsyncConnectionPool):
            raise ConfigError("pool", f"must be an AsyncConnectionPool, got "
                                      f"{type(pool).__name__}")
        apool = pool
    else:
        apool = AsyncConnectionPool(_conninfo(u, kwargs, opts), **opts)
    adapter = AsyncMssqlPoolAdapter(apool, **adapter_args)
    engine = _sa_create_async_engine(u, pool=adapter, **kwargs)
    _read_any_version(engine.sync_engine.dialect)     # Babelfish's @@VERSION, as sync
    return engine


# --------------------------------------------------------------------------- run_transaction

def _opener(source: Any) -> Callable[[], AsyncSession | SAAsyncConnection]:
    return _opener_for(source, AsyncEngine, AsyncSession, "an AsyncSession",
                       "an async_sessionmaker (or callable returning an AsyncSession) or an "
                       "AsyncEngine")


async def _open(opener: Callable[[], Any]) -> Any:
    target = opener()
    if isinstance(target, SAAsyncConnection):
        await target.start()
    return target


async def _discard(target: Any) -> None:
    try:
        await target.invalidate()
    except Exception:  # noqa: BLE001 - the connection is gone either way
        logger.debug("invalidating a unit's connection failed", exc_info=True)


async def _unit(opener: Callable[[], Any], fn: Callable[..., Awaitable[Any]],
                args: tuple[Any, ...], kwargs: dict[str, Any], policy: RetryPolicy) -> Any:
    classifier = policy.classifier or get_default_classifier()
    remaining = policy.remaining()
    token = _checkout_timeout.set(None if remaining is None else max(remaining, 0.001))
    target = await _open(opener)
    try:
        try:
            result = await fn(target, *args, **kwargs)
            if isinstance(target, AsyncSession):
                await target.flush()   # a failed flush is an ordinary (retryable) error
        except Exception as exc:
            info = _unit_error_info(exc, classifier)   # None: the application's own error
            if info is not None and info.connection_dead:
                await _discard(target)
            else:
                try:
                    await target.rollback()
                except Exception:  # noqa: BLE001 - a failed rollback costs the connection
                    await _discard(target)
            raise
        try:
            await target.commit()
        except Exception as exc:
            # built-in rules only: the caller's classifier decides what is retried, never
            # whether the COMMIT may have landed
            ambiguous = commit_outcome_unknown(exc)
            if ambiguous:
                await _discard(target)
            else:
                try:
                    await target.rollback()
                except Exception:  # noqa: BLE001
                    await _discard(target)
            outcome = _CommitOutcome(exc, ambiguous)
            outcome.result = result
            raise outcome from exc
        return result
    except BaseException as exc:
        if not isinstance(exc, Exception):
            # Cancelled: the connection is discarded (its session ends: the server rolls
            # back), whatever the unit was doing, COMMIT included.
            await _discard(target)
        raise
    finally:
        try:
            await target.close()
        finally:
            _checkout_timeout.reset(token)


async def run_transaction(
    session_factory_or_engine: Any,
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    policy: RetryPolicy | None = None,
    idempotent: bool = False,
    verify: Callable[[Any], Awaitable[bool]] | None = None,
    **kwargs: Any,
) -> T:
    """``await fn(session, *args, **kwargs)`` as one transaction, re-run as a whole on
    retryable errors: :func:`mssql_pool.sqlalchemy.run_transaction` for asyncio.

    ``session_factory_or_engine`` is an ``async_sessionmaker`` (``fn`` gets a new
    ``AsyncSession`` per attempt) or an ``AsyncEngine`` (``fn`` gets a new
    ``AsyncConnection``). ``fn`` does not commit: its changes are flushed, then committed.
    The policy, the retry rules and the ambiguous-commit guarantee
    (:class:`~mssql_pool.errors.CommitUnknownError` unless ``idempotent=True`` or an async
    ``verify(session) -> bool``) are those of :mod:`mssql_pool.transaction`. A cancelled
    call never reports success and discards its connection.
    """
    _check_unit(fn, verify, kind="an async callable", target="session")
    opener = _opener(session_factory_or_engine)

    async def attempt(state: RetryPolicy, classifier: Classifier) -> Any:
        return await _unit(opener, fn, args, kwargs, state)

    check: Callable[[RetryPolicy], Awaitable[bool]] | None = None
    if verify is not None:
        landed = verify

        async def check(vstate: RetryPolicy) -> bool:      # verify= in a fresh session
            target = await _open(opener)
            try:
                return bool(await landed(target))
            finally:
                await target.close()

    # the unit's retry_attempt and commit_unknown events go to the pool under the engine
    events = _Events(pool_events(session_factory_or_engine))
    return cast(T, await _run_attempts(events, attempt, policy, idempotent=idempotent,
                                      check=check))


class _Events:
    """Where a unit's events go: the bus of the mssql_pool pool under the engine, if any."""

    __slots__ = ("events",)

    def __init__(self, events: Any) -> None:
        self.events = events

