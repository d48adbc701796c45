"""AsyncConnectionPool on the fake driver: FIFO permits, timeouts, hand-backs, threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fakedb import FakeDB

from mssql_pool import AsyncConnectionPool, ConfigError, PoolClosed, PoolError, PoolTimeout
from mssql_pool.errors import TooManyRequests
from mssql_pool.retry import RetryPolicy, set_testing

pytestmark = pytest.mark.timeout(60)


def make(db: FakeDB, **kw: Any) -> AsyncConnectionPool:
    opts: dict[str, Any] = {"min_size": 0, "max_size": 2, "background": False, "timeout": 10.0}
    opts.update(kw)
    return AsyncConnectionPool(connect=db.connect, **opts)


async def until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.002)


def aio_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("mssql_pool-aio-")]


def test_roundtrip_cursor_commit_and_repr(db: FakeDB) -> None:
    async def main() -> None:
        async with make(db, name="rt") as pool:
            async with pool.connection() as conn:
                cur = conn.cursor()
                await cur.execute("SELECT %s", (42,))
                rows = await cur.fetchall()
                assert rows is not None
                await conn.commit()
                assert repr(pool) == "<AsyncConnectionPool 'rt' idle=0 busy=1 waiting=0 size=1/2>"
            assert conn.closed
            with pytest.raises(PoolError):
                conn.cursor()
            assert repr(pool) == "<AsyncConnectionPool 'rt' idle=1 busy=0 waiting=0 size=1/2>"
            stats = pool.get_stats()
            assert stats["requests_num"] == 1 and stats["requests_cancelled"] == 0

    asyncio.run(main())


def test_driver_calls_run_in_the_pools_named_threads_never_on_the_loop(db: FakeDB) -> None:
    seen: list[str] = []

    def connect() -> Any:
        seen.append(threading.current_thread().name)
        return db.connect()

    async def main() -> None:
        loop_thread = threading.current_thread().name
        async with AsyncConnectionPool(connect=connect, max_size=2, min_size=0,
                                       background=False, name="th") as pool:
            async with pool.connection() as conn:
                def where(sync_conn: Any) -> str:
                    return threading.current_thread().name
                seen.append(await conn.run_sync(where))
        assert loop_thread not in seen
        # statements in the async pool's workers; logins in the sync core's connect thread
        assert seen and all(n.startswith("mssql_pool-aio-th-") or n == "mssql_pool-th-connect"
                            for n in seen), seen
        assert any(n.startswith("mssql_pool-aio-th-") for n in seen), seen

    asyncio.run(main())


def test_waiters_are_served_first_come_first_served(db: FakeDB) -> None:
    async def main() -> None:
        async with make(db, max_size=1) as pool:
            held = await pool.getconn()
            order: list[int] = []

            async def waiter(i: int) -> None:
                async with pool.connection() as conn:
                    order.append(i)
                    await conn.cursor().execute("SELECT 1")

            tasks = []
            for i in range(6):
                tasks.append(asyncio.create_task(waiter(i)))
                await until(lambda i=i: pool.get_stats()["requests_waiting"] == i + 1)
            await pool.putconn(held)
            await asyncio.gather(*tasks)
            assert order == list(range(6))
            # the six, and the first getconn, which waited for the connect it started
            assert pool.get_stats()["requests_queued"] == 7

    asyncio.run(main())


def test_timeout_raises_pool_timeout_and_the_slot_stays_usable(db: FakeDB) -> None:
    async def main() -> None:
        async with make(db, max_size=1) as pool:
            held = await pool.getconn()
            with pytest.raises(PoolTimeout) as ei:
                await pool.getconn(timeout=0.05)
            assert ei.value.waited >= 0.05 and ei.value.max_size == 1
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=0)
            await held.close()
            again = await pool.getconn(timeout=5)
            await again.close()
            assert pool.get_stats()["requests_timeouts"] == 2
            assert pool._gate.free == 1 and not pool._gate.waiters

    asyncio.run(main())


def test_a_cancelled_waiter_loses_nothing(db: FakeDB) -> None:
    async def main() -> None:
        async with make(db, max_size=1) as pool:
            held = await pool.getconn()
            task = asyncio.create_task(pool.getconn())
            await until(lambda: pool.get_stats()["requests_waiting"] == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.get_stats()["requests_waiting"] == 0
            await held.close()
            conn = await pool.getconn(timeout=5)
            await conn.close()
            assert pool._gate.free == 1
            assert pool.get_stats()["requests_cancelled"] == 1

    asyncio.run(main())


@pytest.mark.parametrize("delivered", [None, "a connection"])
def test_what_arrives_with_the_cancellation_is_passed_on(delivered: Any) -> None:
    """The waiter's future is resolved (a permit, or a connection checked out for it) and
    its task cancelled before it runs: the permit goes to the next waiter, the connection
    goes back."""
    from mssql_pool.aio import _Gate

    orphans: list[Any] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = _Gate(1, 0)
        gate.orphan = orphans.append
        await gate.acquire(loop, loop.time() + 10)          # the only permit
        first = asyncio.create_task(gate.acquire(loop, loop.time() + 10))
        second = asyncio.create_task(gate.acquire(loop, loop.time() + 10))
        await until(lambda: len(gate.waiters) == 2)
        taken = gate.take(loop.time())
        assert taken is not None
        fut, _deadline = taken
        fut.set_result(delivered)       # resolved ...
        first.cancel()                  # ... and cancelled before the task runs
        with pytest.raises(asyncio.CancelledError):
            await first
        if delivered is None:
            assert await asyncio.wait_for(second, 5) is None     # the permit moved on
        else:
            assert orphans == [delivered] and not second.done()
            gate.release()                                       # what the orphan's return does
            assert await asyncio.wait_for(second, 5) is None
        assert gate.cancelled == 1 and not gate.waiters

    asyncio.run(main())


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_a_checkout_given_up_while_connecting_is_handed_back(db: FakeDB, how: str) -> None:
    gate = threading.Event()

    def slow_connect() -> Any:
        gate.wait(10)
        return db.connect()

    async def main() -> None:
        async with AsyncConnectionPool(connect=slow_connect, min_size=0, max_size=1,
                                       background=False, timeout=10) as pool:
            if how == "timeout":
                with pytest.raises(PoolTimeout):
                    await pool.getconn(timeout=0.05)
            else:
                task = asyncio.create_task(pool.getconn())
                await until(lambda: pool.get_stats()["pool_size"] == 1)   # connecting
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            if how == "cancel":
                assert pool._gate.free == 0      # the worker still holds the permit
            else:
                # the core's own wait timed out in the worker, which gives the permit back
                # (just after the caller was told: a bounded wait); the connect in flight
                # goes on and joins the idle set
                await until(lambda: pool._gate.free == 1)
                assert pool.get_stats()["pool_available"] == 0     # still connecting
            gate.set()
            await until(lambda: pool._gate.free == 1
                        and pool.get_stats()["pool_available"] == 1)
            stats = pool.get_stats()
            assert stats["pool_available"] == 1 and stats["pool_size"] == 1
            conn = await pool.getconn(timeout=5)     # the same connection, reused
            await conn.close()
            assert db.connects == 1

    asyncio.run(main())


def test_one_operation_at_a_time_per_connection() -> None:
    db = FakeDB(latency=0.05)

    async def main() -> None:
        async with make(db) as pool:
            async with pool.connection() as conn:
                cur = conn.cursor()
                first = asyncio.create_task(cur.execute("SELECT 1"))
                await asyncio.sleep(0.01)
                with pytest.raises(PoolError, match="another operation"):
                    await conn.cursor().execute("SELECT 2")
                await first

    asyncio.run(main())


def test_max_waiting_sheds_load(db: FakeDB) -> None:
    async def main() -> None:
        async with make(db, max_size=1, max_waiting=1) as pool:
            held = await pool.getconn()
            waiting = asyncio.create_task(pool.getconn())
            await until(lambda: pool.get_stats()["requests_waiting"] == 1)
            with pytest.raises(TooManyRequests):
                await pool.getconn()
            await held.close()
            await (await waiting).close()
            assert pool.get_stats()["requests_errors"] == 1

    asyncio.run(main())


def test_close_fails_waiters_and_joins_the_threads(db: FakeDB) -> None:
    async def main() -> None:
        pool = make(db, max_size=1, name="closing")
        held = await pool.getconn()
        waiting = asyncio.create_task(pool.getconn())
        await until(lambda: pool.get_stats()["requests_waiting"] == 1)
        assert aio_threads()
        await held.close()
        conn = await waiting
        late = asyncio.create_task(pool.getconn())
        await until(lambda: pool.get_stats()["requests_waiting"] == 1)
        await conn.close()
        await late
        other = asyncio.create_task(pool.getconn())
        await until(lambda: pool.get_stats()["requests_waiting"] == 1)
        await pool.close()
        with pytest.raises(PoolClosed):
            await other
        with pytest.raises(PoolClosed):
            await pool.getconn()
        assert pool.sync_pool.closed
        assert not [n for n in aio_threads() if "-closing-" in n]

    asyncio.run(main())


def test_options_are_the_sync_pools_and_validated_once(db: FakeDB) -> None:
    with pytest.raises(ConfigError, match="max_size"):
        AsyncConnectionPool(connect=db.connect, min_size=3, max_size=2)
    with pytest.raises(ConfigError, match="cancel_timeout"):
        AsyncConnectionPool(connect=db.connect, cancel_timeout=0)
    pool = AsyncConnectionPool(connect=db.connect, max_size=3, timeout=7, background=False)
    assert pool.config is pool.sync_pool.config and pool.config.timeout == 7

    async def bad_timeout() -> None:
        with pytest.raises(ConfigError, match="timeout"):
            await pool.getconn(timeout=-1)
        await pool.close()

    asyncio.run(bad_timeout())


def test_a_pool_belongs_to_one_event_loop(db: FakeDB) -> None:
    pool = make(db)

    async def use() -> None:
        await (await pool.getconn()).close()

    asyncio.run(use())
    with pytest.raises(PoolError, match="another event loop"):
        asyncio.run(use())


def test_run_transaction_reruns_the_unit_after_a_disconnect(db: FakeDB) -> None:
    calls: list[int] = []

    async def unit(conn: Any, x: int) -> int:
        calls.append(x)
        await conn.cursor().execute("SELECT 1")
        if len(calls) == 1:
            db.fail_next("execute", 1)       # the second statement finds it dead
        await conn.cursor().execute("UPDATE t SET x = %s", (x,))
        return x * 2

    async def main() -> None:
        async with make(db) as pool:
            was = set_testing(True)
            try:
                assert await pool.run_transaction(unit, 21,
                                                  policy=RetryPolicy(max_attempts=3)) == 42
            finally:
                set_testing(was)
            assert calls == [21, 21]
            assert pool.get_stats()["connections_lost"] >= 1

    asyncio.run(main())


def test_a_connection_dropped_unreturned_gives_its_permit_back(db: FakeDB) -> None:
    async def main() -> None:
        async with make(db, max_size=1) as pool:
            conn = await pool.getconn()
            del conn
            await until(lambda: pool._gate.free == 1)
            again = await pool.getconn(timeout=5)
            await again.close()

    asyncio.run(main())


def test_a_failed_checkout_whose_task_is_cancelled_meanwhile_returns_its_permit(db: FakeDB) -> None:
    """The worker's checkout fails and the task is cancelled before it has seen the
    failure: the permit must still come back."""
    import time

    release = threading.Event()
    failed = threading.Event()

    async def main() -> None:
        async with make(db, max_size=1) as pool:
            def failing_getconn(timeout: float | None = None) -> Any:
                release.wait(10)
                failed.set()
                raise RuntimeError("checkout failed")

            pool.sync_pool.getconn = failing_getconn  # type: ignore[method-assign]
            task = asyncio.create_task(pool.getconn())
            await until(lambda: pool._gate.free == 0)
            await asyncio.sleep(0.01)
            release.set()
            assert failed.wait(10)
            time.sleep(0.1)     # on the loop on purpose: the failure lands before the cancel
            task.cancel()
            with pytest.raises((asyncio.CancelledError, RuntimeError)):
                await task
            await until(lambda: pool._gate.free == 1)

    asyncio.run(main())


def test_a_connection_checked_out_for_a_waiter_that_left_goes_back(db: FakeDB) -> None:
    """Under contention a returning task checks a connection out for the oldest waiter in
    the same worker hop; if that waiter is cancelled meanwhile, the connection goes back
    and the permit comes free."""
    release = threading.Event()

    async def main() -> None:
        async with make(db, max_size=1) as pool:
            held = await pool.getconn()
            waiter = asyncio.create_task(pool.getconn())
            await until(lambda: pool.get_stats()["requests_waiting"] == 1)
            real_getconn = pool.sync_pool.getconn

            def slow_getconn(timeout: float | None = None) -> Any:
                release.wait(10)
                return real_getconn(timeout)

            pool.sync_pool.getconn = slow_getconn  # type: ignore[method-assign]
            closing = asyncio.create_task(held.close())
            await until(lambda: pool.get_stats()["requests_waiting"] == 0)  # taken
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            release.set()
            await closing
            await until(lambda: pool._gate.free == 1)
            s = pool.get_stats()
            assert s["pool_available"] == 1 and s["pool_size"] == 1
            pool.sync_pool.getconn = real_getconn  # type: ignore[method-assign]
            again = await pool.getconn(timeout=5)
            await again.close()

    asyncio.run(main())
