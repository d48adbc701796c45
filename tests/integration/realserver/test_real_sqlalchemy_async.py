"""SQLAlchemy's AsyncEngine on the async pool (``mssql_pool.sqlalchemy_async``) against a real
server: the first connect (the dialect's version), Core writes in ``engine.begin()``, an ORM
``AsyncSession`` unit, and a real deadlock re-run through the async ``run_transaction``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")
pytest.importorskip("greenlet")

from sqlalchemy import func, insert, select, text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker  # noqa: E402

from mssql_pool.sqlalchemy_async import create_async_engine, run_transaction  # noqa: E402

from .conftest import RealServer  # noqa: E402
from .test_real_sqlalchemy import Base  # noqa: E402 - the same tables, one more engine
from .test_real_sqlalchemy import Owner as Account  # noqa: E402

pytestmark = [pytest.mark.realserver, pytest.mark.timeout(120)]


def run_on_engine(server: RealServer, body: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    """``body(engine)`` on a fresh AsyncEngine; the tables are dropped and the pool closed
    afterwards."""
    async def main() -> None:
        url = server.url.replace("mssql://", "mssql+pymssql://", 1)
        engine = create_async_engine(url, min_size=1, max_size=4, timeout=30.0,
                                     name="mp-sqla-async",
                                     connect_args={"tds_version": "7.4", "login_timeout": 10})
        try:
            await body(engine)
        finally:
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(Base.metadata.drop_all)
            finally:
                await engine.dispose()
                await engine.pool.mssql_pool.close()

    asyncio.run(main())


async def balances(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(Account.balance).order_by(Account.id))
        return [r[0] for r in rows]


async def seeded(engine: AsyncEngine, *accounts: Account) -> async_sessionmaker[AsyncSession]:
    """Create the tables, add ``accounts`` in one ORM unit; a session factory."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    async with factory.begin() as session:
        session.add_all(accounts)
    return factory


def test_first_connect_reads_the_server_version(real_server: RealServer) -> None:
    async def body(engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        info = engine.dialect.server_version_info
        assert isinstance(info, tuple) and len(info) >= 3 and info[0] >= 12
        if real_server.is_babelfish:
            assert info[:2] == (12, 0)      # SERVERPROPERTY('ProductVersion'): 12.0.2000.8

    run_on_engine(real_server, body)


def test_core_writes_in_begin_commit_or_roll_back(real_server: RealServer) -> None:
    class Boom(Exception):
        pass

    async def body(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with engine.begin() as conn:
            await conn.execute(insert(Account), [{"id": 1, "name": "ada", "balance": 10},
                                                 {"id": 2, "name": "bob", "balance": 20}])
        with pytest.raises(Boom):
            async with engine.begin() as conn:     # rolled back as a whole
                await conn.execute(insert(Account), [{"id": 3, "name": "cy", "balance": 30}])
                await conn.execute(Account.__table__.update().where(Account.id == 1)
                                   .values(balance=Account.balance + 5))
                raise Boom
        async with engine.begin() as conn:
            await conn.execute(Account.__table__.update().values(balance=Account.balance + 1))
        assert await balances(engine) == [11, 21]
        assert engine.pool.mssql_pool.get_stats()["connections_discarded"] == 0

    run_on_engine(real_server, body)


def test_orm_async_session_unit(real_server: RealServer) -> None:
    async def body(engine: AsyncEngine) -> None:
        factory = await seeded(engine, Account(id=1, name="ada"), Account(id=2, name="bob"))
        async with factory() as session:
            ada = (await session.scalars(select(Account).where(Account.name == "ada"))).one()
            ada.balance = Account.balance + 7
            await session.delete(await session.get(Account, 2))
            await session.commit()
        async with factory() as session:            # a rolled-back change stays undone
            (await session.get(Account, 1)).name = "zed"
            await session.flush()
            await session.rollback()
            assert (await session.get(Account, 1)).name == "ada"
        async with factory() as session:
            assert await session.scalar(select(func.count()).select_from(Account)) == 1
            assert (await session.get(Account, 1)).balance == 7
        assert engine.pool.mssql_pool.get_stats()["connections_discarded"] == 0

    run_on_engine(real_server, body)


def test_async_deadlock_victim_is_rerun(real_server: RealServer) -> None:
    """Two ORM units update two rows in opposite orders: one is the deadlock victim (1205).
    run_transaction re-runs it; both land exactly once. The increments are SQL expressions
    (see test_real_sqlalchemy.py: a read-modify-write in Python could lose an update under
    Babelfish's snapshot reads)."""
    attempts = {0: 0, 1: 0}

    async def body(engine: AsyncEngine) -> None:
        factory = await seeded(engine, Account(id=10, name="a"), Account(id=11, name="b"))
        both = asyncio.Barrier(2)

        async def unit(session: AsyncSession, who: int, first: int, second: int) -> None:
            attempts[who] += 1
            (await session.get(Account, first)).balance = Account.balance + 1
            await session.flush()
            if attempts[who] == 1:
                await both.wait()      # both hold their first row: a certain deadlock
            (await session.get(Account, second)).balance = Account.balance + 1
            await session.flush()

        results: list[Any] = await asyncio.wait_for(asyncio.gather(
            run_transaction(factory, unit, 0, 10, 11),
            run_transaction(factory, unit, 1, 11, 10), return_exceptions=True), 90)
        assert results == [None, None]
        assert await balances(engine) == [2, 2]

    run_on_engine(real_server, body)
    assert sorted(attempts.values()) == [1, 2]     # one victim, re-run once
