"""The async pool on a real server (SQL Server, or Babelfish through MSSQL_POOL_TEST_URL):
a real deadlock between two async units, a KILL mid-transaction, and a statement blocked on
a lock whose task is cancelled (the statement is cancelled on the server, the slot comes
back, nothing it did stays)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import mssql_pool

from .conftest import RealServer, kill_session

pytestmark = pytest.mark.realserver

ACCOUNTS = 4
INITIAL = 1000


def make_pool(server: RealServer, appname: str, **options: Any) -> mssql_pool.AsyncConnectionPool:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", 4)
    options.setdefault("timeout", 30.0)
    options.setdefault("name", appname)
    return mssql_pool.AsyncConnectionPool(server.connect_kwargs(appname=appname, timeout=30),
                                          **options)


def create_accounts(server: RealServer, table: str) -> None:
    admin = server.connect()
    try:
        cur = admin.cursor()
        cur.execute(f"CREATE TABLE dbo.{table} (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
        cur.execute(f"CREATE TABLE dbo.{table}_ledger (tid BIGINT NOT NULL, amount INT NOT NULL)")
        for i in range(ACCOUNTS):
            cur.execute(f"INSERT INTO dbo.{table} VALUES (%d, %d)", (i, INITIAL))
    finally:
        admin.close()


def drop_ledger(server: RealServer, table: str) -> None:
    admin = server.connect()
    try:
        admin.cursor().execute(f"DROP TABLE IF EXISTS dbo.{table}_ledger")
    finally:
        admin.close()


def test_async_units_survive_a_real_deadlock(real_server: RealServer, table_name: str) -> None:
    create_accounts(real_server, table_name)
    attempts = {0: 0, 1: 0}

    async def main() -> None:
        both = asyncio.Barrier(2) if hasattr(asyncio, "Barrier") else None
        locked = [asyncio.Event(), asyncio.Event()]

        async def unit(conn: Any, who: int, first: int, second: int) -> None:
            attempts[who] += 1
            cur = conn.cursor()
            await cur.execute(f"UPDATE dbo.{table_name} SET balance = balance - 5 "
                              f"WHERE id = %d", (first,))
            if attempts[who] == 1:     # both hold their first lock: a certain deadlock
                if both is not None:
                    await both.wait()
                else:
                    locked[who].set()
                    await locked[1 - who].wait()
            await cur.execute(f"UPDATE dbo.{table_name} SET balance = balance + 5 "
                              f"WHERE id = %d", (second,))
            await cur.execute(f"INSERT INTO dbo.{table_name}_ledger VALUES (%d, 5)", (who,))

        async with make_pool(real_server, "mp-async-deadlock", min_size=2, max_size=2) as pool:
            await asyncio.wait_for(asyncio.gather(pool.run_transaction(unit, 0, 0, 1),
                                                  pool.run_transaction(unit, 1, 1, 0)), 90)
            async with pool.connection() as conn:
                cur = conn.cursor()
                await cur.execute(f"SELECT tid, COUNT(*) FROM dbo.{table_name}_ledger "
                                  "GROUP BY tid")
                assert sorted(await cur.fetchall()) == [(0, 1), (1, 1)]
                await cur.execute(f"SELECT SUM(balance) FROM dbo.{table_name}")
                assert (await cur.fetchone())[0] == ACCOUNTS * INITIAL

    try:
        asyncio.run(main())
        assert sorted(attempts.values()) == [1, 2]     # one victim, re-run once
    finally:
        drop_ledger(real_server, table_name)


def test_async_kill_mid_transaction_reruns_the_unit(real_server: RealServer,
                                                    table_name: str) -> None:
    create_accounts(real_server, table_name)
    calls = 0

    async def unit(conn: Any) -> None:
        nonlocal calls
        calls += 1
        cur = conn.cursor()
        await cur.execute(f"UPDATE dbo.{table_name} SET balance = balance - 7 WHERE id = 0")
        if calls == 1:
            await cur.execute("SELECT @@SPID")
            spid = (await cur.fetchone())[0]
            await asyncio.to_thread(kill_session, real_server, spid)
        await cur.execute(f"UPDATE dbo.{table_name} SET balance = balance + 7 WHERE id = 1")
        await cur.execute(f"INSERT INTO dbo.{table_name}_ledger VALUES (42, 7)")

    async def main() -> None:
        async with make_pool(real_server, "mp-async-kill", validate_after=0.0) as pool:
            await pool.run_transaction(unit)
            async with pool.connection() as conn:
                cur = conn.cursor()
                await cur.execute(f"SELECT COUNT(*) FROM dbo.{table_name}_ledger WHERE tid = 42")
                assert (await cur.fetchone())[0] == 1
                await cur.execute(f"SELECT balance FROM dbo.{table_name} WHERE id IN (0, 1) "
                                  "ORDER BY id")
                assert [r[0] for r in await cur.fetchall()] == [INITIAL - 7, INITIAL + 7]

    try:
        asyncio.run(main())
        assert calls == 2
    finally:
        drop_ledger(real_server, table_name)


def test_async_cancel_of_a_blocked_statement(real_server: RealServer, table_name: str) -> None:
    """A statement waits on a row another session locked; its task is cancelled: the server
    cancels the statement, the connection comes back rolled back, and the row keeps the
    value the lock holder commits.

    Babelfish 4.2 does not answer a TDS attention while a statement waits on a lock (seen in
    a FreeTDS packet trace): the statement runs on until pymssql's query timeout, after which
    the pool discards the connection (the documented fallback, docs/asyncio.md). The query
    timeout here is short so that the fallback costs seconds, not the default 30."""
    create_accounts(real_server, table_name)
    attention = not real_server.is_babelfish
    holder = real_server.connect(autocommit=False)
    try:
        hcur = holder.cursor()
        hcur.execute(f"UPDATE dbo.{table_name} SET balance = 1 WHERE id = 2")

        async def main() -> dict[str, int]:
            conninfo = real_server.connect_kwargs(appname="mp-async-cancel",
                                                  timeout=30 if attention else 8)
            async with mssql_pool.AsyncConnectionPool(conninfo, min_size=1, max_size=1,
                                                      timeout=30.0, cancel_timeout=2.0,
                                                      name="mp-async-cancel") as pool:
                sending = asyncio.Event()

                async def blocked() -> None:
                    async with pool.connection() as conn:
                        cur = conn.cursor()
                        await cur.execute(f"UPDATE dbo.{table_name} SET balance = balance + 1 "
                                          "WHERE id = 3")
                        sending.set()
                        await cur.execute(f"UPDATE dbo.{table_name} SET balance = 99 "
                                          "WHERE id = 2")          # waits for the lock

                task = asyncio.create_task(blocked())
                await asyncio.wait_for(sending.wait(), 30)  # checked out, first row updated
                await asyncio.sleep(1.0)                     # the statement reaches the lock
                assert not task.done()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await asyncio.to_thread(holder.commit)
                async with pool.connection(timeout=30) as conn:   # the only slot: back
                    cur = conn.cursor()
                    await cur.execute(f"SELECT id, balance FROM dbo.{table_name} "
                                      "WHERE id IN (2, 3) ORDER BY id")
                    assert await cur.fetchall() == [(2, 1), (3, INITIAL)]
                return pool.get_stats()

        stats = asyncio.run(main())
        assert stats["statements_cancelled"] == 1
        # With an answered attention the connection came back and stayed; without, the
        # query timeout ended the statement and its connection was discarded.
        assert stats["connections_discarded"] == (0 if attention else 1), stats
    finally:
        holder.close()
