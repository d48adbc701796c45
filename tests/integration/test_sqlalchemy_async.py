"""SQLAlchemy's AsyncEngine on pymssql with the async pool underneath, on the TDS test server:
Core and ORM through AsyncSession, the pool's behaviour under the engine, and the async
run_transaction under the same faults as the sync one (1205, 1222, kills, dropped COMMIT
replies, 40613 logins, a restart, cancellations)."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from typing import Any

import pytest
import sqlalchemy
from bank import (
    ACCOUNTS,
    INITIAL,
    chaos,
    check_invariants,
    policy,
    read_state,
    setup_bank,
)
from sqlalchemy import Integer, String, event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mssql_pool import ConfigError, PoolTimeout
from mssql_pool.errors import CommitUnknownError
from mssql_pool.sqlalchemy_async import AsyncMssqlPoolAdapter, create_async_engine, run_transaction

pytest.importorskip("greenlet")
pytestmark = pytest.mark.timeout(90)


class Base(DeclarativeBase):
    pass


class Acct(Base):
    __tablename__ = "acct"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bal: Mapped[int] = mapped_column(Integer)


class Ledger(Base):
    __tablename__ = "ledger"
    tid: Mapped[str] = mapped_column(String(40), primary_key=True)
    src: Mapped[int] = mapped_column(Integer)
    dst: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(Integer)


def engine_for(server: Any, **kw: Any) -> AsyncEngine:
    kw.setdefault("min_size", 1)
    kw.setdefault("max_size", 4)
    if "pool_timeout" not in kw:        # the pool's own timeout would win over it
        kw.setdefault("timeout", 10.0)
    return create_async_engine(server.url.replace("mssql://", "mssql+pymssql://"), **kw)


async def shutdown(engine: AsyncEngine) -> None:
    await engine.dispose()
    await engine.pool.mssql_pool.close()


async def orm_transfer(session: Any, tid: str, src: int, dst: int, amount: int) -> str:
    a = await session.get(Acct, src, populate_existing=True)
    b = await session.get(Acct, dst, populate_existing=True)
    # SQL expressions, not values read earlier: concurrent units must not lose updates
    a.bal = Acct.bal - amount
    b.bal = Acct.bal + amount
    session.add(Ledger(tid=tid, src=src, dst=dst, amount=amount))
    return tid


async def core_transfer(conn: Any, tid: str, src: int, dst: int, amount: int) -> str:
    move = text("UPDATE acct SET bal = bal + :a WHERE id = :i")
    await conn.execute(move, {"a": -amount, "i": src})
    await conn.execute(move, {"a": amount, "i": dst})
    await conn.execute(text("INSERT INTO ledger (tid, src, dst, amount) VALUES (:t, :s, :d, :a)"),
                       {"t": tid, "s": src, "d": dst, "a": amount})
    return tid


def landed(tid: str) -> Any:
    async def verify(session: Any) -> bool:
        return (await session.get(Ledger, tid)) is not None

    return verify


# --------------------------------------------------------------------------- the engine

def test_core_orm_and_the_pool_under_the_engine(tds_server: Any) -> None:
    connects: list[Any] = []

    async def main() -> None:
        engine = engine_for(tds_server, max_size=1)
        assert isinstance(engine.pool, AsyncMssqlPoolAdapter)
        event.listen(engine.sync_engine, "connect", lambda dbapi_conn, rec: connects.append(1))
        try:
            async with engine.begin() as conn:
                assert (await conn.execute(text("SELECT 1 + 1"))).scalar() == 2
                await conn.run_sync(Base.metadata.create_all)
            Session = async_sessionmaker(engine, expire_on_commit=False)
            async with Session() as s:
                s.add_all([Acct(id=i, bal=INITIAL) for i in range(3)])
                await s.commit()
            async with Session() as s:
                rows = (await s.scalars(select(Acct).order_by(Acct.id))).all()
                assert [(a.id, a.bal) for a in rows] == [(i, INITIAL) for i in range(3)]
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                assert raw.driver_connection.pool is engine.pool.mssql_pool
            s = engine.pool.get_stats()
            assert s["pool_size"] == 1 and s["requests_num"] >= 4
            assert "asyncio" in engine.pool.status()
        finally:
            await shutdown(engine)

    asyncio.run(main())
    assert connects == [1]     # one driver connection, one record, connect fired once


def test_engine_checkout_timeout_is_sqlalchemys_timeout_error(tds_server: Any) -> None:
    async def main() -> None:
        engine = engine_for(tds_server, max_size=1, pool_timeout=0.2)
        assert engine.pool.mssql_pool.config.timeout == 0.2
        try:
            async with engine.connect() as held:
                await held.execute(text("SELECT 1"))
                with pytest.raises(sqlalchemy.exc.TimeoutError) as ei:
                    async with engine.connect() as other:
                        await other.execute(text("SELECT 1"))
                assert isinstance(ei.value, PoolTimeout)
        finally:
            await shutdown(engine)

    asyncio.run(main())


def test_create_async_engine_validates_its_arguments(tds_server: Any) -> None:
    with pytest.raises(ConfigError, match="url"):
        create_async_engine("postgresql://u:p@h/db")
    with pytest.raises(ConfigError, match="max_size"):
        create_async_engine(tds_server.url, min_size=5, max_size=2)
    with pytest.raises(ConfigError, match="poolclass"):
        create_async_engine(tds_server.url, poolclass=sqlalchemy.pool.NullPool)


# --------------------------------------------------------------------------- run_transaction

def test_async_run_transaction_reruns_and_reports_unknown_commits(tds_server: Any) -> None:
    records: list[Any] = []

    async def main() -> None:
        engine = engine_for(tds_server)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
                await conn.execute(text("INSERT INTO acct (id, bal) VALUES (0, 1000), (1, 1000)"))
            Session = async_sessionmaker(engine)
            tds_server.fail_next(1205, match=r"UPDATE acct", severity=13)
            tds_server.fail_next(1222, match=r"INSERT INTO ledger")
            assert await run_transaction(Session, orm_transfer, "s1", 0, 1, 5,
                                         policy=policy(on_retry=records.append)) == "s1"
            killed = {"done": False}

            async def unit(session: Any) -> str:
                if not killed["done"]:
                    killed["done"] = True
                    spid = (await session.execute(text("SELECT @@SPID"))).scalar()
                    tds_server.kill(int(spid))
                return await orm_transfer(session, "s2", 1, 0, 3)

            assert await run_transaction(Session, unit,
                                         policy=policy(on_retry=records.append)) == "s2"
            tds_server.drop_next(match=r"COMMIT", after_execute=True)
            with pytest.raises(CommitUnknownError):
                await run_transaction(Session, orm_transfer, "s3", 0, 1, 1, policy=policy())
            tds_server.drop_next(match=r"COMMIT", after_execute=True)
            assert await run_transaction(engine, core_transfer, "s4", 0, 1, 1, policy=policy(),
                                         verify=landed_core("s4")) == "s4"
        finally:
            await shutdown(engine)

    asyncio.run(main())
    assert [r.number for r in records[:2]] == [1205, 1222] and len(records) == 3
    bal, ledger = read_state(tds_server)
    assert sorted(t for t, *_ in ledger) == ["s1", "s2", "s3", "s4"]   # each exactly once
    assert bal == {0: 1000 - 5 + 3 - 1 - 1, 1: 1000 + 5 - 3 + 1 + 1}


def landed_core(tid: str) -> Any:
    async def verify(conn: Any) -> bool:
        n = (await conn.execute(text("SELECT COUNT(*) FROM ledger WHERE tid = :t"),
                                {"t": tid})).scalar()
        return int(n) == 1

    return verify


@pytest.mark.parametrize("seed", [7])
def test_async_engine_transfers_survive_chaos_and_a_restart(tds_server: Any, seed: int) -> None:
    outcomes: dict[str, str] = {}
    planned: dict[str, tuple[int, int, int]] = {}
    unexpected: list[BaseException] = []
    faults: Counter[str] = Counter()

    async def main() -> None:
        engine = engine_for(tds_server, min_size=2, max_size=6)
        Session = async_sessionmaker(engine)
        stop = threading.Event()
        from mssql_pool import ConnectionPool

        with ConnectionPool(tds_server.url, min_size=1, max_size=1) as setup:
            setup_bank(setup)

        async def worker(n: int) -> None:
            rnd = random.Random(seed * 100 + n)
            for i in range(20):
                src, dst = rnd.sample(range(ACCOUNTS), 2)
                amount = rnd.randint(1, 50)
                tid = f"e{n}-{i}"
                planned[tid] = (src, dst, amount)
                try:
                    await run_transaction(Session, orm_transfer, tid, src, dst, amount,
                                          policy=policy(), verify=landed(tid))
                    outcomes[tid] = "ok"
                except CommitUnknownError:
                    outcomes[tid] = "unknown"
                except Exception as exc:  # noqa: BLE001 - asserted on below
                    outcomes[tid] = f"error {type(exc).__name__}"
                    unexpected.append(exc)
                if n == 0 and i == 10:       # a restart in the middle: every session gone
                    tds_server.stop()
                    tds_server.start()

        chaos_thread = threading.Thread(target=chaos, name="chaos", daemon=True,
                                        args=(tds_server, stop, random.Random(seed), faults,
                                              lambda: len(outcomes)))
        chaos_thread.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(6))), 70)
        finally:
            stop.set()
            chaos_thread.join(5.0)
            tds_server.clear_faults()
            await shutdown(engine)

    asyncio.run(main())
    assert unexpected == [], [repr(e) for e in unexpected[:5]]
    summary = check_invariants(tds_server, outcomes, planned)
    assert summary == Counter({"ok": 6 * 20})
    assert sum(faults.values()) > 5


def test_a_cancelled_session_unit_leaves_no_transaction(tds_server: Any) -> None:
    async def main() -> dict[str, int]:
        engine = engine_for(tds_server, max_size=2)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
                await conn.execute(text("INSERT INTO acct (id, bal) VALUES (0, 1000)"))
            Session = async_sessionmaker(engine)

            async def slow(session: Any) -> None:
                await session.execute(text("UPDATE acct SET bal = 0 WHERE id = 0"))
                await session.execute(text("WAITFOR DELAY '00:00:05'"))

            rnd = random.Random(5)
            for _ in range(6):
                task = asyncio.create_task(run_transaction(Session, slow, policy=policy()))
                await asyncio.sleep(rnd.uniform(0.0, 0.15))
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            pool = engine.pool.mssql_pool
            while pool.get_stats()["pool_size"] != pool.get_stats()["pool_available"]:
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT bal FROM acct WHERE id = 0"))
                        ).scalar() == 1000
            return pool.get_stats()
        finally:
            await shutdown(engine)

    stats = asyncio.run(main())
    assert stats["statements_cancelled"] >= 1
    bal, _ledger = read_state(tds_server)
    assert bal == {0: 1000}


def test_a_units_checkouts_wait_no_longer_than_its_policy_allows(tds_server: Any) -> None:
    """The policy's deadline bounds the engine's checkout (pool timeout 10 s here)."""
    from mssql_pool.retry import RetryPolicy

    async def main() -> None:
        engine = engine_for(tds_server, max_size=1, timeout=10.0)
        try:
            async with engine.connect() as held:
                await held.execute(text("SELECT 1"))
                with pytest.raises(PoolTimeout) as ei:
                    await run_transaction(engine, core_transfer, "x", 0, 1, 1,
                                          policy=RetryPolicy(max_attempts=1, deadline=0.3))
                assert ei.value.waited < 5.0
        finally:
            await shutdown(engine)

    asyncio.run(main())


def test_the_sync_modules_entry_points(tds_server: Any) -> None:
    from mssql_pool import sqlalchemy as msa

    async def main() -> None:
        engine = msa.create_async_engine(tds_server.url, max_size=2)
        try:
            async def one(conn: Any) -> int:
                return int((await conn.execute(text("SELECT 41 + 1"))).scalar())

            assert await msa.run_transaction_async(engine, one, policy=policy()) == 42
        finally:
            await shutdown(engine)

    asyncio.run(main())
