"""Property: a configuration value is either refused at construction (a ConfigError naming
the option, nested options included) or it works: never accepted, then broken later.

"Works" is checked by using what was accepted: a pool checks a connection out and back
and runs maintenance; a circuit breaker opened by failures lets a probe through once its
interval has passed on the (fake) clock and closes again; a maintenance interval can be
slept on by a real thread; a per-call timeout gives a connection or a PoolTimeout.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from fakedb import FakeClock, FakeDB
from hypothesis import given, settings
from hypothesis import strategies as st

from mssql_pool import ConfigError, ConnectionPool, PoolTimeout
from mssql_pool.breaker import CircuitBreaker

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.sampled_from([0, 0.0, -0.0, 1e-9, 1e10, 1e300, 86400, 86400.5, 3600, 3601,
                     threading.TIMEOUT_MAX, math.inf, math.nan]),
    st.sampled_from(["5", None, True, b"1", [1]]),
)
SECONDS_OPTIONS = ("timeout", "max_idle", "max_lifetime", "keepalive", "validate_after",
                   "leak_timeout", "reconnect_timeout", "maintenance_interval")
SIZE_OPTIONS = ("min_size", "max_size", "max_waiting")
BREAKER_KEYS = ("failure_threshold", "reset_timeout", "max_reset_timeout", "probe_timeout")


def exercise_pool(pool: ConnectionPool, clock: FakeClock) -> None:
    """Use the pool as an application would, with the fake clock moving."""
    if pool.config.max_size >= 1:
        try:
            conn = pool.getconn(timeout=0)
        except PoolTimeout:
            pass
        else:
            conn.cursor().execute("SELECT 1")
            pool.putconn(conn)
    for _ in range(3):
        clock.advance(pool.config.maintenance_interval)
        pool.run_maintenance()


@SETTINGS
@given(option=st.sampled_from(SECONDS_OPTIONS + SIZE_OPTIONS), value=numbers)
def test_numeric_pool_options(option: str, value: Any) -> None:
    db, clock = FakeDB(), FakeClock()
    try:
        pool = ConnectionPool(connect=db.connect, clock=clock, sleep=clock.sleep,
                              background=False, **{"min_size": 0, option: value})
    except ConfigError as exc:
        assert exc.parameter == option
        return
    with pool:
        got = getattr(pool.config, option)
        assert got is None or math.isfinite(got)
        if isinstance(got, float):
            assert got <= threading.TIMEOUT_MAX
        exercise_pool(pool, clock)


def can_wait(seconds: float) -> bool:
    """Whether a thread can wait this long (an uncontended acquire checks the timeout
    without waiting; beyond threading.TIMEOUT_MAX it raises OverflowError)."""
    lock = threading.Lock()
    try:
        assert lock.acquire(timeout=seconds)
    except OverflowError:
        return False
    lock.release()
    return True


@SETTINGS
@given(option=st.sampled_from(SECONDS_OPTIONS), value=numbers)
def test_accepted_durations_can_be_waited_on(option: str, value: Any) -> None:
    try:
        ConnectionPool(connect=FakeDB().connect, background=False,
                       **{"min_size": 0, option: value}).close()
    except ConfigError as exc:
        assert exc.parameter == option
        return
    if value is not None:
        assert can_wait(value) and can_wait(2 * value)   # deadlines add up; stay finite


@SETTINGS
@given(kwargs=st.dictionaries(st.sampled_from(BREAKER_KEYS), numbers, max_size=4),
       nested=st.sampled_from(["endpoint_breaker", "circuit_breaker", None]))
def test_breaker_options_are_refused_or_the_circuit_closes_again(
        kwargs: dict[str, Any], nested: str | None) -> None:
    clock = FakeClock()
    if nested is not None:
        try:
            pool = ConnectionPool("mssql://u:p@h/db", background=False, min_size=0,
                                  **{nested: dict(kwargs)})
        except ConfigError as exc:
            assert exc.parameter.startswith(f"{nested}.") or exc.parameter == nested
            return
        pool.close()
    try:
        breaker = CircuitBreaker(clock=clock, **kwargs)
    except ConfigError as exc:
        assert exc.parameter in BREAKER_KEYS
        assert nested is None, "the pool accepted what the breaker refuses"
        return
    except TypeError:
        assert nested is None
        return
    for _ in range(breaker.failure_threshold):
        assert breaker.before_attempt(wait=True) == 0.0
        breaker.record_failure(OSError("refused"))
    delay = breaker.before_attempt(wait=True)
    assert 0 < delay <= 86400 and math.isfinite(delay)
    clock.advance(delay)
    assert breaker.before_attempt(wait=True) == 0.0   # the probe goes through
    breaker.record_success()
    assert breaker.state.name == "CLOSED"


@SETTINGS
@given(timeout=numbers)
def test_getconn_timeout_is_refused_or_honoured(timeout: Any) -> None:
    db, clock = FakeDB(), FakeClock()
    with ConnectionPool(connect=db.connect, clock=clock, sleep=clock.sleep, background=False,
                        min_size=0, max_size=1) as pool:
        try:
            conn = pool.getconn(timeout=timeout)
        except ConfigError as exc:
            assert exc.parameter == "timeout"
            assert timeout is not None
            return
        except PoolTimeout:
            # honoured: nothing is idle, and a zero or tiny timeout ends before the
            # pool's connect thread has opened a connection (a fake one: well under 1 s)
            assert timeout is not None and 0 <= timeout < 1
            return
        pool.putconn(conn)
        assert timeout is None or (math.isfinite(timeout) and timeout >= 0)


@SETTINGS
@given(name=st.text(max_size=300))
def test_pool_names_are_refused_or_safe_in_a_log_line(name: str) -> None:
    try:
        pool = ConnectionPool(connect=FakeDB().connect, background=False, min_size=0,
                              name=name)
    except ConfigError as exc:
        assert exc.parameter == "name"
        return
    with pool:
        assert len(pool.name) <= 100
        assert pool.name.isprintable() and "\n" not in repr(pool)
