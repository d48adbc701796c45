"""Round trips per unit of work for mssql_pool, asserted exactly, on every path.

A round trip is one request the server answers; for a given path the count is
deterministic, so the assertions are exact. ``TODAY_AND_LIMIT`` holds, per path, the count
of the current code and the least the wire allows: one round trip per statement the
application sends, plus its COMMIT. Every path is at its limit on the TDS test server
(``BEFORE`` keeps the counts before the round-trip work, for the record and the bench).
How: ``commit()`` is one batch (``COMMIT TRAN;BEGIN TRAN``), run_transaction's checked
COMMIT re-opens pymssql's transaction in the same batch, and a unit that only ran pure
reads (read to the end, no error) on SQL Server goes back without a rollback: the engine
releases read locks at the end of each statement under READ COMMITTED, so pymssql's open
transaction holds nothing. The first rollback each connection needs anyway asks
``@@VERSION`` in the same batch to know the engine.

Counted by the TDS test server's ``requests`` statistic and, when a Babelfish server is
running (see tests/integration/babelfish.py), by a TCP proxy that parses the client's TDS
stream in front of Babelfish: the same units on a real engine. Babelfish keeps the
rollback after reads (``BABELFISH_TODAY``): PostgreSQL holds a read's ACCESS SHARE lock to
the end of the transaction, so skipping it would need a guess.

Every pool here has one connection and a clock that does not move, so nothing happens in
the background and validation (``validate_after``) is skipped deterministically; one test
moves the clock past the window to count the validation trip itself.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pymssql
import pytest
from babelfish import babelfish_url, unique_table
from sqlalchemy import Integer, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from tcp_proxy import TcpProxy

from mssql_pool import ConnectionPool
from mssql_pool.sqlalchemy import create_engine
from mssql_pool.testing import TdsServer
from mssql_pool.testing.round_trips import requests_per_unit, server_requests

pytestmark = pytest.mark.timeout(120)

# path: (round trips per unit today, the limit)
TODAY_AND_LIMIT: dict[str, tuple[int, int]] = {
    "select": (1, 1),             # checkout, SELECT ... WHERE id = %s, fetch, return
    "update": (3, 3),             # checkout, two UPDATEs, commit(), return
    "run_transaction": (3, 3),    # the two UPDATEs through pool.run_transaction
    "select_autocommit": (1, 1),  # the select unit on an autocommit=True pool
    "update_autocommit": (2, 2),  # two UPDATEs on an autocommit=True pool (commit() no-op)
    "core_connect": (1, 1),       # with engine.connect(): SELECT, fetch
    "core_begin": (3, 3),         # with engine.begin(): two UPDATEs
    "orm_read": (1, 1),           # with Session(engine): get()
    "orm_write": (3, 3),          # with Session(engine): two update()s, commit()
}
# Before the round-trip work (pymssql's commit() in two trips, a rollback after every read,
# run_transaction re-opening pymssql's transaction with rollback()).
BEFORE: dict[str, int] = {
    "select": 2, "update": 4, "run_transaction": 5, "select_autocommit": 2,
    "update_autocommit": 2, "core_connect": 2, "core_begin": 4, "orm_read": 2, "orm_write": 4,
}
# Where Babelfish differs: after a read under pymssql's open transaction PostgreSQL still
# holds the table's ACCESS SHARE lock (another session's ALTER TABLE waits), so the pool
# keeps the rollback there (test_babelfish_a_read_unit_leaves_no_lock_behind in
# test_quiet_return_pymssql.py).
BABELFISH_TODAY: dict[str, int] = {"select": 2, "core_connect": 2, "orm_read": 2}
VALIDATION_TRIPS = 1              # a connection idle past validate_after: one check


class FrozenClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_item(table: str) -> tuple[type[DeclarativeBase], Any]:
    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        v: Mapped[int] = mapped_column(Integer)

    return Base, Item


@dataclass
class Target:
    """Where the units run: a URL, the table, a request counter, the ORM class."""

    url: str
    table: str
    count: Callable[[], int]
    item: Any
    clock: FrozenClock

    def pool(self, **kw: Any) -> ConnectionPool:
        kw.setdefault("min_size", 1)
        kw.setdefault("max_size", 1)
        url = self.url + ("?autocommit=true" if kw.pop("autocommit", False) else "")
        pool = ConnectionPool(url, clock=self.clock, name="trips", **kw)
        pool.wait()
        return pool

    babelfish: bool = False

    def engine(self) -> Engine:
        url = self.url.replace("mssql://", "mssql+pymssql://", 1)
        eng = create_engine(url, min_size=1, max_size=1, clock=self.clock, name="trips-sa")
        if self.babelfish:
            # the dialect reads the version from "Microsoft ... - 16.0..." in @@VERSION;
            # Babelfish's says "Babelfish for PostgreSQL ... - 12.0.2000.8"
            def version(connection: Any) -> tuple[int, ...]:
                vers = str(connection.exec_driver_sql("select @@version").scalar())
                m = re.search(r" - (\d+)\.(\d+)\.(\d+)\.(\d+)", vers)
                assert m, vers
                return tuple(int(x) for x in m.groups())

            eng.dialect._get_server_version_info = version  # type: ignore[method-assign]
        return eng


# --------------------------------------------------------------------------- units

def _select(conn: Any, table: str, n: int) -> None:
    cur = conn.cursor()
    cur.execute(f"SELECT id, v FROM {table} WHERE id = %s", (n % 10 + 1,))
    assert len(cur.fetchall()) == 1


def _two_updates(conn: Any, table: str, n: int) -> None:
    cur = conn.cursor()
    cur.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (n % 10 + 1,))
    cur.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", ((n + 3) % 10 + 1,))


def pool_units(t: Target, pool: ConnectionPool) -> dict[str, Callable[[int], None]]:
    def select(n: int) -> None:
        with pool.connection() as conn:
            _select(conn, t.table, n)

    def update_(n: int) -> None:
        with pool.connection() as conn:
            _two_updates(conn, t.table, n)
            conn.commit()

    def run_tx(n: int) -> None:
        pool.run_transaction(_two_updates, t.table, n)

    return {"select": select, "update": update_, "run_transaction": run_tx}


def engine_units(t: Target, eng: Engine) -> dict[str, Callable[[int], None]]:
    sel = text(f"SELECT id, v FROM {t.table} WHERE id = :id")
    upd = text(f"UPDATE {t.table} SET v = v + 1 WHERE id = :id")
    item = t.item

    def core_connect(n: int) -> None:
        with eng.connect() as conn:
            assert len(conn.execute(sel, {"id": n % 10 + 1}).all()) == 1

    def core_begin(n: int) -> None:
        with eng.begin() as conn:
            conn.execute(upd, {"id": n % 10 + 1})
            conn.execute(upd, {"id": (n + 3) % 10 + 1})

    def orm_read(n: int) -> None:
        with Session(eng) as ses:
            assert ses.get(item, n % 10 + 1) is not None

    def orm_write(n: int) -> None:
        with Session(eng) as ses:
            for key in (n % 10 + 1, (n + 3) % 10 + 1):
                ses.execute(update(item).where(item.id == key).values(v=item.v + 1))
            ses.commit()

    return {"core_connect": core_connect, "core_begin": core_begin, "orm_read": orm_read,
            "orm_write": orm_write}


def trips(t: Target, unit: Callable[[int], None], units: int = 10) -> float:
    n = itertools.count()
    got = requests_per_unit(t.count, lambda: unit(next(n)), units=units, warm=2)
    assert got.denominator == 1, f"not a whole number of round trips per unit: {got}"
    return float(got)


def measure(t: Target, path: str) -> float:
    """Round trips per unit of ``path`` on ``t``."""
    if path.endswith("_autocommit"):
        pool = t.pool(autocommit=True)
        try:
            unit = pool_units(t, pool)[path.removesuffix("_autocommit")]
            return trips(t, unit)
        finally:
            pool.close()
    if path in ("select", "update", "run_transaction"):
        pool = t.pool()
        try:
            return trips(t, pool_units(t, pool)[path])
        finally:
            pool.close()
    eng = t.engine()
    try:
        return trips(t, engine_units(t, eng)[path])
    finally:
        eng.dispose()
        eng.pool.mssql_pool.close()  # type: ignore[attr-defined]


def plain_connect(url: str) -> Any:
    """Plain pymssql in autocommit, no pool: works on either server."""
    parts = urlsplit(url)
    return pymssql.connect(server=parts.hostname, port=str(parts.port or 1433),
                           user=unquote(parts.username or ""),
                           password=unquote(parts.password or ""),
                           database=parts.path.lstrip("/") or "master", tds_version="7.4",
                           autocommit=True, login_timeout=10)


def seed(url: str, table: str) -> Any:
    """Create and fill ``table``; its ORM class."""
    with plain_connect(url) as conn:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v INT)")
        cur.execute(f"INSERT INTO {table} (id, v) VALUES "
                    + ", ".join(f"({i}, 0)" for i in range(1, 11)))
    return make_item(table)[1]


def drop(url: str, table: str) -> None:
    with plain_connect(url) as conn:
        conn.cursor().execute(f"DROP TABLE {table}")


# --------------------------------------------------------------------------- the test server

@pytest.fixture
def tds_target(tds_server: TdsServer) -> Target:
    item = seed(tds_server.url, "rt_item")
    return Target(tds_server.url, "rt_item", server_requests(tds_server), item, FrozenClock())


@pytest.mark.parametrize("path", list(TODAY_AND_LIMIT))
def test_round_trips_per_unit_match_todays_table(tds_target: Target, path: str) -> None:
    today, limit = TODAY_AND_LIMIT[path]
    assert today == limit <= BEFORE[path]
    assert measure(tds_target, path) == today


def test_the_validation_trip_comes_only_after_the_validate_after_window(
        tds_target: Target) -> None:
    pool = tds_target.pool(validate_after=0.5)
    try:
        select = pool_units(tds_target, pool)["select"]
        today = TODAY_AND_LIMIT["select"][0]
        assert trips(tds_target, select) == today                # inside the window

        def idle_then_select(n: int) -> None:
            tds_target.clock.now += 0.6                          # past the window
            select(n)

        assert trips(tds_target, idle_then_select) == today + VALIDATION_TRIPS
    finally:
        pool.close()


def test_the_counter_sees_the_same_trips_as_the_wire(tds_server: TdsServer,
                                                     tds_target: Target) -> None:
    """The server's counter and the proxy's tap agree, request for request."""
    with TcpProxy((tds_server.host, tds_server.port), tap=True) as proxy:
        url = tds_target.url.replace(f":{tds_server.port}/", f":{proxy.port}/")
        via = Target(url, tds_target.table, proxy.request_count, tds_target.item,
                     FrozenClock())
        pool = via.pool()
        try:
            unit = pool_units(via, pool)["update"]
            unit(0)
            before, mark = tds_target.count(), proxy.request_count()
            unit(1)
            seen = [str(r) for r in proxy.requests(mark)]
        finally:
            pool.close()
    assert tds_target.count() - before == len(seen) == TODAY_AND_LIMIT["update"][0]
    assert seen[-1] == "COMMIT TRAN;BEGIN TRAN"   # commit(): one trip (pymssql's takes two)


# --------------------------------------------------------------------------- Babelfish

@pytest.fixture(scope="module")
def babelfish_target() -> Iterator[Target]:
    url = babelfish_url()
    if url is None:
        pytest.skip("no Babelfish running (MSSQL_POOL_BABELFISH_URL)")
    table = unique_table("mp_trips")
    item = seed(url, table)
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    try:
        with TcpProxy((parts.hostname or "127.0.0.1", parts.port or 1433), tap=True) as proxy:
            via = url.replace(f"@{netloc[-1]}/", f"@127.0.0.1:{proxy.port}/", 1)
            yield Target(via, table, proxy.request_count, item, FrozenClock(), babelfish=True)
            assert not any(r.text == "?" for r in proxy.requests()), "unreadable requests"
    finally:
        drop(url, table)


@pytest.mark.parametrize("path", list(TODAY_AND_LIMIT))
def test_babelfish_round_trips_per_unit_match_todays_table(babelfish_target: Target,
                                                           path: str) -> None:
    expected = BABELFISH_TODAY.get(path, TODAY_AND_LIMIT[path][0])
    assert measure(babelfish_target, path) == expected
