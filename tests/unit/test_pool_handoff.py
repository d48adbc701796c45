"""The pool's handoffs, on the fake driver: what frees a slot, what a caller waits for,
what survives an interrupt, what is counted, and when a loan ends.

Each test names the behaviour it pins down; the model of ``test_state_machine.py`` checks
the same rules on the decision core alone, these check them through ``ConnectionPool``.
Waits are bounded real waits; time-dependent decisions use a fake clock.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from typing import Any

import pytest
from fakedb import FakeClock, FakeDB, OperationalError, wait_for

from mssql_pool import ConnectionPool, PoolCircuitOpen, PoolTimeout
from mssql_pool._state import Waiter
from mssql_pool.errors import CircuitOpenError, PoolError
from mssql_pool.maintenance import Maintenance
from mssql_pool.retry import FixedBackoff, RetryPolicy


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# ---------------------------------------------------------------- 1. no lost wakeup
def test_a_waiter_behind_an_open_circuit_is_served_when_the_server_is_back() -> None:
    """A connect refused by an open circuit used to free its slot without waking anyone:
    the caller queued behind slept until its own deadline with the server back."""
    db = FakeDB()
    db.shutdown()
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=1, background=False,
                          circuit_breaker={"failure_threshold": 1, "reset_timeout": 0.3},
                          circuit_wait=True, connect_policy=None)
    try:
        first, got_first = in_thread(lambda: pool.getconn(timeout=8))
        wait_for(lambda: pool.get_stats()["connections_errors"] >= 1)
        second, got_second = in_thread(lambda: pool.getconn(timeout=8))
        wait_for(lambda: pool.get_stats()["requests_waiting"] == 2)
        db.restart()
        first.join(10)
        assert got_first and not isinstance(got_first[0], BaseException), got_first
        got_first[0].close()                    # the one connection goes to the second
        second.join(10)
        assert got_second and not isinstance(got_second[0], BaseException), got_second
        got_second[0].close()
        assert pool.get_stats()["requests_timeouts"] == 0
    finally:
        pool.close()


def test_a_discarded_connection_starts_a_connect_for_the_queue() -> None:
    db = FakeDB()
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=1, background=False)
    try:
        held = pool.getconn()
        waiting, got = in_thread(lambda: pool.getconn(timeout=8))
        wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
        held.invalidate("broken")
        held.close()
        waiting.join(10)
        assert got and not isinstance(got[0], BaseException)
        got[0].close()
    finally:
        pool.close()


# ---------------------------------------------------------------- 2. backoff holds
def test_many_callers_against_a_dead_server_make_few_logins() -> None:
    """8 callers hammering getconn for 2 s: one login per backoff pause for the whole pool
    (it used to be one per caller per pause, and a failed connect handed its slot to a
    caller in its own pause, which dialled at once: thousands of logins)."""
    db = FakeDB()
    db.shutdown()
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=8, background=False,
                          connect_policy=None, circuit_breaker=None)
    stop = time.monotonic() + 2.0

    def hammer() -> None:
        while time.monotonic() < stop:
            try:
                pool.getconn(timeout=0.2).close()
            except PoolTimeout:
                pass

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        # no connect policy: 50 ms doubling to 2 s (x0.5-1.5): about 7 pauses in 2 s
        assert 3 <= db.round_trips <= 16, db.round_trips
    finally:
        pool.close()


# ---------------------------------------------------------------- 3. BaseException
def test_an_interrupted_connect_leaks_no_slot() -> None:
    calls = []
    db = FakeDB()

    def connect() -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return db.connect()

    pool = ConnectionPool(connect=connect, min_size=0, max_size=1, background=False,
                          timeout=5)
    try:
        try:
            pool.getconn().close()   # connects on another thread: the second one serves it
        except KeyboardInterrupt:
            pass                     # (a pool that connects in the caller's thread)
        with pool.connection(timeout=2) as conn:   # the slot was not leaked
            conn.cursor().execute("SELECT 1")
        stats = pool.get_stats()
        assert stats["pool_size"] == 1 and stats["connections_errors"] == 1
    finally:
        pool.close()


def test_an_interrupted_check_leaks_nothing(db: FakeDB, clock: FakeClock) -> None:
    state = {"raise": False}

    def check(raw: Any) -> None:
        if state["raise"]:
            state["raise"] = False
            raise KeyboardInterrupt

    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=1, background=False,
                          clock=clock, check=check)
    try:
        pool.getconn().close()
        clock.advance(5)                       # outside the bypass window: checked
        state["raise"] = True
        with pytest.raises(KeyboardInterrupt):
            pool.getconn()
        stats = pool.get_stats()
        assert stats["pool_size"] == 0 and stats["connections_discarded"] == 1
        pool.getconn().close()                 # the slot is free
    finally:
        pool.close()


def test_an_interrupted_wait_gives_its_place_and_its_connection_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    db = FakeDB()
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=1, background=False)
    try:
        held = pool.getconn()
        real_sleep = Waiter.sleep
        interrupted = threading.Event()

        def sleep(self: Waiter, timeout: float) -> bool:
            if threading.current_thread().name == "interrupted":
                real_sleep(self, timeout)
                interrupted.set()
                raise KeyboardInterrupt      # e.g. a gevent timeout, after the delivery
            return real_sleep(self, timeout)

        monkeypatch.setattr(Waiter, "sleep", sleep)
        victim = threading.Thread(target=lambda: pytest.raises(KeyboardInterrupt,
                                                                pool.getconn, 8),
                                  name="interrupted", daemon=True)
        victim.start()
        wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
        held.close()                           # delivered to the victim, who is gone
        victim.join(10)
        assert interrupted.is_set()
        stats = pool.get_stats()
        assert stats["requests_waiting"] == 0 and stats["pool_available"] == 1
        assert stats["requests_errors"] == 1
        pool.getconn(timeout=1).close()        # the connection came back, not lost
    finally:
        pool.close()


# ---------------------------------------------------------------- 4. no hostages
def _hung_first_ping(pool_check_calls: list[Any], release: threading.Event) -> Any:
    def check(raw: Any) -> None:
        pool_check_calls.append(raw)
        if len(pool_check_calls) == 1:
            release.wait(10)                   # the first ping hangs

    return check


@pytest.mark.parametrize("how", ["keepalive", "check"])
def test_a_hung_ping_holds_one_connection_not_the_pool(how: str) -> None:
    db = FakeDB()
    calls: list[Any] = []
    release = threading.Event()
    clock = FakeClock()
    pool = ConnectionPool(connect=db.connect, min_size=3, max_size=3, background=False,
                          clock=clock, keepalive=10, check=_hung_first_ping(calls, release))
    try:
        pool.wait(5)
        clock.advance(20)                      # every idle connection is due a ping
        if how == "keepalive":
            pinger, _ = in_thread(pool.run_maintenance)
        else:
            pinger, _ = in_thread(pool.check)
        wait_for(lambda: len(calls) == 1)      # one ping is hanging
        assert pool.get_stats()["pool_available"] == 2
        conn = pool.getconn(timeout=1)         # a healthy one, not a timeout
        conn.close()
        release.set()
        pinger.join(10)
        assert pool.get_stats()["pool_available"] == 3
    finally:
        release.set()
        pool.close()


# ---------------------------------------------------------------- 5. FIFO for new ones
def test_a_caller_waiting_for_a_connect_takes_a_returned_connection_first() -> None:
    db = FakeDB()
    gate = threading.Event()

    def slow_connect() -> Any:
        if db.connects >= 1:
            gate.wait(10)                      # the second login is slow
        return db.connect()

    pool = ConnectionPool(connect=slow_connect, min_size=0, max_size=2, background=False)
    try:
        held = pool.getconn()
        held_raw = held.raw
        waiting, got = in_thread(lambda: pool.getconn(timeout=8))
        wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
        held.close()                           # returned while the login is in flight
        waiting.join(10)
        assert got and got[0].raw is held_raw  # first come: the returned one
        gate.set()
        wait_for(lambda: pool.get_stats()["pool_available"] == 1)   # the new one: idle
        got[0].close()
        assert pool.get_stats()["connections_num"] == 2
    finally:
        gate.set()
        pool.close()


def test_a_burst_on_a_cold_pool_opens_fewer_connections_than_callers() -> None:
    db = FakeDB()

    def slow_connect() -> Any:
        time.sleep(0.2)                        # a slow login
        return db.connect()

    pool = ConnectionPool(connect=slow_connect, min_size=0, max_size=8, background=False)
    try:
        def unit() -> None:
            with pool.connection(timeout=10) as conn:
                conn.cursor().execute("SELECT 1")
                time.sleep(0.002)              # a short unit of work

        threads = [threading.Thread(target=unit, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert pool.get_stats()["requests_num"] == 8
        assert db.connects <= 4, db.connects   # it was one per caller: 8
    finally:
        pool.close()


# ---------------------------------------------------------------- 6. errors to catch
def test_an_open_circuit_refusal_is_a_pool_timeout(db: FakeDB, clock: FakeClock) -> None:
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=2, background=False,
                          clock=clock, sleep=clock.sleep, timeout=0.5,
                          circuit_breaker={"failure_threshold": 1, "reset_timeout": 30.0})
    try:
        db.fail_next("connect", 100)
        with pytest.raises(PoolTimeout):
            pool.getconn()
        logins = db.round_trips
        for expected in (PoolTimeout, TimeoutError, CircuitOpenError, PoolCircuitOpen):
            with pytest.raises(expected) as info:
                pool.getconn()
        assert isinstance(info.value, PoolTimeout) and info.value.last_error is not None
        assert db.round_trips == logins        # no login sent at an open circuit
        stats = pool.get_stats()
        assert stats["requests_errors"] == 4 and stats["requests_timeouts"] == 1
    finally:
        pool.close()


# ---------------------------------------------------------------- 7. reconnect_failed
def test_reconnect_failed_is_called_on_time(db: FakeDB, clock: FakeClock) -> None:
    """The maintenance thread wakes for ``reconnect_timeout`` itself, not at the next
    backoff step of its refills (which could be seconds later)."""
    reported: list[float] = []
    pool = ConnectionPool(
        connect=db.connect, min_size=1, background=False, clock=clock, sleep=clock.sleep,
        reconnect_timeout=5.0, reconnect_failed=lambda p: reported.append(clock()),
        maintenance_interval=60.0, connect_policy=None)
    worker = Maintenance(pool)      # the thread's loop, driven by hand: pass, then sleep
    try:
        db.shutdown()
        start = clock()
        while not reported and clock() < start + 60:
            worker.run_once()
            # reconnect_failed is a listener of the reconnect_failed event: let it run
            assert pool.events.flush(10)
            if reported:
                break
            clock.advance(worker.next_delay())
        assert reported and reported[0] - start <= 5.0 + 0.5, reported
    finally:
        pool.close()


# ---------------------------------------------------------------- 8. stats
@pytest.mark.parametrize("finder", ["checkout", "check", "keepalive"])
def test_a_dead_idle_connection_is_counted_once_whoever_finds_it(
        finder: str, db: FakeDB, clock: FakeClock) -> None:
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=2, background=False,
                          clock=clock, keepalive=10)
    try:
        conn = pool.getconn()
        raw = conn.raw
        conn.close()
        db.kill(raw)
        clock.advance(20)
        if finder == "checkout":
            pool.getconn().close()
        elif finder == "check":
            assert pool.check() == 1
        else:
            pool.run_maintenance()
        stats = pool.get_stats()
        assert stats["connections_discarded"] == 1 and stats["connections_lost"] == 1
    finally:
        pool.close()


def test_wait_time_includes_requests_that_timed_out(db: FakeDB, clock: FakeClock) -> None:
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=1, background=False,
                          clock=clock)
    try:
        held = pool.getconn()
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.2)          # a real 0.2 s wait; the fake clock stands
        stats = pool.get_stats()
        assert stats["requests_timeouts"] == 1 and stats["requests_wait_ms"] >= 200
        held.close()
    finally:
        pool.close()


# ---------------------------------------------------------------- 9. loans end
def test_a_returned_proxy_its_cursors_and_raw_are_dead(db: FakeDB) -> None:
    pool = ConnectionPool(connect=db.connect, min_size=0, max_size=1, background=False)
    try:
        conn = pool.getconn()
        cur = conn.cursor()
        conn.close()
        nxt = pool.getconn()                   # the same driver connection, lent again
        for use in (lambda: cur.execute("UPDATE t SET a = 1"), cur.fetchall,
                    lambda: conn.raw, conn.cursor, conn.commit,
                    lambda: cur.rowcount):
            with pytest.raises(PoolError, match="returned to the pool"):
                use()
        assert db.statements == []             # nothing ran in the next loan
        nxt.close()
    finally:
        pool.close()


def test_putconn_of_a_foreign_object_raises(db: FakeDB) -> None:
    pool = ConnectionPool(connect=db.connect, min_size=0, background=False)
    other = ConnectionPool(connect=db.connect, min_size=0, background=False)
    try:
        for thing in (object(), db.connect(), "conn", None):
            with pytest.raises(PoolError):
                pool.putconn(thing)  # type: ignore[arg-type]
        conn = other.getconn()
        with pytest.raises(PoolError):
            pool.putconn(conn)
        conn.close()
    finally:
        pool.close()
        other.close()


def test_a_dropped_pool_is_collected_while_an_old_proxy_lives(db: FakeDB) -> None:
    pool = ConnectionPool(connect=db.connect, min_size=0, maintenance_interval=0.01)
    old = pool.getconn()
    cursor = old.cursor()
    old.close()
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None
    with pytest.raises(PoolError):
        cursor.execute("SELECT 1")


# ---------------------------------------------------------------- 10. connect_policy
def test_connect_policy_attempts_and_backoff_are_honoured(db: FakeDB) -> None:
    policy = RetryPolicy(max_attempts=3, deadline=None, backoff=FixedBackoff(0.05),
                         retry_on=lambda exc: True)
    pool = ConnectionPool(connect=db.connect, min_size=0, background=False, timeout=20,
                          connect_policy=policy, circuit_breaker=None)
    try:
        db.fail_next("connect", 100, error=OperationalError("refused"))
        start = time.monotonic()
        with pytest.raises(PoolTimeout) as info:
            pool.getconn()
        assert time.monotonic() - start < 10   # not the 20 s timeout
        assert db.round_trips == 3             # max_attempts, then the waiter is told
        assert "gave up" in str(info.value)
        assert pool.get_stats()["requests_errors"] == 1
    finally:
        pool.close()


def test_connect_policy_deadline_is_honoured(db: FakeDB) -> None:
    policy = RetryPolicy(max_attempts=None, deadline=0.3, backoff=FixedBackoff(0.1),
                         retry_on=lambda exc: True)
    pool = ConnectionPool(connect=db.connect, min_size=0, background=False, timeout=20,
                          connect_policy=policy, circuit_breaker=None)
    try:
        db.fail_next("connect", 100, error=OperationalError("refused"))
        with pytest.raises(PoolTimeout, match="gave up"):
            pool.getconn()
        assert 2 <= db.round_trips <= 5
    finally:
        pool.close()


# ---------------------------------------------------------------- options in PoolConfig
def test_connect_options_live_in_pool_config() -> None:
    from mssql_pool.config import make_config
    from mssql_pool.errors import ConfigError

    policy = RetryPolicy(max_attempts=2, deadline=None)
    cfg = make_config(conninfo="mssql://app:Secr3t-pw@db/orders", connect_policy=policy,
                      circuit_breaker={"failure_threshold": 2}, circuit_wait=True)
    text = repr(cfg)
    assert "connect_policy=<RetryPolicy" in text and "circuit_wait=True" in text
    assert "circuit_breaker={'failure_threshold': 2}" in text
    assert "Secr3t-pw" not in text
    for option, value in (("connect_policy", "sometimes"), ("circuit_wait", 1),
                          ("circuit_breaker", {"failure_threshold": 0}),
                          ("circuit_breaker", {"no_such_argument": 1}),
                          ("circuit_breaker", 5)):
        with pytest.raises(ConfigError) as info:
            make_config(conninfo="mssql://db/x", **{option: value})
        assert info.value.parameter in (option, f"{option}.failure_threshold"), (option, info.value)
