"""python-tds (pytds) against the test server: RPC parameters, Transaction Manager requests,
attention, stored procedures; and pymssql's callproc (an RPC of a user procedure)."""

from __future__ import annotations

import time
from typing import Any

import pymssql
import pytds
import pytds.extensions
import pytest
from pytds import tds_base

from mssql_pool.testing import TdsServer

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

VERSIONS = {"7.1": tds_base.TDS71, "7.2": tds_base.TDS72, "7.3": tds_base.TDS73,
            "7.4": tds_base.TDS74}


def connect(server: TdsServer, **kw: Any) -> Any:
    return pytds.connect(dsn=server.host, port=server.port, user=server.user,
                         password=server.password, database=server.database, **kw)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_parameters_arrive_as_rpc_with_types(tds_server: TdsServer, version: str) -> None:
    conn = connect(tds_server, autocommit=True, tds_version=VERSIONS[version])
    cur = conn.cursor()
    cur.execute("CREATE TABLE p (id INT PRIMARY KEY, name NVARCHAR(20), amount DECIMAL(9,2))")
    before = tds_server.stats()
    cur.executemany("INSERT INTO p VALUES (%s, %s, %s)",
                    [(i, f"n{i}", f"{i}.25") for i in range(1, 6)])
    cur.execute("SELECT name, amount FROM p WHERE id > %(low)s AND name <> %(skip)s "
                "ORDER BY id", {"low": 2, "skip": "n4"})
    assert [tuple(r) for r in cur.fetchall()] == [("n3", 3.25), ("n5", 5.25)]
    after = tds_server.stats()
    assert after["rpcs"] - before["rpcs"] == 6  # five inserts and the select: sp_executesql
    assert after["batches"] == before["batches"]
    cur.execute("SELECT %s + 1, %s", (41, None))
    assert tuple(cur.fetchone()) == (42, None)
    conn.close()


def test_transaction_manager_requests_commit_and_roll_back(tds_server: TdsServer) -> None:
    setup = connect(tds_server, autocommit=True)
    setup.cursor().execute("CREATE TABLE tm (id INT PRIMARY KEY)")
    conn = connect(tds_server, autocommit=False)
    cur = conn.cursor()
    before = tds_server.stats()["transactions"]
    cur.execute("INSERT INTO tm VALUES (%s)", (1,))
    conn.commit()  # a TM COMMIT request (0x0E), then a TM BEGIN
    cur.execute("INSERT INTO tm VALUES (%s)", (2,))
    cur.execute("SELECT @@TRANCOUNT")
    assert cur.fetchone()[0] == 1
    conn.rollback()
    assert tds_server.stats()["transactions"] - before >= 2
    other = setup.cursor()
    other.execute("SELECT id FROM tm ORDER BY id")
    assert [r[0] for r in other.fetchall()] == [1]
    conn.close()
    setup.close()


def test_transaction_isolation_level_of_tm_begin(tds_server: TdsServer) -> None:
    conn = connect(tds_server, autocommit=False,
                   isolation_level=pytds.extensions.ISOLATION_LEVEL_SERIALIZABLE)
    cur = conn.cursor()
    cur.execute("SELECT transaction_isolation_level FROM sys.dm_exec_sessions "
                "WHERE session_id = @@SPID")
    assert cur.fetchone()[0] == 4
    conn.close()


def test_timeout_sends_attention_and_the_connection_stays_usable(tds_server: TdsServer) -> None:
    conn = connect(tds_server, autocommit=True, timeout=0.5)
    cur = conn.cursor()
    tds_server.delay_next(10, match=r"SELECT 42")
    before = tds_server.stats()["attentions"]
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        cur.execute("SELECT 42")
    assert time.monotonic() - start < 5
    deadline = time.monotonic() + 5
    while tds_server.stats()["attentions"] == before and time.monotonic() < deadline:
        time.sleep(0.01)  # the server counts the attention when it has answered it
    assert tds_server.stats()["attentions"] > before
    cur.execute("SELECT %s", (7,))
    assert cur.fetchone()[0] == 7
    conn.close()


def test_errors_keep_their_numbers(tds_server: TdsServer) -> None:
    conn = connect(tds_server, autocommit=True)
    cur = conn.cursor()
    with pytest.raises(pytds.ProgrammingError) as info:
        cur.execute("SELECT * FROM nowhere WHERE id = %s", (1,))
    assert info.value.msg_no == 208
    cur.execute("CREATE TABLE u (id INT PRIMARY KEY)")
    cur.execute("INSERT INTO u VALUES (%s)", (1,))
    with pytest.raises(pytds.IntegrityError) as dup:
        cur.execute("INSERT INTO u VALUES (%s)", (1,))
    assert dup.value.msg_no == 2627
    conn.close()


PROC = ("CREATE PROCEDURE dbo.orders_since @since INT, @limit INT = 10 AS BEGIN "
        "SET NOCOUNT ON; SELECT TOP (@limit) id, item FROM orders WHERE id >= @since "
        "ORDER BY id; END")


@pytest.fixture
def orders(tds_server: TdsServer) -> TdsServer:
    conn = pymssql.connect(**tds_server.connect_kwargs(autocommit=True))
    cur = conn.cursor()
    cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, item NVARCHAR(20))")
    cur.execute("INSERT INTO orders VALUES (1, N'tea'), (2, N'cake'), (3, N'jam')")
    cur.execute(PROC)
    conn.close()
    return tds_server


def test_pymssql_callproc_runs_a_user_procedure(orders: TdsServer) -> None:
    conn = pymssql.connect(**orders.connect_kwargs(autocommit=True))
    cur = conn.cursor()
    rpcs = orders.stats()["rpcs"]
    cur.callproc("orders_since", (2,))
    assert cur.fetchall() == [(2, "cake"), (3, "jam")]
    cur.callproc("dbo.orders_since", (1, 1))
    assert cur.fetchall() == [(1, "tea")]
    assert orders.stats()["rpcs"] - rpcs == 2
    with pytest.raises(pymssql.Error) as missing:
        cur.callproc("no_such_proc", ())
    assert missing.value.args[0] == 2812
    with pytest.raises(pymssql.Error) as no_args:
        cur.callproc("orders_since", ())
    assert no_args.value.args[0] == 201
    cur.execute("EXEC orders_since @since = 3")
    assert cur.fetchall() == [(3, "jam")]
    conn.close()


def test_pytds_callproc_and_return_status(orders: TdsServer) -> None:
    conn = connect(orders, autocommit=True)
    cur = conn.cursor()
    cur.callproc("orders_since", (1, 2))
    assert [tuple(r) for r in cur.fetchall()] == [(1, "tea"), (2, "cake")]
    assert cur.get_proc_return_status() == 0
    cur.execute("ALTER PROCEDURE orders_since @since INT AS BEGIN SELECT COUNT(*) FROM orders "
                "WHERE id >= @since; RETURN @since + 40; END")
    cur.callproc("orders_since", (2,))
    assert cur.fetchone()[0] == 2
    assert cur.get_proc_return_status() == 42
    cur.execute("DROP PROCEDURE orders_since")
    with pytest.raises(pytds.ProgrammingError):
        cur.callproc("orders_since", (2,))
    conn.close()
