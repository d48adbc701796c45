"""SQLAlchemy integration: mssql_pool under an ``Engine``, the ORM, and retried units.

One line puts a :class:`~mssql_pool.ConnectionPool` under a standard SQLAlchemy
``Engine`` on the ``mssql+pymssql`` dialect::

    from mssql_pool.sqlalchemy import create_engine, run_transaction

    engine = create_engine("mssql+pymssql://app:secret@db/orders", min_size=2, max_size=20)

or, around a pool you already hold::

    engine = create_engine("mssql+pymssql://", pool=my_pool)   # or pool=MssqlPoolAdapter(my_pool)

The engine's pool is a :class:`MssqlPoolAdapter`, a ``sqlalchemy.pool.Pool`` subclass
(not ``NullPool`` + ``creator``: see docs/sqlalchemy.md for why). What it keeps:

* SQLAlchemy's pool events fire: ``connect`` once per driver connection (the first time
  the engine sees it), ``checkout``, ``checkin``, ``reset``, ``invalidate``, ``close``;
  ``connection_record.info`` lives as long as the driver connection;
* when SQLAlchemy decides an error is a disconnect and invalidates, mssql_pool discards
  that connection and checks every older one on its next checkout;
* ``engine.dispose()`` retires the pool's connections (:meth:`ConnectionPool.drain`);
* ``engine.pool.status()`` reads the pool's stats;
* nothing is done twice: SQLAlchemy's pre-ping is replaced by the pool's own check
  (skipped for a connection used within ``validate_after``), and SQLAlchemy's
  reset-on-return by the pool's (nothing, a rollback or a full reset, as needed).

:func:`run_transaction` runs an ORM (or Core) unit of work with the retry rules and the
ambiguous-commit guarantee of :mod:`mssql_pool.transaction`, whose retry loop it reuses.

SQLAlchemy is an optional dependency (``pip install mssql_pool[sqlalchemy]``); only this
module imports it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import sqlalchemy
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection

from ._driver import as_dbapi_error, autocommit_state
from ._dsn import parse_conninfo, redact
from .config import PoolConfig
from .connection import SETTLED, PooledConnection, _driver_error
from .errors import ConfigError
from .errors import PoolTimeout as _PoolTimeout
from .pool import ConnectionPool
from .reset import SESSION, rollback_work, scan_sql
from .retry import RetryPolicy
from .transaction import _check_unit
from .transaction import run_transaction as _run_transaction

__all__ = [
    "MssqlPoolAdapter", "PoolTimeout", "as_sqlalchemy_pool", "create_engine", "run_transaction",
]

logger = logging.getLogger("mssql_pool.sqlalchemy")

T = TypeVar("T")

_RECORD_KEY = "mssql_pool.sqlalchemy.record"
_BASELINE_KEY = "mssql_pool.sqlalchemy.baseline"   # session changes made by connect events
_STALE_KEY = "mssql_pool.sqlalchemy.stale"         # a full reset undid them since
_capture = threading.local()   # .log: where connect-time session changes are recorded
_checkout = threading.local()  # .timeout: a retried unit's remaining time (run_transaction)
_DRIVERS = {"mssql": "mssql+pymssql", "mssql+pymssql": "mssql+pymssql"}
_POOL_OPTIONS = frozenset(PoolConfig.__dataclass_fields__) - {"conninfo", "connect"}


class PoolTimeout(_PoolTimeout, sa_exc.TimeoutError):
    """No connection within the pool's ``timeout``, as the engine raises it: both
    :class:`mssql_pool.PoolTimeout` (``waited``, ``last_error``...) and
    ``sqlalchemy.exc.TimeoutError``, so either ``except`` clause catches it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _engine_timeout(exc: _PoolTimeout) -> PoolTimeout:
    return PoolTimeout(str(exc), waited=exc.waited, pool_size=exc.pool_size,
                       max_size=exc.max_size, waiting=exc.waiting, last_error=exc.last_error)


class _EngineConnection(PooledConnection):
    """The pooled connection as SQLAlchemy holds it: ``rollback()`` that costs nothing when
    nothing needs undoing, errors as DB-API errors.

    SQLAlchemy rolls back whenever a ``Connection`` or ``Session`` ends a transaction,
    including one that only read. pymssql's own ``rollback()`` costs two round trips
    (ROLLBACK TRAN, then BEGIN TRAN); here it is the batch the pool's reset sends
    (:func:`mssql_pool.reset.rollback_work`), and no batch at all when the proxy recorded
    nothing since the last commit or rollback (pure reads on a connection where they
    leave nothing behind: :func:`mssql_pool.connection.quiet_mask`). ``commit()`` is the
    proxy's: ``COMMIT TRAN;BEGIN TRAN`` in one batch. Errors come out as
    ``pymssql.OperationalError`` (SQLAlchemy wraps and classifies those) and reach the
    pool's disconnect handling, as with every other call on the proxy. In autocommit
    mode both are pymssql's own (no-ops).
    """

    __slots__ = ()

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        cur = super().cursor(*args, **kwargs)
        log = getattr(_capture, "log", None)
        return cur if log is None else _CapturingCursor(cur, log)

    def autocommit(self, status: bool) -> None:
        super().autocommit(status)
        log = getattr(_capture, "log", None)
        if log is not None:
            log.append(("autocommit", status, None))

    def rollback(self) -> None:
        rec = self.record
        raw = self.raw
        if rec is None or autocommit_state(raw) is not False:
            super().rollback()     # closed proxy (raises) or autocommit (pymssql: no-op)
            return
        _no_replay(self)           # as after pymssql's own rollback() on the proxy
        if not rec.flags and rec.free:
            return                 # nothing recorded needs undoing (see the docstring)
        try:
            rollback_work(raw, rec)
        except Exception as exc:
            _driver_error(self.lender, rec, exc)
            raise as_dbapi_error(exc) from exc
        rec.flags &= ~SETTLED      # IF @@TRANCOUNT > 0 ROLLBACK asked the server

    def commit(self) -> None:
        """The proxy's ``commit()``: one batch, ``COMMIT TRAN;BEGIN TRAN``, raising
        ``OperationalError("Cannot commit transaction: ...")`` as pymssql does. A
        connection lost with it in flight is an unknown outcome, as with pymssql's own."""
        super().commit()
        _no_replay(self)


class _CapturingCursor:
    """A cursor used inside ``connect`` events: records the statements that change
    session state, so they can be re-applied after the pool's full reset."""

    __slots__ = ("_cur", "_log")

    def __init__(self, cur: Any, log: list[tuple[str, Any, Any]]) -> None:
        self._cur = cur
        self._log = log

    def execute(self, operation: Any, params: Any = None) -> Any:
        result = self._cur.execute(operation, params)
        if scan_sql(operation) & SESSION:
            self._log.append(("sql", operation, params))
        return result

    def __iter__(self) -> Any:
        return iter(self._cur)

    def __enter__(self) -> _CapturingCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cur.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


def _apply_baseline(raw: Any, baseline: list[tuple[str, Any, Any]]) -> None:
    """Re-apply the session changes of the ``connect`` events on the driver connection
    (directly: they are the connection's baseline, not a borrower's change)."""
    for kind, what, params in baseline:
        if kind == "autocommit":
            raw.autocommit(what)
            continue
        cur = raw.cursor()
        try:
            cur.execute(what, params)
        finally:
            cur.close()


def _no_replay(proxy: PooledConnection) -> None:
    """A connection with a session baseline must not have a failed first statement
    replayed on a replacement (health.may_replay): the replacement may not carry the
    baseline (e.g. the engine's isolation level) yet. The caller sees the error instead."""
    from . import connection

    no_replay = getattr(connection, "NO_REPLAY", None)
    rec = proxy.record
    if no_replay is not None and rec is not None and hasattr(rec, "replay_timeout"):
        rec.replay_timeout = no_replay


class _Gauges:
    """The pool's stats and QueuePool-style gauges, for tools that read them (the sync and
    the asyncio adapters alike; each says its own ``size``)."""

    mssql_pool: Any

    def get_stats(self) -> dict[str, int]:
        """The pool's documented stats dict."""
        return self.mssql_pool.get_stats()  # type: ignore[no-any-return]

    def checkedin(self) -> int:
        return self.mssql_pool.get_stats()["pool_available"]  # type: ignore[no-any-return]

    def checkedout(self) -> int:
        s = self.mssql_pool.get_stats()
        return s["pool_size"] - s["pool_available"]  # type: ignore[no-any-return]

    def overflow(self) -> int:
        return 0

    def timeout(self) -> float:
        return self.mssql_pool.config.timeout  # type: ignore[no-any-return]


class MssqlPoolAdapter(_Gauges, Pool):
    """A ``sqlalchemy.pool.Pool`` whose connections come from a mssql_pool pool.

    ``MssqlPoolAdapter(pool)`` (or :func:`as_sqlalchemy_pool`) wraps an existing
    :class:`~mssql_pool.ConnectionPool`; give it to ``create_engine(url, pool=...)``.

    Each driver connection gets one SQLAlchemy connection record for its whole life
    (kept in the pooled connection's ``info``), so ``connect`` fires once per driver
    connection and ``record.info`` persists across checkouts. SQLAlchemy's ``recycle``
    and ``pre_ping`` are not used: the pool's ``max_lifetime`` and ``check`` do that
    work. ``reset_on_return`` is always off: the pool resets on return, only as far as
    needed. Closing or invalidating a connection through SQLAlchemy discards it from
    the pool.
    """

    mssql_pool: ConnectionPool

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        logging_name: str | None = None,
        echo: Any = None,
        events: list[tuple[Any, str]] | None = None,
        dialect: Any = None,
        _dispatch: Any = None,
    ) -> None:
        if not isinstance(pool, ConnectionPool):
            raise ConfigError("pool", f"must be a mssql_pool ConnectionPool, got {pool!r}")
        self.mssql_pool = pool
        self._pending = threading.local()
        super().__init__(
            self._open_record,
            recycle=-1,
            echo=echo,
            logging_name=logging_name,
            reset_on_return=None,
            events=events,
            dialect=dialect,
            pre_ping=False,
            _dispatch=_dispatch,
        )

    # ------------------------------------------------------------------ checkout
    def _do_get(self) -> ConnectionPoolEntry:
        pool = self.mssql_pool
        while True:
            try:
                proxy = pool.getconn(getattr(_checkout, "timeout", None))
            except _PoolTimeout as exc:
                raise _engine_timeout(exc) from exc.last_error
            proxy.__class__ = _EngineConnection   # same layout; see its docstring
            try:
                held = proxy.info.get(_RECORD_KEY)
                record: Any = held[1] if held is not None and held[0] is self else None
                if record is not None and _soft_invalidated(record):
                    proxy.invalidate("soft-invalidated by SQLAlchemy")
                    proxy.close()
                    continue
                if record is None:
                    return self._new_record(proxy)
                if _BASELINE_KEY in proxy.info:
                    _no_replay(proxy)
                if proxy.info.pop(_STALE_KEY, False):
                    try:
                        _apply_baseline(proxy.raw, proxy.info[_BASELINE_KEY])
                    except Exception as exc:
                        logger.warning("re-applying the connect events' session state "
                                       "failed (%s); discarding the connection", redact(exc))
                        proxy.invalidate("re-applying the session baseline failed")
                        proxy.close()
                        continue
                record.dbapi_connection = proxy
                return cast(ConnectionPoolEntry, record)
            except BaseException:
                if not proxy.closed:
                    proxy.invalidate("SQLAlchemy checkout failed")
                    proxy.close()
                raise

    def _new_record(self, proxy: PooledConnection) -> ConnectionPoolEntry:
        """A driver connection this adapter has not seen: a new record whose creator hands
        over ``proxy``; SQLAlchemy fires ``connect`` (and the dialect's first-connect
        initialisation) as for a new connection.

        Session state those events set (an engine-wide ``isolation_level``, a listener's
        ``SET ...``) is the connection's baseline, not a borrower's change: it does not
        trigger a reset on return, and is re-applied after a full reset undid it.
        """
        log: list[tuple[str, Any, Any]] = []
        self._pending.proxy = proxy
        _capture.log = log
        try:
            record = self._create_connection()
        finally:
            self._pending.proxy = None
            _capture.log = None
        rec = proxy.record
        if log and rec is not None:
            proxy.info[_BASELINE_KEY] = log
            rec.flags &= ~SESSION
            rec.free, rec.learn = 0, False   # its baseline (isolation level?) is not known
            _no_replay(proxy)
        return record

    def _open_record(self, connection_record: ConnectionPoolEntry | None = None) -> Any:
        """The creator SQLAlchemy calls for a record: the proxy being checked out.

        Called outside :meth:`_do_get` only when SQLAlchemy reconnects a record itself
        (a checkout listener raised ``DisconnectionError``): a connection is taken from
        the pool then.
        """
        proxy: PooledConnection | None = getattr(self._pending, "proxy", None)
        if proxy is None:
            try:
                proxy = self.mssql_pool.getconn()
            except _PoolTimeout as exc:
                raise _engine_timeout(exc) from exc.last_error
            proxy.__class__ = _EngineConnection
        else:
            self._pending.proxy = None
        if connection_record is not None:
            proxy.info[_RECORD_KEY] = (self, connection_record)
        return proxy

    # ------------------------------------------------------------------ checkin
    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        rec: Any = record
        proxy = rec.dbapi_connection
        if proxy is None:        # invalidated or detached: already handled
            return
        rec.dbapi_connection = None   # the record is idle; the pool owns the connection
        pooled = proxy.record
        if pooled is not None and _BASELINE_KEY in pooled.info and (
                pooled.flags & SESSION or self.mssql_pool.config.reset == "full"):
            pooled.info[_STALE_KEY] = True    # the pool's full reset will undo the baseline
        proxy.close()

    def _close_connection(self, connection: Any, *, terminate: bool = False) -> None:
        """SQLAlchemy closes a connection (invalidation, detach, failed connect event):
        the pool discards it instead of reusing it."""
        if isinstance(connection, PooledConnection):
            connection.invalidate("closed by SQLAlchemy (invalidated or detached)")
            connection.close()
        else:  # pragma: no cover - only our proxies are ever handed to SQLAlchemy
            super()._close_connection(connection, terminate=terminate)

    def _invalidate(
        self,
        connection: PoolProxiedConnection,
        exception: BaseException | None = None,
        _checkin: bool = True,
    ) -> None:
        """A disconnect: discard this connection (and only this one).

        SQLAlchemy's own pools recycle every older connection too. Here the proxy has
        already shown the error to the pool, which then checks every older connection
        on its next checkout: the same protection for the price of one check each, and
        no reconnect storm.
        """
        if _checkin and getattr(connection, "is_valid", False):
            connection.invalidate(exception)

    # ------------------------------------------------------------------ pool-wide
    def dispose(self) -> None:
        """Retire every connection: idle ones close now, busy ones when they come back."""
        self.mssql_pool.drain()

    def recreate(self) -> MssqlPoolAdapter:
        self.logger.info("Pool recreating")
        return MssqlPoolAdapter(
            self.mssql_pool,
            logging_name=self._orig_logging_name,
            echo=self.echo,
            dialect=self._dialect,
            _dispatch=self.dispatch,
        )

    def status(self) -> str:
        """One line from the pool's stats (see :mod:`mssql_pool.stats`)."""
        s = self.mssql_pool.get_stats()
        return (
            f"Pool {self.mssql_pool.name!r} (mssql_pool): size={s['pool_size']}/"
            f"{s['pool_max']} idle={s['pool_available']} waiting={s['requests_waiting']} "
            f"checkouts={s['requests_num']} opened={s['connections_num']} "
            f"lost={s['connections_lost']} discarded={s['connections_discarded']} "
            f"expired={s['connections_expired']} timeouts={s['requests_timeouts']}"
        )

    def size(self) -> int:
        return self.mssql_pool.get_stats()["pool_max"]

    def __repr__(self) -> str:
        return f"<MssqlPoolAdapter {self.mssql_pool!r}>"


def _soft_invalidated(record: ConnectionPoolEntry) -> bool:
    soft: float = getattr(record, "_soft_invalidate_time", 0.0)
    return soft > getattr(record, "starttime", 0.0)


def as_sqlalchemy_pool(pool: ConnectionPool | MssqlPoolAdapter) -> MssqlPoolAdapter:
    """Wrap ``pool`` for ``sqlalchemy.create_engine(url, pool=...)`` (idempotent)."""
    if isinstance(pool, MssqlPoolAdapter):
        return pool
    return MssqlPoolAdapter(pool)


# --------------------------------------------------------------------------- create_engine

# SQLAlchemy's pool arguments and what they become here.
_SA_POOL_ARGS = frozenset({
    "pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping",
    "pool_reset_on_return", "pool_use_lifo", "poolclass", "creator", "pool_logging_name",
    "echo_pool",
})


def _dialect_url(url: str | URL) -> URL:
    try:
        u = make_url(url)
    except (sa_exc.ArgumentError, TypeError, ValueError) as exc:
        raise ConfigError("url", f"cannot parse {redact(url)}: {redact(exc)}") from None
    driver = _DRIVERS.get(u.drivername.lower())
    if driver is None:
        raise ConfigError("url", f"must be an mssql:// or mssql+pymssql:// URL, got "
                                 f"{u.drivername!r}")
    return u.set(drivername=driver)


def _conninfo(u: URL, kwargs: dict[str, Any], opts: Mapping[str, Any]) -> Any:
    """The conninfo of the pool an engine creates (sync and async alike): None when the
    pool options name a ``connect`` factory, else pymssql.connect keyword arguments for
    the URL, via the pool's own parser, updated with ``connect_args`` (popped from the
    engine's ``kwargs`` in either case)."""
    connect_args = kwargs.pop("connect_args", {})
    if not isinstance(connect_args, Mapping):
        raise ConfigError("connect_args", f"must be a mapping, got "
                                          f"{type(connect_args).__name__}")
    if "connect" in opts:
        return None
    if not u.host:
        raise ConfigError("url", f"no host in {redact(u.render_as_string())}")
    conninfo = parse_conninfo(u.set(drivername="mssql").render_as_string(hide_password=False))
    conninfo.update(connect_args)
    return conninfo


def _translate_pool_args(sa_args: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
    """Fold SQLAlchemy's pool_* arguments into pool options; return the adapter's."""
    adapter: dict[str, Any] = {}
    if "poolclass" in sa_args:
        raise ConfigError("poolclass", "mssql_pool's engine brings its own pool; leave "
                                       "poolclass out (or use sqlalchemy.create_engine)")
    if "pool_size" in sa_args or "max_overflow" in sa_args:
        size = sa_args.get("pool_size", 5)
        overflow = sa_args.get("max_overflow", 10)
        for name, value in (("pool_size", size), ("max_overflow", overflow)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"must be an int >= 0, got {value!r}")
        opts.setdefault("max_size", max(size + max(overflow, 0), 1))
    if "pool_timeout" in sa_args:
        opts.setdefault("timeout", sa_args["pool_timeout"])
    recycle = sa_args.get("pool_recycle", -1)
    if recycle is not None and recycle != -1:
        opts.setdefault("max_lifetime", recycle)
    if sa_args.get("pool_pre_ping") and opts.get("check", "SELECT 1") is None:
        raise ConfigError("pool_pre_ping", "pool_pre_ping=True contradicts check=None")
    reset = sa_args.get("pool_reset_on_return", "rollback")
    if reset not in ("rollback", True):
        raise ConfigError("pool_reset_on_return",
                          "mssql_pool resets connections itself; use reset= "
                          "('auto', 'rollback', 'full' or a callable)")
    if "creator" in sa_args:
        opts["connect"] = sa_args["creator"]
    if "pool_logging_name" in sa_args:
        adapter["logging_name"] = sa_args["pool_logging_name"]
    if "echo_pool" in sa_args:
        adapter["echo"] = sa_args["echo_pool"]
    return adapter


def create_engine(url: str | URL, *, pool: ConnectionPool | MssqlPoolAdapter | None = None,
                  **kwargs: Any) -> Engine:
    """A standard SQLAlchemy ``Engine`` (``mssql+pymssql``) on a mssql_pool pool.

    ``url`` is an ``mssql+pymssql://`` or ``mssql://`` URL. Keyword arguments that are
    :class:`~mssql_pool.ConnectionPool` options (``min_size``, ``max_size``,
    ``timeout``, ``check``, ``reset``, ``configure``, ``name``...) configure the pool
    created here; SQLAlchemy's ``pool_size``/``max_overflow`` (-> ``max_size``),
    ``pool_timeout``, ``pool_recycle`` (-> ``max_lifetime``), ``pool_pre_ping`` (the
    pool checks anyway), ``creator`` (-> ``connect``), ``connect_args`` are translated;
    everything else goes to ``sqlalchemy.create_engine``.

    With ``pool=`` (a :class:`ConnectionPool` or a :class:`MssqlPoolAdapter`) that pool is
    used, and only SQLAlchemy's own arguments are accepted; the URL only names the dialect
    (``"mssql+pymssql://"`` is enough).

    ``engine.dispose()`` drains the pool (connections are reopened on demand); close a
    pool created here with ``engine.pool.mssql_pool.close()`` when done.
    """
    u = _dialect_url(url)
    opts = {k: kwargs.pop(k) for k in list(kwargs) if k in _POOL_OPTIONS}
    sa_pool_args = {k: kwargs.pop(k) for k in list(kwargs) if k in _SA_POOL_ARGS}
    if pool is not None:
        if opts:
            raise ConfigError(sorted(opts)[0], "pool options cannot be combined with pool=; "
                                               "configure the ConnectionPool you pass")
        extra = sorted(set(sa_pool_args) - {"pool_pre_ping", "pool_logging_name", "echo_pool"})
        if extra:
            raise ConfigError(extra[0], "cannot be combined with pool=")
        if "connect_args" in kwargs:
            raise ConfigError("connect_args", "cannot be combined with pool=")
        if isinstance(pool, MssqlPoolAdapter):
            adapter = pool
        elif isinstance(pool, ConnectionPool):
            adapter = MssqlPoolAdapter(pool, **_translate_pool_args(sa_pool_args, {}))
        else:
            raise ConfigError("pool", f"must be a ConnectionPool or MssqlPoolAdapter, "
                                      f"got {type(pool).__name__}")
    else:
        adapter_args = _translate_pool_args(sa_pool_args, opts)
        conninfo = _conninfo(u, kwargs, opts)
        adapter = MssqlPoolAdapter(ConnectionPool(conninfo, **opts), **adapter_args)
    engine = sqlalchemy.create_engine(u, pool=adapter, **kwargs)
    _read_any_version(engine.dialect)
    return engine


_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:\.(\d+))?")


def _read_any_version(dialect: Any) -> None:
    """Let the dialect read the version of engines that are not Microsoft's.

    SQLAlchemy's pymssql dialect parses ``@@VERSION`` with a pattern that wants
    "Microsoft ... - 16.0.x.y"; Babelfish for PostgreSQL answers "Babelfish for
    PostgreSQL with SQL Server Compatibility - 12.0.2000.8 ...", so ``server_version_info``
    was None and the first connect failed. When the pattern finds nothing, the version is
    read from ``SERVERPROPERTY('ProductVersion')``, which every engine speaking T-SQL has.
    (The isolation-level and comment-support probes already fail softly in SQLAlchemy.)

    On Babelfish, SQLAlchemy's "insertmanyvalues" form (``INSERT ... OUTPUT ... SELECT
    ... FROM (VALUES ...) ORDER BY``, used by the ORM to insert several rows at once) is a
    syntax error there, so it is turned off: the ORM inserts row by row.
    """
    original = dialect._get_server_version_info

    def server_version_info(connection: Any) -> tuple[int, ...] | None:
        found: tuple[int, ...] | None = original(connection)
        if found is not None:
            return found
        banner = str(connection.exec_driver_sql("SELECT @@VERSION").scalar() or "")
        if banner.startswith("Babelfish"):
            dialect.use_insertmanyvalues = False
        text = connection.exec_driver_sql(
            "SELECT CAST(SERVERPROPERTY('ProductVersion') AS NVARCHAR(128))").scalar()
        m = _VERSION_RE.search(str(text or ""))
        if m is None:
            return None
        logger.debug("server version read from SERVERPROPERTY: %s", m.group(0))
        return tuple(int(x) for x in m.groups() if x is not None)

    dialect._get_server_version_info = server_version_info


# --------------------------------------------------------------------------- run_transaction

class _Unit:
    """What :mod:`mssql_pool.transaction` sees as a connection: a Session or Connection.

    ``commit``/``rollback``/``invalidate`` map onto SQLAlchemy's; leaving the ``with``
    block closes it (returning its connection to the pool). While it is open, checkouts
    from mssql_pool engines in this thread wait at most ``timeout`` (what is left of the
    policy's deadline).
    """

    __slots__ = ("target", "_outer")

    def __init__(self, open_target: Callable[[], Session | Connection],
                 timeout: float | None) -> None:
        self._outer = getattr(_checkout, "timeout", None)
        _checkout.timeout = timeout
        try:
            self.target = open_target()
        except BaseException:
            _checkout.timeout = self._outer
            raise

    def commit(self) -> None:
        self.target.commit()

    def rollback(self) -> None:
        self.target.rollback()

    def invalidate(self, reason: str | None = None) -> None:
        target = self.target
        if isinstance(target, Session):
            target.invalidate()
        elif not target.closed and not target.invalidated:
            target.invalidate()
        logger.debug("invalidated the unit's connection: %s", reason)

    def __enter__(self) -> _Unit:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.target.close()
        finally:
            _checkout.timeout = self._outer


class _UnitSource:
    """The "pool" :func:`mssql_pool.transaction.run_transaction` draws units from; its
    ``events`` are those of the mssql_pool pool under the engine, when there is one (the
    unit's ``retry_attempt`` and ``commit_unknown`` events go there)."""

    __slots__ = ("_open", "events")

    def __init__(self, open_target: Callable[[], Session | Connection], source: Any) -> None:
        self._open = open_target
        self.events = pool_events(source)

    def connection(self, timeout: float | None = None) -> _Unit:
        return _Unit(self._open, timeout)


def pool_events(source: Any) -> Any:
    """The event bus of the mssql_pool pool behind an engine or a session factory bound to
    one (sync or async), or None (another pool, or a factory we cannot see into)."""
    bind = getattr(source, "kw", {}).get("bind") if not hasattr(source, "pool") else source
    engine = getattr(bind, "sync_engine", bind)          # an AsyncEngine's sync side
    engine = getattr(engine, "engine", engine)           # a Connection's engine
    pool = getattr(getattr(engine, "pool", None), "mssql_pool", None)
    return getattr(pool, "events", None)


def _opener(source: Any) -> Callable[[], Session | Connection]:
    return _opener_for(source, Engine, Session, "a Session",
                       "a sessionmaker (or callable returning a Session) or an Engine")


def _opener_for(source: Any, engine: type[Any], session: type[Any], a_session: str,
                accepted: str) -> Callable[[], Any]:
    """How each attempt of a unit opens what ``fn`` is given (sync and async alike): an
    ``engine``'s ``connect``, or a session factory's call checked to give a new
    ``session``. ``a_session`` and ``accepted`` name them in the errors."""
    if isinstance(source, engine):
        return cast(Callable[[], Any], source.connect)
    if isinstance(source, session):
        raise ConfigError("session_factory_or_engine",
                          f"pass {accepted}, not {a_session}: every attempt needs a fresh one")
    if callable(source):
        def open_session() -> Any:
            made = source()
            if not isinstance(made, session):
                raise ConfigError("session_factory_or_engine",
                                  f"the factory returned {type(made).__name__}, not {a_session}")
            return made
        return open_session
    raise ConfigError("session_factory_or_engine",
                      f"must be {accepted}, got {type(source).__name__}")


def run_transaction(
    session_factory_or_engine: Any,
    fn: Callable[..., T],
    *args: Any,
    policy: RetryPolicy | None = None,
    idempotent: bool = False,
    verify: Callable[[Any], bool] | None = None,
    **kwargs: Any,
) -> T:
    """Run ``fn(session, *args, **kwargs)`` as one transaction, re-running the whole unit
    on retryable errors.

    ``session_factory_or_engine`` is a ``sessionmaker`` (``fn`` gets a new ``Session``
    per attempt) or an ``Engine`` (``fn`` gets a new ``Connection``). ``fn`` does its
    work and does not commit; pending changes are flushed, then committed. On a
    retryable error (1205, 1222, throttling, failover, a dead connection...) the
    attempt's session is rolled back (or its connection invalidated when dead) and
    closed, the policy backs off, and ``fn`` runs again in a fresh session.

    Rules, policy (default :data:`mssql_pool.transaction.TRANSACTION_POLICY`) and the
    ambiguous-commit guarantee are those of :func:`mssql_pool.transaction.run_transaction`
    (it is the loop that runs here): a connection lost while COMMIT was in flight raises
    :class:`~mssql_pool.errors.CommitUnknownError` unless ``idempotent=True`` (re-run) or
    ``verify(session) -> bool`` (run in a fresh session) says whether the unit landed.
    SQLAlchemy's ``DBAPIError`` wrappers are classified by their ``.orig``.
    """
    _check_unit(fn, verify, target="session")
    source = _UnitSource(_opener(session_factory_or_engine), session_factory_or_engine)

    def unit(u: _Unit) -> T:
        result = fn(u.target, *args, **kwargs)
        if isinstance(u.target, Session):
            # Flush here, not inside commit(): a failed flush is an ordinary error
            # (retried when retryable); only the COMMIT itself can be ambiguous.
            u.target.flush()
        return result

    check: Callable[[Any], bool] | None = None
    if verify is not None:
        user_verify = verify

        def check(u: _Unit) -> bool:
            return bool(user_verify(u.target))

    return _run_transaction(source, unit, policy=policy, idempotent=idempotent, verify=check)


# --------------------------------------------------------------------------- asyncio

def create_async_engine(url: str | URL, **kwargs: Any) -> Any:
    """SQLAlchemy's ``AsyncEngine`` on pymssql with an :class:`~mssql_pool.AsyncConnectionPool`
    underneath: see :func:`mssql_pool.sqlalchemy_async.create_async_engine` (needs greenlet:
    ``pip install mssql_pool[asyncio]``)."""
    from .sqlalchemy_async import create_async_engine as _create_async_engine

    return _create_async_engine(url, **kwargs)


async def run_transaction_async(session_factory_or_engine: Any, fn: Callable[..., Any],
                                *args: Any, **kwargs: Any) -> Any:
    """:func:`run_transaction` for ``async_sessionmaker`` / ``AsyncEngine``: see
    :func:`mssql_pool.sqlalchemy_async.run_transaction`."""
    from .sqlalchemy_async import run_transaction as _run_transaction_async

    return await _run_transaction_async(session_factory_or_engine, fn, *args, **kwargs)


__all__ += ["create_async_engine", "run_transaction_async"]
