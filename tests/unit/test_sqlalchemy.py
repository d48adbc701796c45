"""mssql_pool.sqlalchemy without a server: the adapter as a SQLAlchemy pool over the fake
driver, create_engine's argument handling, run_transaction's argument checks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")

from fakedb import FakeClock, FakeDB, pool_factory  # noqa: E402
from sqlalchemy import event, exc  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from mssql_pool import ConnectionPool  # noqa: E402
from mssql_pool.errors import ConfigError  # noqa: E402
from mssql_pool.sqlalchemy import (  # noqa: E402
    MssqlPoolAdapter,
    PoolTimeout,
    as_sqlalchemy_pool,
    create_engine,
    run_transaction,
)

URL = "mssql+pymssql://app:s3cr3t-pw@db.example.com:1533/orders?login_timeout=7"


@pytest.fixture
def db() -> FakeDB:
    return FakeDB(pymssql_like=True)


@pytest.fixture
def make_pool(db: FakeDB) -> Iterator[Callable[..., ConnectionPool]]:
    with pool_factory(db, FakeClock(), min_size=0, max_size=3) as make:
        yield make


def watch(adapter: MssqlPoolAdapter) -> Counter[str]:
    seen: Counter[str] = Counter()
    for name in ("connect", "checkout", "checkin", "reset", "invalidate", "soft_invalidate",
                 "close"):
        event.listen(adapter, name, lambda *a, _n=name: seen.update([_n]))
    return seen


Watched = tuple[ConnectionPool, MssqlPoolAdapter, Counter[str]]


def watched_adapter(make_pool: Callable[..., ConnectionPool]) -> Watched:
    """A new pool, its adapter, and the adapter's events counted by name (:func:`watch`)."""
    pool = make_pool()
    adapter = MssqlPoolAdapter(pool)
    return pool, adapter, watch(adapter)


def lent_with_an_update(make_pool: Callable[..., ConnectionPool]) -> tuple[ConnectionPool, Any]:
    """A new pool, and a connection its adapter lent with an UPDATE in its transaction."""
    pool = make_pool()
    conn = MssqlPoolAdapter(pool).connect()
    conn.cursor().execute("UPDATE t SET x = 1")
    return pool, conn


# --------------------------------------------------------------------------- the adapter

def test_one_record_per_driver_connection(db: FakeDB, make_pool: Callable[..., Any]) -> None:
    adapter = MssqlPoolAdapter(make_pool())
    seen = watch(adapter)
    first = adapter.connect()
    first.info["mine"] = 1
    raw = first.dbapi_connection.raw
    first.close()
    again = adapter.connect()
    assert again.dbapi_connection.raw is raw and again.info == {"mine": 1}
    other = adapter.connect()                        # a second driver connection
    assert other.dbapi_connection.raw is not raw and other.info == {}
    again.close()
    other.close()
    assert seen == Counter(connect=2, checkout=3, checkin=3, reset=3)
    assert db.connects == 2


def test_invalidate_discards_and_soft_invalidate_retires_on_next_checkout(
        db: FakeDB, make_pool: Callable[..., Any]) -> None:
    pool, adapter, seen = watched_adapter(make_pool)
    conn = adapter.connect()
    raw = conn.dbapi_connection.raw
    conn.invalidate()
    assert raw.closed and seen["invalidate"] == 1
    conn.close()
    assert pool.get_stats()["connections_discarded"] == 1
    conn = adapter.connect()
    raw = conn.dbapi_connection.raw
    conn.invalidate(soft=True)
    conn.close()
    assert not raw.closed and seen["soft_invalidate"] == 1
    conn = adapter.connect()
    assert raw.closed and conn.dbapi_connection.raw is not raw
    conn.close()
    assert pool.get_stats()["pool_size"] == 1


def test_a_checkout_listener_disconnect_gets_a_fresh_connection(
        db: FakeDB, make_pool: Callable[..., Any]) -> None:
    pool = make_pool()
    adapter = MssqlPoolAdapter(pool)
    refused = []

    @event.listens_for(adapter, "checkout")
    def refuse_once(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if not refused:
            refused.append(dbapi_conn.raw)
            raise exc.DisconnectionError("stale")

    conn = adapter.connect()
    assert refused[0].closed and conn.dbapi_connection.raw is not refused[0]
    conn.close()
    assert pool.get_stats()["pool_size"] == 1


def test_dispose_drains_and_recreate_shares_pool_and_listeners(
        db: FakeDB, make_pool: Callable[..., Any]) -> None:
    pool, adapter, seen = watched_adapter(make_pool)
    conn = adapter.connect()
    raw = conn.dbapi_connection.raw
    conn.close()
    adapter.dispose()
    assert raw.closed and pool.get_stats()["connections_expired"] == 1
    fresh = adapter.recreate()
    assert isinstance(fresh, MssqlPoolAdapter) and fresh.mssql_pool is pool
    fresh.connect().close()
    assert seen["connect"] == 2


def test_status_and_gauges(make_pool: Callable[..., Any]) -> None:
    adapter = as_sqlalchemy_pool(make_pool(name="inv"))
    assert as_sqlalchemy_pool(adapter) is adapter
    held = adapter.connect()
    assert (adapter.size(), adapter.checkedout(), adapter.checkedin()) == (3, 1, 0)
    held.close()
    assert adapter.checkedin() == 1 and adapter.overflow() == 0
    assert "'inv'" in adapter.status() and "checkouts=1" in adapter.status()
    assert adapter.get_stats()["requests_num"] == 1
    assert "'inv'" in repr(adapter)


def test_rollback_is_one_round_trip_and_clears_the_work(
        db: FakeDB, make_pool: Callable[..., Any]) -> None:
    pool, conn = lent_with_an_update(make_pool)
    before = db.round_trips
    conn.rollback()
    assert db.round_trips == before + 1
    assert db.statements[-1][1].startswith("IF @@TRANCOUNT > 0 ROLLBACK TRAN")
    conn.close()
    assert db.round_trips == before + 1            # nothing left for the pool to reset
    assert pool.get_stats()["resets_rollback"] == 0


def test_commit_is_one_batch_and_leaves_nothing_to_reset(
        db: FakeDB, make_pool: Callable[..., Any]) -> None:
    pool, conn = lent_with_an_update(make_pool)
    before = db.round_trips
    conn.commit()
    assert db.round_trips == before + 1
    assert db.statements[-1][1] == "COMMIT TRAN;BEGIN TRAN"
    conn.close()
    assert db.round_trips == before + 1
    assert pool.get_stats()["resets_none"] == 1


def test_a_failed_commit_is_pymssqls_commit_error(
        db: FakeDB, make_pool: Callable[..., Any]) -> None:
    import pymssql

    pool, conn = lent_with_an_update(make_pool)
    db.kill(conn.dbapi_connection)
    with pytest.raises(pymssql.OperationalError) as info:
        conn.commit()
    assert str(info.value.args[0]).startswith("Cannot commit transaction: ")
    assert info.value.__context__ is not None and info.value.__context__.args[0] == 20047
    conn.close()
    stats = pool.get_stats()
    assert stats["connections_lost"] == 1 and stats["pool_size"] == 0


def test_a_failed_rollback_is_a_dbapi_error_and_marks_the_connection_dead(
        db: FakeDB, make_pool: Callable[..., Any]) -> None:
    import pymssql

    pool, conn = lent_with_an_update(make_pool)
    db.kill(conn.dbapi_connection)
    with pytest.raises(pymssql.OperationalError):
        conn.rollback()
    conn.close()
    assert pool.get_stats()["connections_lost"] == 1 and pool.get_stats()["pool_size"] == 0


def test_checkout_timeout_is_both_ours_and_sqlalchemys(make_pool: Callable[..., Any]) -> None:
    import pickle

    import mssql_pool

    pool = make_pool(min_size=1, max_size=1, timeout=0.0)
    pool.wait(5)     # timeout=0: only an idle connection will do
    adapter = MssqlPoolAdapter(pool)
    held = adapter.connect()
    with pytest.raises(exc.TimeoutError) as info:
        adapter.connect()
    err = info.value
    assert isinstance(err, PoolTimeout) and isinstance(err, mssql_pool.PoolTimeout)
    assert err.max_size == 1 and "no connection" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is PoolTimeout and again.max_size == 1
    held.close()
    adapter.connect().close()


def test_adapter_needs_a_connection_pool() -> None:
    with pytest.raises(ConfigError, match="pool"):
        MssqlPoolAdapter(object())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- create_engine

def _pool_of(engine: Any) -> ConnectionPool:
    assert isinstance(engine.pool, MssqlPoolAdapter)
    return engine.pool.mssql_pool


@pytest.mark.parametrize("scheme", ["mssql", "mssql+pymssql", "MSSQL"])
def test_url_forms_and_translation(scheme: str) -> None:
    url = URL.replace("mssql+pymssql", scheme)
    engine = create_engine(url, background=False, min_size=0, pool_size=3, max_overflow=2,
                           pool_timeout=4.0, pool_recycle=600, pool_pre_ping=True,
                           connect_args={"appname": "inv"})
    pool = _pool_of(engine)
    try:
        assert (engine.dialect.name, engine.dialect.driver) == ("mssql", "pymssql")
        cfg = pool.config
        assert (cfg.max_size, cfg.timeout, cfg.max_lifetime) == (5, 4.0, 600)
        assert cfg.check == "SELECT 1"
        info = cfg.conninfo
        assert isinstance(info, dict)
        assert (info["server"], info["port"], info["database"], info["user"]) == (
            "db.example.com", 1533, "orders", "app")
        assert (info["login_timeout"], info["appname"], info["tds_version"]) == (7, "inv", "7.4")
        assert "s3cr3t-pw" not in repr(cfg) + repr(engine.pool) + engine.pool.status()
    finally:
        pool.close()


def test_creator_becomes_the_pools_connect_factory(db: FakeDB) -> None:
    engine = create_engine("mssql+pymssql://", creator=db.connect, background=False,
                           min_size=0)
    pool = _pool_of(engine)
    try:
        assert pool.config.connect == db.connect and pool.config.conninfo is None
    finally:
        pool.close()


@pytest.mark.parametrize(("kwargs", "parameter"), [
    ({"poolclass": sqlalchemy.pool.QueuePool}, "poolclass"),
    ({"pool_reset_on_return": None}, "pool_reset_on_return"),
    ({"pool_size": -1}, "pool_size"),
    ({"connect_args": "x"}, "connect_args"),
    ({"max_size": 0}, "max_size"),
    ({"check": None, "pool_pre_ping": True}, "pool_pre_ping"),
])
def test_bad_arguments_name_the_parameter(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_engine(URL, background=False, **kwargs)
    assert info.value.parameter == parameter
    assert "s3cr3t-pw" not in str(info.value)


@pytest.mark.parametrize("url", ["postgresql://u:s3cr3t-pw@h/db", "mssql+pyodbc://u:s3cr3t-pw@h",
                                 "::not a url::"])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_engine(url)
    assert info.value.parameter == "url" and "s3cr3t-pw" not in str(info.value)


def test_url_without_host_needs_a_pool() -> None:
    with pytest.raises(ConfigError, match="host"):
        create_engine("mssql+pymssql://")


def test_with_pool_only_sqlalchemy_arguments(make_pool: Callable[..., Any]) -> None:
    pool = make_pool()
    for kwargs, parameter in (({"max_size": 3}, "max_size"), ({"pool_size": 3}, "pool_size"),
                              ({"connect_args": {}}, "connect_args")):
        with pytest.raises(ConfigError) as info:
            create_engine("mssql+pymssql://", pool=pool, **kwargs)
        assert info.value.parameter == parameter
    with pytest.raises(ConfigError, match="pool"):
        create_engine("mssql+pymssql://", pool=object())  # type: ignore[arg-type]
    engine = create_engine("mssql+pymssql://", pool=pool, pool_pre_ping=True,
                           pool_logging_name="inv")
    assert engine.pool.mssql_pool is pool  # type: ignore[attr-defined]
    assert not engine.pool._pre_ping


# --------------------------------------------------------------------------- run_transaction

def test_run_transaction_checks_its_arguments(make_pool: Callable[..., Any]) -> None:
    engine = create_engine("mssql+pymssql://", pool=make_pool(), _initialize=False)
    with pytest.raises(ConfigError) as info:
        run_transaction(Session(engine), lambda s: None)
    assert info.value.parameter == "session_factory_or_engine"
    with pytest.raises(ConfigError, match="session_factory_or_engine"):
        run_transaction(42, lambda s: None)
    with pytest.raises(ConfigError, match="not a Session"):
        run_transaction(lambda: "nope", lambda s: None)
    with pytest.raises(ConfigError, match="fn"):
        run_transaction(engine, "not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="verify"):
        run_transaction(engine, lambda c: None, verify=1)  # type: ignore[arg-type]
