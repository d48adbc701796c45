"""The pool's connect guard: the connect policy and the pool-wide circuit in front of logins.

18456 ends the caller's wait at once with a clear error; transient login failures are
retried within the acquire timeout; a throttling hint sets the least pause; the options
are validated; the refill path (maintenance, ``wait()``) goes through the guard too.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from fakedb import FakeClock, FakeDB, OperationalError, pool_factory

from mssql_pool import ConnectionPool
from mssql_pool.breaker import CircuitBreaker, CircuitState, ConnectGuard
from mssql_pool.errors import CircuitOpenError, ConfigError, PoolTimeout
from mssql_pool.retry import CONNECT_POLICY, connect_policy

SECRET = "s3cr3t-Pa55"


def login_error(number: int, text: str, severity: int = 14) -> OperationalError:
    """What pymssql's connect() raises for a login refused by the server."""
    return OperationalError((number, (
        f"{text}DB-Lib error message {number}, severity {severity}:\nGeneral SQL Server "
        f"error: Check messages from the SQL Server\nDB-Lib error message 20002, severity 9:"
        f"\nAdaptive Server connection failed (localhost)\n").encode()))


def login_failed() -> OperationalError:
    return login_error(18456, "Login failed for user 'app'.")


def unavailable() -> OperationalError:
    return login_error(40613, "Database 'db' on server 'srv' is not currently available. "
                              "Please retry the connection later.", severity=20)


def busy() -> OperationalError:
    return login_error(40501, "The service is currently busy. Retry the request after 10 "
                              "seconds.", severity=20)


db = pytest.fixture(lambda: FakeDB(), name="db")
clock = pytest.fixture(lambda: FakeClock(), name="clock")


@pytest.fixture
def make(db: FakeDB, clock: FakeClock) -> Any:
    with pool_factory(db, clock, min_size=0, max_size=2) as make:
        yield make


def test_wrong_password_fails_at_once_with_one_login(db: FakeDB, make: Any) -> None:
    pool = make(timeout=5.0)
    db.fail_next("connect", 10, error=login_failed())
    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn()
    assert time.monotonic() - start < 1.0
    assert db.round_trips == 1                 # one login, not one per backoff pause
    err = info.value
    assert err.last_error is not None and "18456" in str(err.last_error)
    assert err.__cause__ is err.last_error
    text = str(err)
    assert "refused the login" in text and "password" in text and "Login failed" in text
    stats = pool.get_stats()
    assert stats["requests_errors"] == 1 and stats["requests_timeouts"] == 0
    assert stats["connections_errors"] == 1


def test_login_refused_message_never_shows_the_password() -> None:
    # A driver message that echoes a connection string is masked too.
    def connect() -> Any:
        raise login_error(18456, f"Login failed for user 'app'. PWD={SECRET};")

    pool = ConnectionPool(connect=connect, min_size=0, background=False, timeout=5.0)
    try:
        with pytest.raises(PoolTimeout) as info:
            pool.getconn()
        assert SECRET not in str(info.value) and SECRET not in repr(info.value)
        assert "refused the login" in str(info.value)
    finally:
        pool.close()


def test_transient_login_failures_are_retried_within_the_timeout(db: FakeDB,
                                                                 make: Any) -> None:
    pool = make(timeout=5.0)
    db.fail_next("connect", 2, error=unavailable())
    conn = pool.getconn()
    assert db.round_trips == 3 and db.connects == 1
    assert pool.get_stats()["connections_errors"] == 2
    conn.close()


def test_without_a_connect_policy_auth_errors_wait_for_the_deadline(
        db: FakeDB, clock: FakeClock) -> None:
    def connect() -> Any:
        clock.advance(1.0)                     # each login takes a (fake) second
        return db.connect()

    pool = ConnectionPool(connect=connect, min_size=0, background=False, clock=clock,
                          timeout=2.5, connect_policy=None, circuit_breaker=None)
    try:
        db.fail_next("connect", 100, error=login_failed())
        with pytest.raises(PoolTimeout) as info:
            pool.getconn()
        assert "refused the login" not in str(info.value)
        assert db.round_trips == 3             # retried until the deadline, as before
        assert pool.connect_guard.policy is None and pool.connect_guard.breaker is None
    finally:
        pool.close()


def test_throttling_hint_sets_the_least_pause(db: FakeDB) -> None:
    # 40501 asks for 10 s: no second login within a 0.3 s acquire timeout.
    pool = ConnectionPool(connect=db.connect, min_size=0, background=False, timeout=0.3)
    try:
        assert pool.connect_guard.min_delay(busy()) == 10.0
        assert pool.connect_guard.min_delay(unavailable()) == 0.0
        db.fail_next("connect", 100, error=busy())
        with pytest.raises(PoolTimeout) as info:
            pool.getconn()
        assert db.round_trips == 1
        assert info.value.last_error is not None and "40501" in str(info.value.last_error)
    finally:
        pool.close()


def test_defaults_policy_on_and_no_pool_circuit(make: Any) -> None:
    # A connect= factory may compose its own breaker; conninfo pools have endpoint
    # circuits: "auto" adds no second circuit either way.
    pool = make()
    guard = pool.connect_guard
    assert isinstance(guard, ConnectGuard)
    assert guard.policy is not None and guard.policy.name == CONNECT_POLICY.name
    assert guard.breaker is None and guard.wait is False
    url = "mssql://app:pw@127.0.0.1:1/db"
    for extra in ({}, {"endpoint_breaker": None}):
        pool = ConnectionPool(url, min_size=0, background=False, **extra)
        try:
            assert pool.connect_guard.breaker is None
            assert pool.connect_guard.policy is not None
        finally:
            pool.close()


def test_a_pool_circuit_on_request(make: Any) -> None:
    breaker = CircuitBreaker(failure_threshold=2)
    assert make(circuit_breaker=breaker).connect_guard.breaker is breaker
    assert make(circuit_breaker=None).connect_guard.breaker is None


def test_options_are_validated_and_naming_the_parameter(make: Any) -> None:
    for option, value in (("connect_policy", "fast"), ("circuit_breaker", 3),
                          ("circuit_wait", "yes"), ("circuit_breaker", {"bogus": 1})):
        with pytest.raises(ConfigError) as info:
            make(**{option: value})
        assert info.value.parameter == option


def test_circuit_breaker_mapping_uses_the_pool_clock(make: Any, clock: FakeClock) -> None:
    policy = connect_policy(max_attempts=2)
    pool = make(circuit_breaker={"failure_threshold": 2, "reset_timeout": 1.0},
                connect_policy=policy)
    breaker = pool.connect_guard.breaker
    assert breaker is not None and breaker.clock is clock and breaker.failure_threshold == 2
    assert pool.connect_guard.policy is not None
    assert pool.connect_guard.policy.clock is clock


def test_open_circuit_fails_fast_when_the_probe_is_past_the_deadline(db: FakeDB,
                                                                      make: Any) -> None:
    pool = make(timeout=0.5, circuit_breaker={"failure_threshold": 1, "reset_timeout": 30.0})
    db.fail_next("connect", 100)               # connection refused
    with pytest.raises((PoolTimeout, CircuitOpenError)):
        pool.getconn()
    breaker = pool.connect_guard.breaker
    assert breaker is not None and breaker.state is CircuitState.OPEN
    logins = db.round_trips
    start = time.monotonic()
    with pytest.raises(CircuitOpenError) as info:
        pool.getconn(timeout=5.0)
    # refused at once, not after its 5 s timeout (a generous real bound: no timing margin)
    assert time.monotonic() - start < 2.5
    assert isinstance(info.value, PoolTimeout) and info.value.waited == 0
    assert db.round_trips == logins            # no login sent at an open circuit
    assert info.value.last_error is not None
    assert pool.get_stats()["connections_errors"] == logins


def test_circuit_wait_waits_for_the_probe_instead_of_failing(db: FakeDB) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=0.05)
    pool = ConnectionPool(connect=db.connect, min_size=0, background=False, timeout=2.0,
                          circuit_breaker=breaker, circuit_wait=True)
    try:
        breaker.record_failure(OperationalError("down"))
        assert breaker.state is CircuitState.OPEN
        conn = pool.getconn()                  # waits for the probe instead of failing
        assert breaker.stats()["state"] == "closed" and db.connects == 1
        conn.close()
    finally:
        pool.close()


def test_refill_goes_through_the_guard(db: FakeDB, make: Any) -> None:
    pool = make(min_size=1, circuit_breaker={"failure_threshold": 1, "reset_timeout": 60.0})
    db.fail_next("connect", 1)
    pool.run_maintenance()
    breaker = pool.connect_guard.breaker
    assert breaker is not None and breaker.state is CircuitState.OPEN
    trips = db.round_trips
    pool.run_maintenance()
    assert db.round_trips == trips             # the open circuit spares the server
    breaker.reset()
    pool.wait(timeout=1.0)
    assert pool.get_stats()["pool_size"] == 1


def test_wait_ends_at_once_on_a_refused_login(db: FakeDB, make: Any) -> None:
    pool = make(min_size=1)
    db.fail_next("connect", 100, error=login_failed())
    with pytest.raises(PoolTimeout) as info:
        pool.wait(timeout=30.0)
    assert "refused the login" in str(info.value)
    assert db.round_trips == 1
