"""mssql_pool under a SQLAlchemy Engine, with real pymssql against the TDS test server.

Pool events, disconnect handling, dispose(), status(), recovery after KILL and restart, and
the round trips one unit costs compared with mssql_pool directly and stock QueuePool.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")

from sqlalchemy import event, exc, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from mssql_pool import ConnectionPool  # noqa: E402
from mssql_pool.sqlalchemy import (  # noqa: E402
    MssqlPoolAdapter,
    as_sqlalchemy_pool,
    create_engine,
)
from mssql_pool.testing import TdsServer  # noqa: E402

pytestmark = pytest.mark.timeout(60)

EVENTS = ("connect", "checkout", "checkin", "reset", "invalidate", "close")


def sa_url(server: TdsServer, scheme: str = "mssql+pymssql") -> str:
    return server.url.replace("mssql://", f"{scheme}://", 1)


@pytest.fixture
def engines() -> Iterator[Callable[..., Engine]]:
    """Build engines on mssql_pool; their pools are closed after the test."""
    made: list[Engine] = []

    def make(server: TdsServer, **kw: Any) -> Engine:
        kw.setdefault("max_size", 4)
        kw.setdefault("timeout", 10.0)
        eng = create_engine(sa_url(server), **kw)
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.dispose()
        assert isinstance(eng.pool, MssqlPoolAdapter)
        eng.pool.mssql_pool.close()


def watch(eng: Engine) -> Counter[str]:
    seen: Counter[str] = Counter()
    for name in EVENTS:
        event.listen(eng.pool, name, lambda *a, _n=name: seen.update([_n]))
    return seen


def select_unit(eng: Engine) -> None:
    with eng.connect() as conn:
        assert conn.execute(text("SELECT 1 AS x")).all() == [(1,)]


def requests_per_unit(server: TdsServer, unit: Callable[[], None], n: int = 10) -> float:
    unit()   # warm: connect and dialect initialisation are not part of a unit
    before = server.stats()["requests"]
    for _ in range(n):
        unit()
    return (server.stats()["requests"] - before) / n


# --------------------------------------------------------------------------- construction

@pytest.mark.parametrize("scheme", ["mssql", "mssql+pymssql"])
def test_both_url_forms_give_a_pymssql_engine_on_our_pool(
        tds_server: TdsServer, engines: Callable[..., Engine], scheme: str) -> None:
    eng = engines(tds_server) if scheme == "mssql+pymssql" else None
    if eng is None:
        eng = create_engine(sa_url(tds_server, scheme), max_size=2)
    try:
        assert isinstance(eng, Engine)
        assert (eng.dialect.name, eng.dialect.driver) == ("mssql", "pymssql")
        assert isinstance(eng.pool, MssqlPoolAdapter)
        select_unit(eng)
        assert eng.pool.mssql_pool.get_stats()["requests_num"] >= 1
        assert "Secret123!" not in repr(eng.pool) + repr(eng.pool.mssql_pool.config)
    finally:
        if scheme == "mssql":
            eng.pool.mssql_pool.close()


def test_engine_on_an_existing_pool(tds_server: TdsServer) -> None:
    with ConnectionPool(tds_server.url, max_size=3, name="held") as pool:
        for given in (pool, as_sqlalchemy_pool(pool), MssqlPoolAdapter(pool)):
            eng = create_engine("mssql+pymssql://", pool=given)
            assert isinstance(eng.pool, MssqlPoolAdapter) and eng.pool.mssql_pool is pool
            before = pool.get_stats()["requests_num"]
            select_unit(eng)
            assert pool.get_stats()["requests_num"] == before + 1
        assert as_sqlalchemy_pool(eng.pool) is eng.pool
        assert "'held'" in eng.pool.status()


# --------------------------------------------------------------------------- events

def test_pool_events_fire_and_connect_once_per_driver_connection(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0)
    seen = watch(eng)
    infos = []

    @event.listens_for(eng.pool, "checkout")
    def remember(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        record.info.setdefault("token", object())
        infos.append(record.info["token"])

    for _ in range(3):
        select_unit(eng)
    assert seen["connect"] == 1            # one driver connection, seen once
    assert seen["checkout"] == seen["checkin"] == seen["reset"] == 3
    assert len(set(map(id, infos))) == 1   # record.info lives as long as the connection
    # Two at once: a second driver connection, a second connect event.
    with eng.connect() as a, eng.connect() as b:
        a.execute(text("SELECT 1")).all()
        b.execute(text("SELECT 1")).all()
    assert seen["connect"] == 2
    assert seen["invalidate"] == 0


def test_invalidate_through_sqlalchemy_discards_the_connection(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0)
    seen = watch(eng)
    pool = eng.pool.mssql_pool
    with eng.connect() as conn:
        conn.execute(text("SELECT 1")).all()
        spid = conn.execute(text("SELECT @@SPID")).scalar()
        conn.invalidate()
    assert seen["invalidate"] == 1
    stats = pool.get_stats()
    assert stats["connections_discarded"] == 1 and stats["pool_size"] == 0
    with eng.connect() as conn:
        assert conn.execute(text("SELECT @@SPID")).scalar() != spid
    assert seen["connect"] == 2


# --------------------------------------------------------------------------- disconnects

def test_kill_all_is_a_disconnect_sqlalchemy_sees_and_the_pool_heals(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0)
    seen = watch(eng)
    pool = eng.pool.mssql_pool
    with eng.connect() as other:                          # a second, idle driver connection
        other.execute(text("SELECT 1")).all()
        with eng.connect() as conn:
            conn.execute(text("SELECT 1")).all()
            other.rollback()
            other.close()
            assert tds_server.kill_all() == 2             # both sessions killed
            with pytest.raises(exc.DBAPIError) as info:   # mid-checkout: nothing to hide
                conn.execute(text("SELECT 1")).all()
    assert info.value.connection_invalidated               # SQLAlchemy: a disconnect
    assert seen["invalidate"] == 1
    assert pool.get_stats()["connections_discarded"] >= 1
    # The pool discarded it, and checks the older idle one before handing it out again:
    # every following unit works, without another error.
    for _ in range(4):
        select_unit(eng)
    stats = pool.get_stats()
    assert stats["connections_lost"] >= 2 and stats["checks_failed"] >= 1
    assert seen["invalidate"] == 1


def test_kill_all_is_invisible_with_validation_on_every_checkout(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0, validate_after=0.0)
    select_unit(eng)
    tds_server.kill_all()
    select_unit(eng)                                       # no error reaches the caller
    assert eng.pool.mssql_pool.get_stats()["checks_failed"] == 1


def test_recovers_after_a_server_restart(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0)
    select_unit(eng)
    with eng.connect() as conn:
        conn.execute(text("SELECT 1")).all()
        tds_server.stop()
        with pytest.raises(exc.DBAPIError) as info:
            conn.execute(text("SELECT 1")).all()
    assert info.value.connection_invalidated
    tds_server.start()
    for _ in range(3):
        select_unit(eng)
    assert tds_server.stats()["logins"] >= 2


def test_engine_waits_for_a_server_that_comes_back(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0, validate_after=0.0, timeout=10.0)
    select_unit(eng)
    tds_server.stop()
    timer = threading.Timer(0.5, tds_server.start)
    timer.start()
    try:
        select_unit(eng)   # the check fails, reconnects back off until the server is up
    finally:
        timer.cancel()
        timer.join()


# --------------------------------------------------------------------------- dispose, status

def test_dispose_retires_the_pools_connections(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0)
    seen = watch(eng)
    select_unit(eng)
    pool = eng.pool.mssql_pool
    old_adapter = eng.pool
    assert len(tds_server.sessions()) == 1
    eng.dispose()
    assert eng.pool is not old_adapter and eng.pool.mssql_pool is pool
    assert pool.get_stats()["pool_size"] == 0
    assert pool.get_stats()["connections_expired"] == 1
    select_unit(eng)
    assert seen["connect"] == 2        # listeners carried over to the recreated pool
    assert pool.get_stats()["connections_num"] == 2


def test_dispose_retires_busy_connections_when_they_come_back(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0)
    pool = eng.pool.mssql_pool
    with eng.connect() as conn:
        conn.execute(text("SELECT 1")).all()
        eng.dispose()
        assert pool.get_stats()["pool_size"] == 1
    assert pool.get_stats()["pool_size"] == 0


def test_status_reads_the_pool_stats(tds_server: TdsServer,
                                     engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0, max_size=3, name="orders")
    select_unit(eng)
    select_unit(eng)
    status = eng.pool.status()
    assert "'orders'" in status and "size=1/3" in status and "checkouts=2" in status
    adapter = eng.pool
    assert isinstance(adapter, MssqlPoolAdapter)
    assert (adapter.size(), adapter.checkedin(), adapter.checkedout()) == (3, 1, 0)
    assert adapter.get_stats()["requests_num"] == 2


# --------------------------------------------------------------------------- round trips

def test_a_select_unit_costs_what_it_costs_through_the_pool_directly(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0)
    pinged = engines(tds_server, min_size=0, pool_pre_ping=True)
    pool = eng.pool.mssql_pool

    def direct() -> None:
        with pool.connection() as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1 AS x")
            assert cur.fetchall() == [(1,)]

    ours = requests_per_unit(tds_server, lambda: select_unit(eng))
    assert ours == requests_per_unit(tds_server, direct)
    assert requests_per_unit(tds_server, lambda: select_unit(pinged)) == ours

    stock = sqlalchemy.create_engine(sa_url(tds_server))
    stock_ping = sqlalchemy.create_engine(sa_url(tds_server), pool_pre_ping=True)
    try:
        queue_pool = requests_per_unit(tds_server, lambda: select_unit(stock))
        queue_pool_ping = requests_per_unit(tds_server, lambda: select_unit(stock_ping))
    finally:
        stock.dispose()
        stock_ping.dispose()
    assert ours < queue_pool < queue_pool_ping
    assert ours == 1                      # the SELECT: a pure read needs no rollback


def test_returning_an_unused_connection_costs_nothing(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0)
    select_unit(eng)

    def idle_unit() -> None:
        with eng.connect():
            pass

    assert requests_per_unit(tds_server, idle_unit) == 0
    stock = sqlalchemy.create_engine(sa_url(tds_server))
    try:
        def stock_idle_unit() -> None:
            with stock.connect():
                pass

        # QueuePool's reset on return rolls back even what never began
        assert requests_per_unit(tds_server, stock_idle_unit) == 2
    finally:
        stock.dispose()


def test_raw_connection_work_is_rolled_back_once_by_the_pool(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INT PRIMARY KEY)"))

    def raw_unit() -> None:
        raw = eng.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("INSERT INTO t (id) VALUES (1)")
        finally:
            raw.close()         # never committed: the pool rolls it back, SQLAlchemy doesn't

    assert requests_per_unit(tds_server, raw_unit) == 2
    with eng.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM t")).scalar() == 0


# --------------------------------------------------------------------------- session baseline

ISOLATION = ("SELECT transaction_isolation_level FROM sys.dm_exec_sessions "
             "WHERE session_id = @@SPID")


def isolation(eng: Engine) -> int:
    with eng.connect() as conn:
        return int(conn.execute(text(ISOLATION)).scalar_one())


def test_engine_isolation_level_holds_on_every_checkout(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0, isolation_level="SERIALIZABLE")
    assert [isolation(eng) for _ in range(3)] == [4, 4, 4]
    # set by the connect event: the connection's baseline, not a change to reset
    assert eng.pool.mssql_pool.get_stats()["resets_full"] == 0
    with eng.connect().execution_options(isolation_level="READ UNCOMMITTED") as conn:
        assert conn.execute(text(ISOLATION)).scalar_one() == 1
    assert isolation(eng) == 4


def test_session_state_from_a_connect_listener_survives_a_borrowers_change(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0)

    @event.listens_for(eng.pool, "connect")
    def repeatable_read(dbapi_conn: Any, record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    assert isolation(eng) == 3
    with eng.connect() as conn:        # a borrower changes session state...
        conn.execute(text("SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED"))
        assert conn.execute(text(ISOLATION)).scalar_one() == 1
    stats = eng.pool.mssql_pool.get_stats()
    assert stats["resets_full"] == 1 and stats["connections_num"] == 1
    assert isolation(eng) == 3         # ...the reset undid it, the baseline came back


def test_a_dead_connection_is_never_swapped_for_one_without_the_baseline(
        tds_server: TdsServer, engines: Callable[..., Engine]) -> None:
    eng = engines(tds_server, min_size=0, isolation_level="SERIALIZABLE")
    with eng.connect() as a, eng.connect() as b:          # two driver connections
        a.execute(text("SELECT 1")).all()
        b.execute(text("SELECT 1")).all()
    tds_server.kill_all()
    levels = []
    for _ in range(3):
        try:
            levels.append(isolation(eng))
        except exc.DBAPIError as e:                       # the caller may see the disconnect,
            assert e.connection_invalidated
    assert levels and set(levels) == {4}                  # but never another isolation level
