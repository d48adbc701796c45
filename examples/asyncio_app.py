"""A FastAPI-style service on AsyncConnectionPool, with no web framework needed to run it.

The handlers are plain ``async def`` functions of the shape FastAPI and Starlette call
(``get_account(account_id)``, ``post_transfer(body)``); ``lifespan`` opens and closes the
pool as a FastAPI lifespan would. ``main()`` starts the TDS test server, runs the
lifespan and calls the handlers concurrently the way a server would, including a request
whose client goes away (its task is cancelled mid-query).

    python examples/asyncio_app.py

With FastAPI installed, the same functions are routes::

    app = FastAPI(lifespan=lifespan)
    app.get("/accounts/{account_id}")(get_account)
    app.post("/transfers")(post_transfer)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from mssql_pool import AsyncConnectionPool
from mssql_pool.aio import AsyncConnection

pool: AsyncConnectionPool | None = None


@contextlib.asynccontextmanager
async def lifespan(app: Any = None) -> AsyncIterator[None]:
    """Open the pool when the application starts, close it (joining its threads) at exit."""
    global pool
    url = os.environ.get("MSSQL_URL", "mssql://sa:Secret123!@127.0.0.1:1433/master")
    pool = AsyncConnectionPool(url, min_size=2, max_size=8, timeout=5, name="api")
    async with pool:
        await pool.wait(10)
        yield
    pool = None


async def get_account(account_id: int) -> dict[str, Any]:
    """GET /accounts/{account_id}"""
    assert pool is not None
    async with pool.connection() as conn:
        cur = conn.cursor()
        await cur.execute("SELECT id, bal FROM acct WHERE id = %s", (account_id,))
        row = await cur.fetchone()
    if row is None:
        return {"status": 404}
    return {"id": row[0], "balance": row[1]}


async def transfer(conn: AsyncConnection, src: int, dst: int, amount: int) -> None:
    cur = conn.cursor()
    await cur.execute("UPDATE acct SET bal = bal - %s WHERE id = %s", (amount, src))
    await cur.execute("UPDATE acct SET bal = bal + %s WHERE id = %s", (amount, dst))


async def post_transfer(body: dict[str, int]) -> dict[str, str]:
    """POST /transfers {"src": 1, "dst": 2, "amount": 100}: one transaction, re-run as a
    whole on deadlocks, failovers, lost connections."""
    assert pool is not None
    await pool.run_transaction(transfer, body["src"], body["dst"], body["amount"])
    return {"status": "ok"}


async def slow_report() -> dict[str, str]:
    """A request whose client gives up: cancelling its task cancels the query on the
    server and the connection goes back to the pool, rolled back."""
    assert pool is not None
    async with pool.connection() as conn:
        await conn.cursor().execute("WAITFOR DELAY '00:00:10'")
    return {"status": "ok"}


async def demo() -> None:
    async with lifespan():
        assert pool is not None
        async with pool.connection() as conn:
            cur = conn.cursor()
            await cur.execute("CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL)")
            await cur.execute("INSERT INTO acct VALUES (1, 500), (2, 500)")
            await conn.commit()
        results = await asyncio.gather(
            *(post_transfer({"src": 1 + i % 2, "dst": 2 - i % 2, "amount": 10})
              for i in range(20)))
        print("transfers:", len(results), "ok")
        print("accounts:", await get_account(1), await get_account(2))
        report = asyncio.create_task(slow_report())
        await asyncio.sleep(0.2)
        report.cancel()                      # the client went away
        with contextlib.suppress(asyncio.CancelledError):
            await report
        print("after a cancelled request:", pool)
        print("statements cancelled on the server:", pool.get_stats()["statements_cancelled"])


def main() -> None:
    from mssql_pool.testing import TdsServer

    with TdsServer() as server:
        os.environ["MSSQL_URL"] = server.url
        asyncio.run(demo())


if __name__ == "__main__":
    main()
