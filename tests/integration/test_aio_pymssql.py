"""AsyncConnectionPool with real pymssql against the TDS test server.

The same money-transfer workload and faults as test_transactions_pymssql.py (bank.py)
(1205, 1222, 40613 logins, killed sessions, COMMIT replies dropped after the COMMIT ran,
a server restart), driven by asyncio tasks through ``await pool.run_transaction``; and
cancellations at random (seeded) points: a cancelled unit never reports success, never
leaves a transaction or a lock behind, and its connection slot comes back.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pymssql
import pytest
from bank import (
    ACCOUNTS,
    INITIAL,
    check_invariants,
    policy,
    pool_options,
    read_state,
    setup_bank,
    transfers_under_chaos,
    verify_retried_then_given_up,
)

from mssql_pool import AsyncConnectionPool
from mssql_pool.classify import ErrorKind, classify
from mssql_pool.errors import CommitUnknownError

pytestmark = pytest.mark.timeout(90)

TASKS = 8
PER_TASK = 30


def make_pool(server: Any, **kw: Any) -> AsyncConnectionPool:
    return AsyncConnectionPool(server.url, **pool_options("atx", TASKS, **kw))


async def transfer(conn: Any, tid: str, src: int, dst: int, amount: int,
                   pause: float = 0.0) -> str:
    cur = conn.cursor()
    await cur.execute("UPDATE acct SET bal = bal - %s WHERE id = %s", (amount, src))
    if pause:
        await cur.execute(f"WAITFOR DELAY '00:00:00.{int(pause * 1000):03d}'")
    await cur.execute("UPDATE acct SET bal = bal + %s WHERE id = %s", (amount, dst))
    await cur.execute("INSERT INTO ledger (tid, src, dst, amount) VALUES (%s, %s, %s, %s)",
                      (tid, src, dst, amount))
    return tid


def landed(tid: str) -> Any:
    async def verify(conn: Any) -> bool:
        cur = conn.cursor()
        await cur.execute("SELECT COUNT(*) FROM ledger WHERE tid = %s", (tid,))
        return int((await cur.fetchone())[0]) == 1

    return verify


def assert_no_locks_left(server: Any) -> None:
    """Every account row can be updated at once from another session: no pooled session
    holds an uncommitted change (its row lock would make this wait, then fail)."""
    conn = pymssql.connect(**server.connect_kwargs())
    try:
        cur = conn.cursor()
        cur.execute("SET LOCK_TIMEOUT 2000")
        cur.execute("UPDATE acct SET bal = bal")
        conn.rollback()
    finally:
        conn.close()


async def settled(pool: AsyncConnectionPool, limit: float = 20.0) -> dict[str, int]:
    """Wait (bounded) until every connection is back: nothing busy, every permit free."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        s = pool.get_stats()
        if s["pool_size"] == s["pool_available"] and pool._gate.free == pool.config.max_size:
            return s
        assert loop.time() < deadline, f"connections not back: {pool!r}"
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- basics

def test_query_fetch_and_units(tds_server: Any) -> None:
    async def main() -> None:
        async with make_pool(tds_server, min_size=1, max_size=3) as pool:
            await pool.wait(10)
            async with pool.connection() as conn:
                cur = conn.cursor()
                await cur.execute("SELECT %s + 1", (41,))
                assert await cur.fetchone() == (42,)
                await cur.execute("SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3")
                assert [r async for r in cur] == [(1,), (2,), (3,)]
                # more rows than execute() reads ahead: every fetch style sees them all
                await cur.execute("CREATE TABLE nums (n INT PRIMARY KEY)")
                await cur.executemany("INSERT INTO nums (n) VALUES (%s)",
                                      [(i,) for i in range(600)])
                query = "SELECT n FROM nums ORDER BY n"
                await cur.execute(query)
                got = [await cur.fetchone(), *(await cur.fetchmany(300)), *(await cur.fetchall())]
                assert [r[0] for r in got] == list(range(600))
                await cur.execute(query)
                assert [r[0] async for r in cur] == list(range(600))
                await cur.execute(query)
                assert len(await cur.fetchmany(1000)) == 600 and await cur.fetchone() is None
                await cur.execute("UPDATE nums SET n = n WHERE n = 0")
                with pytest.raises(pymssql.OperationalError):
                    await cur.fetchone()       # no result set: as pymssql says
                await conn.commit()
            setup_bank(pool.sync_pool)
            assert await pool.run_transaction(transfer, "a1", 0, 1, 5, policy=policy()) == "a1"
            assert await pool.check() == 0
            await pool.drain()
            await settled(pool)

    asyncio.run(main())
    bal, ledger = read_state(tds_server)
    assert ledger == [("a1", 0, 1, 5)] and bal[0] == INITIAL - 5


# --------------------------------------------------------------------------- faults

async def async_workload(server: Any, pool: AsyncConnectionPool, *, verify: bool,
                         seed: int) -> tuple[dict[str, str], dict[str, tuple[int, int, int]],
                                             Counter[str], list[BaseException]]:
    async def unit(tid: str, src: int, dst: int, amount: int) -> str:
        kw: dict[str, Any] = {"verify": landed(tid)} if verify else {}
        return await pool.run_transaction(transfer, tid, src, dst, amount, policy=policy(),
                                          **kw)

    book, faults = await transfers_under_chaos(server, seed, TASKS, PER_TASK, "t", unit, 60)
    return book.outcomes, book.planned, faults, book.unexpected


@pytest.mark.parametrize("verify,seed", [(False, 5), (True, 11)], ids=["plain", "verify"])
def test_async_transfers_survive_chaos(tds_server: Any, verify: bool, seed: int) -> None:
    """1205, 1222, 40613 logins, kills and dropped COMMIT replies at random: each transfer
    is applied exactly once, or reported unknown (then at most once); with verify= every
    transfer is applied exactly once."""
    async def main() -> tuple[Any, ...]:
        async with make_pool(tds_server) as pool:
            setup_bank(pool.sync_pool)
            result = await async_workload(tds_server, pool, verify=verify, seed=seed)
            await settled(pool)
            return result

    outcomes, planned, faults, unexpected = asyncio.run(main())
    assert unexpected == [], [repr(e) for e in unexpected[:5]]
    summary = check_invariants(tds_server, outcomes, planned)
    assert len(outcomes) == TASKS * PER_TASK
    assert sum(faults.values()) > 10
    if verify:
        assert summary == Counter({"ok": TASKS * PER_TASK})
    else:
        assert summary["ok"] > 0


def test_async_dropped_commit_is_unknown_or_verified(tds_server: Any) -> None:
    async def main() -> None:
        async with make_pool(tds_server, min_size=1, max_size=2) as pool:
            setup_bank(pool.sync_pool)
            tds_server.drop_next(match=r"\bCOMMIT\b", after_execute=True)
            with pytest.raises(CommitUnknownError) as ei:
                await pool.run_transaction(transfer, "u1", 0, 1, 5, policy=policy())
            assert classify(ei.value.original).connection_dead
            tds_server.drop_next(match=r"\bCOMMIT\b", after_execute=True)
            assert await pool.run_transaction(transfer, "u2", 2, 3, 5, policy=policy(),
                                              verify=landed("u2")) == "u2"

    asyncio.run(main())
    _bal, ledger = read_state(tds_server)
    assert sorted(t for t, *_ in ledger) == ["u1", "u2"]   # each landed once, not re-run


def test_async_verify_is_retried_under_the_policy_then_gives_up(tds_server: Any) -> None:
    async def unreadable(conn: Any) -> bool:
        await conn.cursor().execute("SELECT tid FROM no_such_table")
        return True

    async def main() -> tuple[list[Any], CommitUnknownError]:
        async with make_pool(tds_server, min_size=1, max_size=2) as pool:
            setup_bank(pool.sync_pool)
            moves = {"v1": (0, 1, 5), "v2": (2, 3, 5)}

            async def run(tid: str, **kw: Any) -> object:
                return await pool.run_transaction(transfer, tid, *moves[tid], **kw)

            return await verify_retried_then_given_up(tds_server, run, landed("v1"), unreadable)

    records, error = asyncio.run(main())
    assert classify(error.original).connection_dead
    assert [r.number for r in records] == [40613]
    _bal, ledger = read_state(tds_server)
    assert sorted(t for t, *_ in ledger) == ["v1", "v2"]   # each landed once, not re-run


def test_async_deadlock_lock_timeout_and_kill_rerun_the_unit(tds_server: Any) -> None:
    records: list[Any] = []

    async def main() -> None:
        async with make_pool(tds_server, min_size=1, max_size=2) as pool:
            setup_bank(pool.sync_pool)
            tds_server.fail_next(1205, match=r"UPDATE acct", severity=13)
            tds_server.fail_next(1222, match=r"INSERT INTO ledger")
            await pool.run_transaction(transfer, "u3", 2, 3, 7,
                                       policy=policy(on_retry=records.append))
            killed = {"done": False}

            async def unit(conn: Any) -> str:
                if not killed["done"]:
                    killed["done"] = True
                    cur = conn.cursor()
                    await cur.execute("SELECT @@SPID")
                    tds_server.kill(int((await cur.fetchone())[0]))
                return await transfer(conn, "u4", 4, 5, 3)

            await pool.run_transaction(unit, policy=policy(on_retry=records.append))

    asyncio.run(main())
    assert [r.kind for r in records] == [ErrorKind.DEADLOCK, ErrorKind.LOCK_TIMEOUT,
                                         ErrorKind.DISCONNECT]
    _bal, ledger = read_state(tds_server)
    assert sorted(t for t, *_ in ledger) == ["u3", "u4"]


def test_async_units_ride_out_a_restart_and_failing_logins(tds_server: Any) -> None:
    """The server restarts (every session gone), then refuses logins with 40613 for a
    while: units re-run until they land, each exactly once."""
    async def main() -> None:
        async with make_pool(tds_server, min_size=2, max_size=4) as pool:
            setup_bank(pool.sync_pool)
            await pool.run_transaction(transfer, "r0", 0, 1, 1, policy=policy())
            tds_server.stop()
            tds_server.start()
            tds_server.fail_logins(40613, times=3)
            done = await asyncio.gather(*(pool.run_transaction(transfer, f"r{i}", i, i + 1, 1,
                                                               policy=policy())
                                          for i in range(1, 5)))
            assert done == ["r1", "r2", "r3", "r4"]
            s = await settled(pool)
            assert s["connections_lost"] + s["connections_discarded"] >= 1

    asyncio.run(main())
    assert tds_server.stats()["logins_failed"] >= 1
    bal, ledger = read_state(tds_server)
    assert sorted(t for t, *_ in ledger) == ["r0", "r1", "r2", "r3", "r4"]
    assert sum(bal.values()) == ACCOUNTS * INITIAL


# --------------------------------------------------------------------------- cancellation

@pytest.mark.parametrize("seed", [3, 17])
def test_cancellation_at_random_points_leaves_nothing_behind(tds_server: Any,
                                                             seed: int) -> None:
    """Units and bare statements cancelled at random (seeded) moments: while waiting for
    a connection, mid-statement (cancelled on the server), between statements, during
    COMMIT. Afterwards: no cancelled unit reported success, nothing was applied twice or
    half-way, no lock is held, every connection is back and works."""
    rnd = random.Random(seed)
    planned: dict[str, tuple[int, int, int]] = {}
    outcomes: dict[str, str] = {}

    async def main() -> dict[str, int]:
        # A query timeout bounds a driver call whatever happens to its cancel.
        conninfo = tds_server.connect_kwargs(timeout=10)
        async with AsyncConnectionPool(conninfo, min_size=2, max_size=4, timeout=20.0,
                                       name="cancel") as pool:
            setup_bank(pool.sync_pool)

            async def unit_task(tid: str, src: int, dst: int, amount: int,
                                pause: float) -> None:
                try:
                    await pool.run_transaction(transfer, tid, src, dst, amount, pause,
                                               policy=policy())
                    outcomes[tid] = "ok"
                except asyncio.CancelledError:
                    outcomes[tid] = "cancelled"
                    raise

            async def bare_task(pause: float) -> None:
                async with pool.connection() as conn:
                    cur = conn.cursor()
                    await cur.execute("UPDATE acct SET bal = bal + 1000 WHERE id = 0")
                    await cur.execute(f"WAITFOR DELAY '00:00:00.{int(pause * 1000):03d}'")
                    await cur.execute("SELECT 1")   # never committed: rolled back on return

            tasks = []
            for i in range(48):
                if rnd.random() < 0.2:
                    task = asyncio.create_task(bare_task(rnd.uniform(0.01, 0.06)))
                else:
                    src, dst = rnd.sample(range(ACCOUNTS), 2)
                    tid = f"c{i}"
                    planned[tid] = (src, dst, amount := rnd.randint(1, 50))
                    task = asyncio.create_task(unit_task(tid, src, dst, amount,
                                                         rnd.uniform(0.0, 0.05)))
                if rnd.random() < 0.6:
                    asyncio.get_running_loop().call_later(rnd.uniform(0.0, 0.12), task.cancel)
                tasks.append(task)
                await asyncio.sleep(rnd.uniform(0.0, 0.02))
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in results
                      if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
            assert errors == [], [repr(e) for e in errors[:5]]
            cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
            assert cancelled >= 10
            stats = await settled(pool)
            # every connection works and holds nothing (pymssql's implicit BEGIN TRAN only)
            conns = [await pool.getconn(timeout=10) for _ in range(4)]
            for c in conns:
                cur = c.cursor()
                await cur.execute("SELECT @@TRANCOUNT")
                assert (await cur.fetchone())[0] == 1
            for c in conns:
                await c.close()
            return stats

    stats = asyncio.run(main())
    assert stats["statements_cancelled"] >= 1
    assert tds_server.stats()["attentions"] >= 1
    assert_no_locks_left(tds_server)
    for tid in planned:
        outcomes.setdefault(tid, "cancelled")
    bal, ledger = read_state(tds_server)
    applied = Counter(t for t, *_ in ledger)
    assert sum(bal.values()) == ACCOUNTS * INITIAL     # the bare tasks' +1000 never stayed
    for tid, outcome in outcomes.items():
        if outcome == "ok":
            assert applied[tid] == 1
        else:
            assert applied[tid] <= 1      # cancelled during COMMIT: it may have landed
    expected = {i: INITIAL for i in range(ACCOUNTS)}
    for _tid, src, dst, amount in ledger:
        expected[src] -= amount
        expected[dst] += amount
    assert bal == expected                # nothing applied half-way


def test_async_units_own_error_reaches_the_caller_once_rolled_back(tds_server: Any) -> None:
    """An OSError raised by the application's own code inside ``fn`` is not the server's:
    it reaches the caller unchanged after one run, rolled back, the connection kept."""
    calls: list[int] = []
    mine = OSError("the application's own file is missing")

    async def unit(conn: Any) -> None:
        calls.append(1)
        await conn.cursor().execute("UPDATE acct SET bal = bal - 1 WHERE id = 1")
        raise mine

    async def main() -> tuple[dict[str, int], dict[str, int]]:
        async with make_pool(tds_server, min_size=1, max_size=1) as pool:
            setup_bank(pool.sync_pool)
            before = pool.get_stats()
            with pytest.raises(OSError) as caught:
                await pool.run_transaction(unit)
            assert caught.value is mine
            return before, pool.get_stats()

    before, after = asyncio.run(main())
    assert calls == [1]
    assert after.get("connections_discarded", 0) == before.get("connections_discarded", 0)
    bal, _ledger = read_state(tds_server)
    assert bal[1] == INITIAL
