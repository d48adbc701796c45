"""When a connection goes back without a round trip, and when it keeps one (real pymssql).

A unit that only ran pure reads, each read to its end, goes back to the pool with no
rollback on SQL Server (the TDS test server stands in for it): under READ COMMITTED the
engine releases read locks at the end of each statement, so pymssql's open transaction
holds nothing. Everything that could leave something behind keeps the rollback: a result
set not read to its end (the statement may still be running), a locking hint, a second
statement, a failed read, a pool whose reset is not "auto" or whose ``configure`` callback
may have changed the session's baseline, and Babelfish (PostgreSQL keeps a read's table
lock until the transaction ends). Each case is counted exactly with the server's request
counter: 1 round trip per unit when the return is quiet, 2 when the rollback is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pymssql
import pytest
from babelfish import babelfish_url, connect_kwargs, unique_table

from mssql_pool import ConnectionPool
from mssql_pool.testing import TdsServer
from mssql_pool.testing.round_trips import requests_per_unit, server_requests

pytestmark = pytest.mark.timeout(120)

SELECT = "SELECT v FROM qr WHERE id = %s"


class FrozenClock:
    def __call__(self) -> float:
        return 1000.0


@pytest.fixture
def server(tds_server: TdsServer, run_sql: Callable[..., None]) -> TdsServer:
    run_sql(tds_server, "CREATE TABLE qr (id INT PRIMARY KEY, v INT)",
            "INSERT INTO qr VALUES (1, 10), (2, 20), (3, 30)")
    return tds_server


@pytest.fixture
def make_pool(server: TdsServer) -> Iterator[Callable[..., ConnectionPool]]:
    pools: list[ConnectionPool] = []

    def make(query: str = "", **kw: Any) -> ConnectionPool:
        pool = ConnectionPool(server.url + query, min_size=1, max_size=1, clock=FrozenClock(),
                              name="quiet", **kw)
        pool.wait()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def trips(server: TdsServer, pool: ConnectionPool, body: Callable[[Any], None]) -> float:
    def unit() -> None:
        with pool.connection() as conn:
            body(conn.cursor())

    got = requests_per_unit(server_requests(server), unit, units=5, warm=2)
    assert got.denominator == 1, got
    return float(got)


def read_all(cur: Any) -> None:
    cur.execute(SELECT, (1,))
    assert cur.fetchall() == [(10,)]


def read_one_row(cur: Any) -> None:
    cur.execute("SELECT v FROM qr ORDER BY id")
    assert cur.fetchone() == (10,)     # the rest of the result set is never read


def read_iterated(cur: Any) -> None:
    cur.execute("SELECT v FROM qr ORDER BY id")
    assert [row for row in cur] == [(10,), (20,), (30,)]


def read_fetchmany(cur: Any) -> None:
    cur.execute("SELECT v FROM qr ORDER BY id")
    assert len(cur.fetchmany(2)) == 2
    assert len(cur.fetchmany(2)) == 1   # fewer than asked: the end


def read_with(hint: str) -> Callable[[Any], None]:
    def body(cur: Any) -> None:
        cur.execute(f"SELECT v FROM qr WITH ({hint}) WHERE id = %s", (1,))
        cur.fetchall()
    return body


def two_statements(cur: Any) -> None:
    cur.execute("SELECT v FROM qr WHERE id = 1; SELECT v FROM qr WHERE id = 2")
    cur.fetchall()
    assert cur.nextset()
    cur.fetchall()


def failed_read(cur: Any) -> None:
    with pytest.raises(pymssql.ProgrammingError):
        cur.execute("SELECT nope FROM qr")


@pytest.mark.parametrize("body", [read_all, read_iterated, read_fetchmany,
                                  read_with("NOLOCK")], ids=lambda f: f.__name__)
def test_a_unit_of_pure_reads_read_to_the_end_goes_back_without_a_trip(
        server: TdsServer, make_pool: Callable[..., ConnectionPool],
        body: Callable[[Any], None]) -> None:
    pool = make_pool()
    assert trips(server, pool, body) == 1
    assert pool.get_stats()["resets_none"] >= 5


@pytest.mark.parametrize("body", [read_one_row, read_with("UPDLOCK"), read_with("HOLDLOCK"),
                                  read_with("XLOCK"), read_with("SERIALIZABLE"),
                                  two_statements, failed_read],
                         ids=["not read to the end", "UPDLOCK", "HOLDLOCK", "XLOCK",
                              "SERIALIZABLE", "two statements", "failed"])
def test_a_read_that_may_leave_something_keeps_its_rollback(
        server: TdsServer, make_pool: Callable[..., ConnectionPool],
        body: Callable[[Any], None]) -> None:
    assert trips(server, make_pool(), body) == 2


@pytest.mark.parametrize("options", [{"reset": "rollback"},
                                     {"configure": lambda raw: None}],
                         ids=["reset=rollback", "configure"])
def test_a_pool_whose_baseline_is_not_known_keeps_the_rollback(
        server: TdsServer, make_pool: Callable[..., ConnectionPool],
        options: dict[str, Any]) -> None:
    assert trips(server, make_pool(**options), read_all) == 2


def test_the_next_borrower_finds_pymssqls_transaction_and_nothing_else(
        server: TdsServer, make_pool: Callable[..., ConnectionPool]) -> None:
    pool = make_pool()
    for _ in range(3):
        with pool.connection() as conn:
            read_all(conn.cursor())
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT @@TRANCOUNT")
        assert cur.fetchall() == [(1,)]          # pymssql's own BEGIN TRAN, nothing nested
        cur.execute("UPDATE qr SET v = 11 WHERE id = 1")
        conn.commit()
    with pymssql.connect(**server.connect_kwargs(autocommit=True)) as other:
        cur = other.cursor()
        cur.execute("SELECT v FROM qr WHERE id = 1")
        assert cur.fetchall() == [(11,)]         # committed for everyone


def test_an_autocommit_pool_whose_configure_opens_implicit_transactions_is_still_reset(
        server: TdsServer, make_pool: Callable[..., ConnectionPool]) -> None:
    """pymssql's commit() does nothing in autocommit mode; if ``configure`` turned
    implicit transactions on, it leaves the UPDATE's transaction open. The pool cannot see
    that from the proxy, so it keeps the rollback on return."""
    def configure(raw: Any) -> None:
        cur = raw.cursor()
        cur.execute("SET IMPLICIT_TRANSACTIONS ON")
        cur.close()

    pool = make_pool("?autocommit=true", configure=configure)
    with pool.connection() as conn:
        conn.cursor().execute("UPDATE qr SET v = 99 WHERE id = 2")
        conn.commit()                            # a no-op: the transaction stays open
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT @@TRANCOUNT")
        assert cur.fetchall() == [(0,)]
        cur.execute("SELECT v FROM qr WHERE id = 2")
        assert cur.fetchall() == [(20,)]         # the open UPDATE was rolled back


def test_an_autocommit_pool_goes_back_quietly_after_writes_too(
        server: TdsServer, make_pool: Callable[..., ConnectionPool]) -> None:
    pool = make_pool("?autocommit=true")

    def write(cur: Any) -> None:
        cur.execute("UPDATE qr SET v = v + 1 WHERE id = 3")

    assert trips(server, pool, write) == 1
    assert trips(server, pool, read_all) == 1

    def hand_written(cur: Any) -> None:        # transaction control: asked on return
        cur.execute("BEGIN TRAN")
        cur.execute("UPDATE qr SET v = v + 1 WHERE id = 3")

    assert trips(server, pool, hand_written) == 3
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT @@TRANCOUNT")
        assert cur.fetchall() == [(0,)]


# --------------------------------------------------------------------------- Babelfish

@pytest.fixture
def babelfish() -> str:
    url = babelfish_url()
    if url is None:
        pytest.skip("no Babelfish running (MSSQL_POOL_BABELFISH_URL)")
    return url


def test_babelfish_a_read_unit_leaves_no_lock_behind(babelfish: str) -> None:
    """On Babelfish a SELECT under pymssql's open transaction keeps the table's ACCESS SHARE
    lock until the transaction ends; the pool learns the engine and keeps the rollback, so
    another session's ALTER TABLE does not wait for an idle pooled connection."""
    table = unique_table("mp_quiet")
    with pymssql.connect(**connect_kwargs(babelfish, autocommit=True)) as admin:
        admin.cursor().execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v INT)")
        admin.cursor().execute(f"INSERT INTO {table} VALUES (1, 10)")
    pool = ConnectionPool(babelfish, min_size=1, max_size=1, clock=FrozenClock(),
                          name="quiet-bbf")
    try:
        pool.wait()
        for _ in range(3):
            with pool.connection() as conn:
                cur = conn.cursor()
                cur.execute(f"SELECT v FROM {table} WHERE id = 1")
                assert cur.fetchall() == [(10,)]
        with pymssql.connect(**connect_kwargs(babelfish, autocommit=True)) as other:
            cur = other.cursor()
            cur.execute("SET LOCK_TIMEOUT 3000")
            cur.execute(f"ALTER TABLE {table} ADD w INT")   # fails if a lock were held
    finally:
        pool.close()
        with pymssql.connect(**connect_kwargs(babelfish, autocommit=True)) as admin:
            admin.cursor().execute(f"DROP TABLE {table}")


def test_a_proxy_dropped_while_its_rows_are_pending_is_still_found_leaked(
        server: TdsServer, make_pool: Callable[..., ConnectionPool]) -> None:
    """A quiet read whose rows are pending is remembered on the record (by a token):
    the proxy dropped meanwhile is still found and its connection closed."""
    import gc

    pool = make_pool(leak_timeout=60.0)
    conn = pool.getconn()
    cur = conn.cursor()
    cur.execute("SELECT v FROM qr ORDER BY id")
    del cur, conn
    gc.collect()
    pool.run_maintenance()
    assert pool.get_stats()["connections_leaked"] == 1
