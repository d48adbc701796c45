"""Concurrency: exclusive use, strict FIFO handoff, timed-out waiters, fork safety."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fakedb import FakeDB, wait_for

from mssql_pool import ConnectionPool, PoolTimeout


def returned_to_a_waiter(pool: ConnectionPool, held: Any, waiting: Callable[[], bool], *,
                         invalidate: bool = False) -> tuple[Any, Any]:
    """Return ``held`` (invalidated first if asked) once a thread waits in ``getconn`` and
    ``waiting()`` holds; the connection that thread got, and ``held``'s driver connection."""
    held_raw = held.raw
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(pool.getconn(timeout=10)))
    t.start()
    wait_for(waiting)
    if invalidate:
        held.invalidate("test")
    pool.putconn(held)
    t.join(10)
    assert len(got) == 1
    return got[0], held_raw


def test_many_threads_never_share_a_connection() -> None:
    db = FakeDB(latency=20e-6, record=False)
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=4, background=False,
                          timeout=10)
    in_use: set[int] = set()
    guard = threading.Lock()
    errors: list[BaseException] = []
    done = [0] * 32

    def worker(i: int) -> None:
        try:
            for _ in range(40):
                with pool.connection() as conn:
                    with guard:
                        assert conn.raw.id not in in_use
                        in_use.add(conn.raw.id)
                    conn.cursor().execute("SELECT 1")
                    with guard:
                        in_use.discard(conn.raw.id)
                done[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and all(n == 40 for n in done)
    assert db.connects <= 4
    stats = pool.get_stats()
    assert stats["requests_num"] == 32 * 40 and stats["requests_waiting"] == 0
    assert stats["pool_available"] == stats["pool_size"] <= 4
    pool.close()


def test_strict_fifo_handoff() -> None:
    db = FakeDB()
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=1, background=False)
    held = pool.getconn()
    order: list[int] = []

    def waiter(i: int) -> None:
        conn = pool.getconn(timeout=10)
        order.append(i)
        pool.putconn(conn)

    threads = []
    for i in range(6):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        wait_for(lambda n=i + 1: pool.get_stats()["requests_waiting"] == n)
    # A barging thread must not jump the queue: with waiters queued, nothing is idle.
    pool.putconn(held)
    for t in threads:
        t.join(10)
    assert order == list(range(6))
    # the first checkout waited too, for the connection it caused to be opened
    assert pool.get_stats()["requests_queued"] == 7
    pool.close()


def test_timed_out_waiter_never_gets_a_connection() -> None:
    db = FakeDB()
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=1, background=False)
    held = pool.getconn()
    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn(timeout=0.05)
    assert 0.04 <= time.monotonic() - start < 2
    assert info.value.waited >= 0.04 and info.value.waiting == 0
    assert "waiting" in str(info.value)
    pool.putconn(held)
    # The returned connection went idle, not to the departed waiter.
    assert "idle=1 busy=0 waiting=0" in repr(pool)
    pool.close()


def test_discarded_connection_frees_slot_for_waiter() -> None:
    db = FakeDB()
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=1, background=False)
    held = pool.getconn()
    got, held_raw = returned_to_a_waiter(
        pool, held, lambda: pool.get_stats()["requests_waiting"] == 1, invalidate=True)
    assert got.raw is not held_raw and db.connects == 2
    pool.putconn(got)
    pool.close()


def test_connect_failures_back_off_within_the_timeout() -> None:
    db = FakeDB()
    db.shutdown()
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=4, background=False)
    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn(timeout=0.4)
    assert 0.35 <= time.monotonic() - start < 3
    assert 2 <= db.round_trips <= 6          # backoff, not a hot loop of login attempts
    assert info.value.last_error is not None and "20009" in str(info.value)
    pool.close()


def test_returned_connection_reaches_caller_in_connect_backoff() -> None:
    db = FakeDB()
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=2, background=False)
    held = pool.getconn()
    db.fail_next("connect", 100)
    got, held_raw = returned_to_a_waiter(
        pool, held, lambda: pool.get_stats()["connections_errors"] >= 1)
    assert got.raw is held_raw
    pool.putconn(got)
    pool.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_after_fork_never_uses_parent_sockets() -> None:
    db = FakeDB()
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=2, background=False)
    busy = pool.getconn()
    idle = pool.getconn()
    busy_raw, idle_raw = busy.raw, idle.raw
    pool.putconn(idle)
    parent_ids = {busy_raw.id, idle_raw.id}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            with pool.connection() as conn:
                fresh = conn.raw.id not in parent_ids
            pool.putconn(busy)               # the parent's busy one: dropped, not closed
            ok = fresh and not busy_raw.closed and not idle_raw.closed
            code = 0 if ok else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    result = os.read(read, 1)
    os.waitpid(pid, 0)
    os.close(read)
    assert result == b"\x00"
    assert not busy_raw.closed and not idle_raw.closed
    pool.putconn(busy)
    pool.close()


def test_unclosed_pool_is_collected_and_its_thread_ends() -> None:
    import gc
    import weakref

    db = FakeDB()
    pool = ConnectionPool(connect=db.connect, min_size=1, maintenance_interval=0.01)
    pool.wait(5)
    thread = pool._maintenance.thread
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()
