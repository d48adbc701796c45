"""CircuitBreaker transitions with a fake clock, and the one-probe bound under threads."""

from __future__ import annotations

import logging
import threading
import time
from unittest.mock import Mock

import pymssql
import pytest

from mssql_pool.breaker import CircuitBreaker, CircuitState, ConnectGuard, guarded_connect
from mssql_pool.errors import CircuitOpenError, ConfigError, RetryExhausted
from mssql_pool.retry import RetryPolicy, connect_policy


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def boom(i: int = 0) -> Exception:
    return ConnectionRefusedError(111, f"refused {i}")


def trip(b: CircuitBreaker, n: int) -> None:
    for i in range(n):
        assert b.before_attempt() == 0.0
        b.record_failure(boom(i))


def test_closed_until_threshold() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=3, reset_timeout=5.0, clock=clock)
    trip(b, 2)
    assert b.state is CircuitState.CLOSED and b.consecutive_failures == 2
    b.record_success()
    assert b.consecutive_failures == 0
    trip(b, 3)
    assert b.state is CircuitState.OPEN
    assert b.retry_at == pytest.approx(105.0)


def test_open_fails_fast_with_details() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=2, reset_timeout=5.0, clock=clock)
    trip(b, 2)
    clock.now += 1.0
    with pytest.raises(CircuitOpenError) as ei:
        b.before_attempt()
    e = ei.value
    assert isinstance(e.last_error, ConnectionRefusedError)
    assert e.retry_at == pytest.approx(105.0)
    assert e.retry_in == pytest.approx(4.0)
    assert "open" in str(e) and "refused 1" in str(e)
    assert b.before_attempt(wait=True) == pytest.approx(4.0)
    assert b.stats()["rejected"] == 1


def test_half_open_lets_exactly_one_probe() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout=5.0, clock=clock)
    trip(b, 1)
    clock.now += 5.0
    assert b.before_attempt() == 0.0  # the probe
    assert b.state is CircuitState.HALF_OPEN
    for _ in range(10):
        with pytest.raises(CircuitOpenError) as ei:
            b.before_attempt()
        assert "probe" in str(ei.value)
        assert ei.value.retry_in == pytest.approx(5.0)  # never 0: nobody should spin
        assert b.before_attempt(wait=True) > 0
    b.record_success()
    assert b.state is CircuitState.CLOSED
    assert b.before_attempt() == 0.0 and b.before_attempt() == 0.0
    s = b.stats()
    assert s["probes"] == 1 and s["opened"] == 1 and s["successes"] == 1


def test_failed_probe_reopens_with_growing_interval() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout=2.0, max_reset_timeout=5.0, clock=clock)
    trip(b, 1)
    intervals = []
    for _ in range(4):
        clock.now = b.retry_at
        assert b.before_attempt() == 0.0
        b.record_failure(boom())
        assert b.state is CircuitState.OPEN
        intervals.append(b.retry_at - clock.now)
    assert intervals == pytest.approx([4.0, 5.0, 5.0, 5.0])
    clock.now = b.retry_at
    b.before_attempt()
    b.record_success()
    trip(b, 1)  # after closing, the interval is back to reset_timeout
    assert b.retry_at - clock.now == pytest.approx(2.0)


def test_constant_interval_without_max() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout=3.0, clock=clock)
    trip(b, 1)
    for _ in range(3):
        clock.now = b.retry_at
        b.before_attempt()
        b.record_failure(boom())
        assert b.retry_at - clock.now == pytest.approx(3.0)


def test_abandoned_probe_expires() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, probe_timeout=10.0, clock=clock)
    trip(b, 1)
    clock.now += 1.0
    assert b.before_attempt() == 0.0  # probe, never reported
    clock.now += 9.0
    with pytest.raises(CircuitOpenError):
        b.before_attempt()
    clock.now += 1.0
    assert b.before_attempt() == 0.0  # a new probe after probe_timeout


def test_late_failure_while_open_does_not_extend() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout=5.0, clock=clock)
    trip(b, 1)
    at = b.retry_at
    clock.now += 2.0
    b.record_failure(boom(9))
    assert b.retry_at == at and b.state is CircuitState.OPEN
    assert str(b.last_error) == str(boom(9))


def test_success_from_straggler_closes() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout=5.0, clock=clock)
    trip(b, 1)
    b.record_success()
    assert b.state is CircuitState.CLOSED


def test_call_wrapper_and_reset() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=2, reset_timeout=5.0, clock=clock)
    assert b.call(lambda x: x + 1, 1) == 2
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            b.call(lambda: (_ for _ in ()).throw(boom()))
    with pytest.raises(CircuitOpenError):
        b.call(lambda: 1)
    b.reset()
    assert b.state is CircuitState.CLOSED and b.call(lambda: 3) == 3
    assert "closed" in repr(b)


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": True}, "failure_threshold"),
        ({"reset_timeout": 0}, "reset_timeout"),
        ({"reset_timeout": 5, "max_reset_timeout": 1}, "max_reset_timeout"),
        ({"probe_timeout": 0}, "probe_timeout"),
    ],
)
def test_bad_config(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(ConfigError) as ei:
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
    assert ei.value.parameter == param


def test_open_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mssql_pool.breaker")
    b = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=FakeClock())
    trip(b, 1)
    assert any(r.levelno == logging.WARNING and "open" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- threads
def test_many_waiting_threads_one_login_per_probe_interval() -> None:
    """200 threads wait on an open circuit for ~0.6 s; the server stays down: the
    breaker lets through at most one attempt per probe interval (0.1 s)."""
    interval = 0.1
    b = CircuitBreaker(failure_threshold=1, reset_timeout=interval, probe_timeout=5.0)
    b.before_attempt()
    b.record_failure(boom())
    attempts: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 0.6

    def worker() -> None:
        while time.monotonic() < stop_at:
            try:
                b.wait_for_permission(timeout=stop_at - time.monotonic())
            except CircuitOpenError:
                return
            with lock:
                attempts.append(time.monotonic())
            time.sleep(0.005)  # a failing login takes a moment
            b.record_failure(boom())

    threads = [threading.Thread(target=worker, name=f"w{i}", daemon=True) for i in range(200)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(5.0)
    assert not any(t.is_alive() for t in threads)
    elapsed = time.monotonic() - start
    # at most one attempt per interval (+1 for the boundary)
    assert 1 <= len(attempts) <= int(elapsed / interval) + 1
    gaps = [b2 - a for a, b2 in zip(attempts, attempts[1:], strict=False)]
    assert all(g >= interval * 0.9 for g in gaps), gaps


def test_waiters_proceed_after_probe_success() -> None:
    b = CircuitBreaker(failure_threshold=1, reset_timeout=0.05)
    b.before_attempt()
    b.record_failure(boom())
    results: list[str] = []
    probe_started = threading.Event()

    def worker() -> None:
        b.wait_for_permission(timeout=2.0)
        if b.state is CircuitState.HALF_OPEN and not probe_started.is_set():
            probe_started.set()
            time.sleep(0.05)
            b.record_success()
            results.append("probe")
            return
        results.append("ok")
        b.record_success()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3.0)
    assert len(results) == 20 and results.count("probe") == 1
    assert b.state is CircuitState.CLOSED


# --------------------------------------------------------------------------- guarded_connect
def _policy(clock: FakeClock, **kw: object) -> RetryPolicy:
    def sleep(d: float) -> None:
        clock.now += d

    return connect_policy(clock=clock, sleep=sleep, random=lambda: 0.5, **kw)  # type: ignore[arg-type]


def _login(number: int, text: str) -> pymssql.OperationalError:
    return pymssql.OperationalError((number, text.encode()))


def test_guarded_connect_retries_transient_logins() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=5, reset_timeout=5.0, clock=clock)
    outcomes: list[object] = [_login(40613, "Database 'x' is not currently available."),
                              ConnectionRefusedError(111, "refused"), "conn"]

    def connect() -> object:
        o = outcomes.pop(0)
        if isinstance(o, Exception):
            raise o
        return o

    assert guarded_connect(connect, policy=_policy(clock), breaker=b) == "conn"
    s = b.stats()
    assert (s["failures"], s["successes"], s["state"]) == (2, 1, "closed")
    assert clock.now > 100.0  # backed off between logins


def test_guarded_connect_auth_fails_at_once() -> None:
    connect = Mock(side_effect=_login(18456, "Login failed for user 'app'."))
    with pytest.raises(pymssql.OperationalError, match="Login failed"):
        guarded_connect(connect, policy=_policy(FakeClock()))
    assert connect.call_count == 1


def test_guarded_connect_open_circuit_fails_fast_without_login() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=3, reset_timeout=5.0, clock=clock)
    calls = []

    def connect() -> object:
        calls.append(clock.now)
        raise ConnectionRefusedError(111, "refused")

    with pytest.raises(CircuitOpenError) as ei:
        guarded_connect(connect, policy=_policy(clock, max_attempts=10, deadline=60.0), breaker=b)
    assert len(calls) == 3  # the policy's 4th attempt met the open circuit
    assert isinstance(ei.value.last_error, ConnectionRefusedError)
    with pytest.raises(CircuitOpenError):
        guarded_connect(connect, policy=_policy(clock), breaker=b)
    assert len(calls) == 3


def test_guarded_connect_timeout_bounds_the_policy() -> None:
    clock = FakeClock()

    def connect() -> object:
        clock.now += 0.5
        raise ConnectionRefusedError(111, "refused")

    with pytest.raises(RetryExhausted):
        guarded_connect(connect, policy=_policy(clock, max_attempts=100, deadline=60.0),
                        timeout=2.0)
    assert clock.now - 100.0 <= 2.0


def test_guarded_connect_waits_for_the_probe_when_asked() -> None:
    b = CircuitBreaker(failure_threshold=1, reset_timeout=0.05)
    b.before_attempt()
    b.record_failure(boom())
    start = time.monotonic()
    assert guarded_connect(lambda: "conn", breaker=b, timeout=2.0, wait=True) == "conn"
    assert 0.03 <= time.monotonic() - start < 1.0
    assert b.state is CircuitState.CLOSED


def test_wait_for_permission_with_frozen_fake_clock_is_bounded_in_real_time() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout=50.0, clock=clock)
    b.before_attempt()
    b.record_failure(boom())
    start = time.monotonic()
    with pytest.raises(CircuitOpenError):
        b.wait_for_permission(0.05)
    assert time.monotonic() - start < 1.0


# --------------------------------------------------------------------------- ConnectGuard
def test_guard_defaults_and_pool_clock() -> None:
    from mssql_pool.retry import CONNECT_POLICY

    clock = FakeClock()
    guard = ConnectGuard.from_options(clock=clock, name="p")
    assert isinstance(guard.breaker, CircuitBreaker) and guard.breaker.clock is clock
    assert guard.policy is not None and guard.policy.clock is clock
    assert guard.policy.retry_on is CONNECT_POLICY.retry_on
    assert guard.wait is False
    own = RetryPolicy(clock=lambda: 5.0)
    assert ConnectGuard.from_options(connect_policy=own, clock=clock).policy is own
    off = ConnectGuard.from_options(connect_policy=None, circuit_breaker=None)
    assert off.policy is None and off.breaker is None


@pytest.mark.parametrize(
    "option,value",
    [("connect_policy", "yes"), ("circuit_breaker", 5), ("circuit_breaker", {"bogus": 1}),
     ("circuit_breaker", {"failure_threshold": 0}), ("circuit_wait", "no")],
)
def test_guard_options_are_validated(option: str, value: object) -> None:
    with pytest.raises(ConfigError) as ei:
        ConnectGuard.from_options(**{option: value})
    assert ei.value.parameter in (option, f"{option}.failure_threshold")


def test_guard_give_up_decisions() -> None:
    fast = ConnectGuard.from_options()
    waiting = ConnectGuard.from_options(circuit_wait=True)
    assert fast.give_up(CircuitOpenError("open")) and not waiting.give_up(CircuitOpenError("o"))
    auth = _login(18456, "Login failed for user 'app'.")
    assert fast.give_up(auth) and waiting.give_up(auth)
    for transient in (_login(40613, "Database 'd' is not currently available."),
                      ConnectionRefusedError(111, "refused"), RuntimeError("configure failed")):
        assert not fast.give_up(transient)
    assert not ConnectGuard.from_options(connect_policy=None).give_up(auth)


def test_guard_min_delay_is_the_server_hint() -> None:
    guard = ConnectGuard.from_options()
    assert guard.min_delay(_login(40501, "The service is currently busy.")) == 10.0
    assert guard.min_delay(_login(10928, "Resource ID : 1. limit has been reached")) == 5.0
    assert guard.min_delay(ConnectionRefusedError()) == 0.0
    assert guard.min_delay(None) == 0.0
    assert ConnectGuard.from_options(connect_policy=None).min_delay(_login(40501, "b")) == 0.0


def test_guard_connect_goes_through_the_breaker() -> None:
    clock = FakeClock()
    guard = ConnectGuard.from_options(circuit_breaker={"failure_threshold": 1}, clock=clock)
    with pytest.raises(ConnectionRefusedError):
        guard.connect(lambda: (_ for _ in ()).throw(ConnectionRefusedError()), timeout=1.0)
    with pytest.raises(CircuitOpenError):
        guard.connect(lambda: "conn", timeout=1.0)
    with pytest.raises(CircuitOpenError):
        guard.connect(lambda: "conn")  # background: never waits
    assert "ConnectGuard" in repr(guard)


def test_guard_auto_adds_no_circuit_where_endpoints_have_theirs() -> None:
    assert ConnectGuard.from_options(other_circuits=True).breaker is None
    mine = CircuitBreaker()
    assert ConnectGuard.from_options(circuit_breaker=mine, other_circuits=True).breaker is mine
