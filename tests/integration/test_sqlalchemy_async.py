"""SQLAlchemy's AsyncEngine on pymssql with the async pool underneath, on the TDS test server:
Core and ORM through AsyncSession, the pool's behaviour under the engine, and the async
run_transaction under the same faults as the sync one (1205, 1222, kills, dropped COMMIT
replies, 40613 logins, a restart, cancellations)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy
from bank import (
    INITIAL,
    check_invariants,
    policy,
    read_state,
    setup_bank,
    transfers_under_chaos,
    verify_retried_then_given_up,
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


@asynccontextmanager
async def running_engine(server: Any, **kw: Any) -> AsyncIterator[AsyncEngine]:
    """:func:`engine_for`, shut down (engine and pool) when the block ends."""
    engine = engine_for(server, **kw)
    try:
        yield engine
    finally:
        await shutdown(engine)


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


async def two_accounts(engine: AsyncEngine) -> None:
    """The tables, and accounts 0 and 1 with 1000 each."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(text("INSERT INTO acct (id, bal) VALUES (0, 1000), (1, 1000)"))


def landed(tid: str) -> Any:
    async def verify(session: Any) -> bool:
        return (await session.get(Ledger, tid)) is not None

    return verify


# --------------------------------------------------------------------------- the engine

def test_core_orm_and_the_pool_under_the_engine(tds_server: Any) -> None:
    connects: list[Any] = []

    async def main() -> None:
        async with running_engine(tds_server, max_size=1) as engine:
            assert isinstance(engine.pool, AsyncMssqlPoolAdapter)
            event.listen(engine.sync_engine, "connect", lambda dbapi_conn, rec: connects.append(1))
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

    asyncio.run(main())
    assert connects == [1]     # one driver connection, one record, connect fired once


def test_engine_checkout_timeout_is_sqlalchemys_timeout_error(tds_server: Any) -> None:
    async def main() -> None:
        async with running_engine(tds_server, max_size=1, pool_timeout=0.2) as engine:
            assert engine.pool.mssql_pool.config.timeout == 0.2
            async with engine.connect() as held:
                await held.execute(text("SELECT 1"))
                with pytest.raises(sqlalchemy.exc.TimeoutError) as ei:
                    async with engine.connect() as other:
                        await other.execute(text("SELECT 1"))
                assert isinstance(ei.value, PoolTimeout)

    asyncio.run(main())


def test_create_async_engine_validates_its_arguments(tds_server: Any) -> None:
    with pytest.raises(ConfigError, match="url"):
        create_async_engine("postgresql://u:p@h/db")
    with pytest.raises(ConfigError, match="max_size"):
        create_async_engine(tds_server.url, min_size=5, max_size=2)
    with pytest.raises(ConfigError, match="poolclass"):
        create_async_engine(tds_server.url, poolclass=sqlalchemy.pool.NullPool)
    with pytest.raises(ConfigError, match="connect_args: must be a mapping, got str"):
        create_async_engine(tds_server.url, connect_args="x")
    with pytest.raises(ConfigError, match="url: no host"):
        create_async_engine("mssql+pymssql:///db")


# --------------------------------------------------------------------------- run_transaction

def test_async_run_transaction_checks_its_arguments(tds_server: Any) -> None:
    async def noop(target: Any) -> None:
        return None

    async def main() -> None:
        async with running_engine(tds_server, min_size=0) as engine:
            with pytest.raises(ConfigError, match="not an AsyncSession: every attempt"):
                await run_transaction(async_sessionmaker(engine)(), noop)
            with pytest.raises(ConfigError, match="must be an async_sessionmaker .*got int"):
                await run_transaction(42, noop)
            with pytest.raises(ConfigError, match="returned str, not an AsyncSession"):
                await run_transaction(lambda: "nope", noop)
            with pytest.raises(ConfigError, match="fn: must be an async callable, got"):
                await run_transaction(engine, "not callable")  # type: ignore[arg-type]
            with pytest.raises(ConfigError, match=r"verify: must be an async callable\(session\)"):
                await run_transaction(engine, noop, verify=1)  # type: ignore[arg-type]

    asyncio.run(main())


def test_async_run_transaction_reruns_and_reports_unknown_commits(tds_server: Any) -> None:
    records: list[Any] = []

    async def main() -> None:
        async with running_engine(tds_server) as engine:
            engine.pool.mssql_pool.add_listener(events.append,
                                                kinds=["retry_attempt", "commit_unknown"])
            await two_accounts(engine)
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
            tds_server.drop_next(match=r"\bCOMMIT\b", after_execute=True)
            with pytest.raises(CommitUnknownError):
                await run_transaction(Session, orm_transfer, "s3", 0, 1, 1, policy=policy())
            tds_server.drop_next(match=r"\bCOMMIT\b", after_execute=True)
            assert await run_transaction(engine, core_transfer, "s4", 0, 1, 1, policy=policy(),
                                         verify=landed_core("s4")) == "s4"
            assert engine.pool.mssql_pool.events.flush()

    events: list[Any] = []
    asyncio.run(main())
    assert [r.number for r in records[:2]] == [1205, 1222] and len(records) == 3
    # the same story as events of the pool under the engine: three re-runs, then the two
    # lost COMMITs (the session factory's raised, the engine's resolved by verify=)
    assert [(e.kind.value, e.reason) for e in events] == [
        ("retry_attempt", "test")] * 3 + [("commit_unknown", "raised"),
                                          ("commit_unknown", "verify")]
    assert [e.error_info.number for e in events[:2]] == [1205, 1222]
    bal, ledger = read_state(tds_server)
    assert sorted(t for t, *_ in ledger) == ["s1", "s2", "s3", "s4"]   # each exactly once
    assert bal == {0: 1000 - 5 + 3 - 1 - 1, 1: 1000 + 5 - 3 + 1 + 1}


def test_async_units_own_error_reaches_the_caller_once_rolled_back(tds_server: Any) -> None:
    """An error the application raises inside ``fn`` (not the driver's, not named by a
    classifier rule) reaches the caller after one run, rolled back, the connection kept, as
    with the other three runners."""
    mine = OSError("the application's own file is missing")
    calls: list[int] = []

    async def unit(session: Any) -> None:
        calls.append(1)
        (await session.get(Acct, 0)).bal = Acct.bal - 1
        await session.flush()
        raise mine

    async def main() -> tuple[int, int, int]:
        async with running_engine(tds_server) as engine:
            await two_accounts(engine)
            stats = engine.pool.mssql_pool.get_stats
            before = stats().get("connections_discarded", 0)
            with pytest.raises(OSError) as caught:
                await run_transaction(async_sessionmaker(engine), unit, policy=policy())
            assert caught.value is mine
            async with engine.connect() as conn:
                bal = (await conn.execute(text("SELECT bal FROM acct WHERE id = 0"))).scalar()
            return before, stats().get("connections_discarded", 0), int(bal)

    before, after, bal = asyncio.run(main())
    assert calls == [1]
    assert after == before
    assert bal == 1000


@pytest.mark.parametrize("wrapper", [False, True], ids=["pymssql", "sqlalchemy"])
@pytest.mark.parametrize("rule", [{"retryable": True}, {"kind": "transient"}],
                         ids=["retryable", "transient"])
def test_async_lost_commit_is_unknown_whatever_the_classifier(
        tds_server: Any, rule: dict[str, Any], wrapper: bool) -> None:
    """Whether a failed COMMIT may have landed is decided by the built-in rules, never by
    the caller's classifier: a rule making every OperationalError (pymssql's, or
    SQLAlchemy's wrapper of it) retryable or transient must not make a lost COMMIT run
    twice."""
    import pymssql

    from mssql_pool.classify import Classifier

    exc_type = sqlalchemy.exc.OperationalError if wrapper else pymssql.OperationalError
    loose = Classifier().with_exception(exc_type, **rule)

    async def main() -> None:
        async with running_engine(tds_server) as engine:
            await two_accounts(engine)
            tds_server.drop_next(match=r"\bCOMMIT\b", after_execute=True)
            with pytest.raises(CommitUnknownError):
                await run_transaction(async_sessionmaker(engine), orm_transfer, "u1", 0, 1, 1,
                                      policy=policy(classifier=loose,
                                                    retry_on=lambda e: loose.classify(e).retryable))

    asyncio.run(main())
    _bal, ledger = read_state(tds_server)
    assert [t for t, *_ in ledger] == ["u1"]          # applied once, not re-run


def landed_core(tid: str) -> Any:
    async def verify(conn: Any) -> bool:
        n = (await conn.execute(text("SELECT COUNT(*) FROM ledger WHERE tid = :t"),
                                {"t": tid})).scalar()
        return int(n) == 1

    return verify


def test_async_verify_is_retried_under_the_policy_then_gives_up(tds_server: Any) -> None:
    async def unreadable(conn: Any) -> bool:
        await conn.execute(text("SELECT tid FROM no_such_table"))
        return True

    async def main() -> tuple[list[Any], CommitUnknownError]:
        async with running_engine(tds_server) as engine:
            await two_accounts(engine)
            moves = {"v1": (0, 1, 1), "v2": (1, 0, 1)}

            async def run(tid: str, **kw: Any) -> object:
                return await run_transaction(engine, core_transfer, tid, *moves[tid], **kw)

            return await verify_retried_then_given_up(tds_server, run, landed_core("v1"),
                                                      unreadable)

    records, _error = asyncio.run(main())
    assert [r.number for r in records] == [40613]
    bal, ledger = read_state(tds_server)
    assert sorted(t for t, *_ in ledger) == ["v1", "v2"]   # each landed once, not re-run
    assert bal == {0: 1000, 1: 1000}


@pytest.mark.parametrize("seed", [7])
def test_async_engine_transfers_survive_chaos_and_a_restart(tds_server: Any, seed: int) -> None:
    async def main() -> tuple[Any, Counter[str]]:
        engine = engine_for(tds_server, min_size=2, max_size=6)
        Session = async_sessionmaker(engine)
        from mssql_pool import ConnectionPool

        with ConnectionPool(tds_server.url, min_size=1, max_size=1) as setup:
            setup_bank(setup)

        async def unit(tid: str, src: int, dst: int, amount: int) -> str:
            try:
                return await run_transaction(Session, orm_transfer, tid, src, dst, amount,
                                             policy=policy(), verify=landed(tid))
            finally:
                if tid == "e0-10":           # a restart in the middle: every session gone
                    tds_server.stop()
                    tds_server.start()

        try:
            return await transfers_under_chaos(tds_server, seed, 6, 20, "e", unit, 70)
        finally:
            await shutdown(engine)

    book, faults = asyncio.run(main())
    assert book.unexpected == [], [repr(e) for e in book.unexpected[:5]]
    summary = check_invariants(tds_server, book.outcomes, book.planned)
    assert summary == Counter({"ok": 6 * 20})
    assert sum(faults.values()) > 5


def test_a_cancelled_session_unit_leaves_no_transaction(tds_server: Any) -> None:
    async def main() -> dict[str, int]:
        async with running_engine(tds_server, max_size=2) as engine:
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

    stats = asyncio.run(main())
    assert stats["statements_cancelled"] >= 1
    bal, _ledger = read_state(tds_server)
    assert bal == {0: 1000}


def test_a_units_checkouts_wait_no_longer_than_its_policy_allows(tds_server: Any) -> None:
    """The policy's deadline bounds the engine's checkout (pool timeout 10 s here)."""
    from mssql_pool.retry import RetryPolicy

    async def main() -> None:
        async with running_engine(tds_server, max_size=1, timeout=10.0) as engine:
            async with engine.connect() as held:
                await held.execute(text("SELECT 1"))
                with pytest.raises(PoolTimeout) as ei:
                    await run_transaction(engine, core_transfer, "x", 0, 1, 1,
                                          policy=RetryPolicy(max_attempts=1, deadline=0.3))
                assert ei.value.waited < 5.0

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
