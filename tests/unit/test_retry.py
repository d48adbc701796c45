"""RetryPolicy, backoff shapes, deadline, hints, the three ways to use it (fake clock)."""

from __future__ import annotations

import logging
import pickle
import random
from unittest.mock import Mock

import pymssql
import pytest
from fakedb import FakeClock
from pymssql_shapes import err

from mssql_pool import retry as R
from mssql_pool.classify import ErrorKind, retry_if_kind
from mssql_pool.errors import ConfigError, RetryExhausted
from mssql_pool.retry import (
    CONNECT_POLICY,
    AttemptRecord,
    ExponentialBackoff,
    FixedBackoff,
    LinearBackoff,
    PhasedBackoff,
    RetryPolicy,
    connect_policy,
    set_testing,
)

DEADLOCK = 1205
SYNTAX = 102


def policy(clock: FakeClock, **kw: object) -> RetryPolicy:
    kw.setdefault("random", lambda: 0.5)
    return RetryPolicy(clock=clock, sleep=clock.sleep, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- backoff shapes
def test_exponential_no_jitter_and_cap() -> None:
    b = ExponentialBackoff(base=0.1, factor=2.0, cap=1.0, jitter=None)
    assert [b.delay(n, 0.99) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert b.delay(10_000, 0.5) == 1.0  # no overflow


def test_exponential_full_jitter() -> None:
    b = ExponentialBackoff(base=1.0, factor=2.0, cap=100.0, jitter="full")
    assert b.delay(3, 0.0) == 0.0
    assert b.delay(3, 0.5) == pytest.approx(2.0)
    assert b.delay(3, 0.999) < 4.0


def test_exponential_equal_jitter() -> None:
    b = ExponentialBackoff(base=1.0, factor=2.0, cap=100.0, jitter="equal")
    assert b.delay(3, 0.0) == pytest.approx(2.0)
    assert b.delay(3, 0.5) == pytest.approx(3.0)
    assert b.delay(3, 0.999) < 4.0


def test_jitter_never_exceeds_cap() -> None:
    rnd = random.Random(7)
    for jitter in ("full", "equal", None):
        b = ExponentialBackoff(base=0.5, factor=3.0, cap=2.0, jitter=jitter)  # type: ignore[arg-type]
        for n in range(1, 50):
            assert 0.0 <= b.delay(n, rnd.random()) <= 2.0


def test_linear_and_fixed() -> None:
    lin = LinearBackoff(start=0.5, step=0.25, cap=1.0)
    assert [lin.delay(n, 0.3) for n in (1, 2, 3, 4)] == pytest.approx([0.5, 0.75, 1.0, 1.0])
    fixed = FixedBackoff(interval=2.0, cap=1.5)
    assert fixed.delay(1, 0.1) == 1.5 and fixed.delay(99, 0.9) == 1.5
    assert FixedBackoff(interval=2.0, jitter="full").delay(1, 0.25) == pytest.approx(0.5)


def test_phased_three_phases() -> None:
    b = PhasedBackoff(immediate=2, base=1.0, factor=2.0, exponential=3, interval=7.0, cap=5.0,
                      jitter=None)
    delays = [b.delay(n, 0.5) for n in range(1, 9)]
    assert delays == pytest.approx([0, 0, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0])  # steady 7 capped at 5
    assert [b.phase(n) for n in (1, 2, 3, 5, 6)] == [1, 1, 2, 2, 3]
    b2 = PhasedBackoff(immediate=1, base=1.0, exponential=2, interval=3.0, cap=60.0, jitter=None)
    assert [b2.delay(n, 0.5) for n in range(1, 7)] == pytest.approx([0, 1, 2, 3, 3, 3])


def test_backoffs_are_pure_and_frozen() -> None:
    b = ExponentialBackoff()
    assert b.delay(4, 0.3) == b.delay(4, 0.3)
    with pytest.raises(AttributeError):
        b.base = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "factory,param",
    [
        (lambda: ExponentialBackoff(base=-1), "base"),
        (lambda: ExponentialBackoff(factor=0.5), "factor"),
        (lambda: ExponentialBackoff(jitter="half"), "jitter"),
        (lambda: LinearBackoff(step=-1), "step"),
        (lambda: FixedBackoff(interval=-1), "interval"),
        (lambda: PhasedBackoff(immediate=-1), "immediate"),
        (lambda: RetryPolicy(max_attempts=0), "max_attempts"),
        (lambda: RetryPolicy(deadline=-1), "deadline"),
        (lambda: RetryPolicy(max_attempts=None, deadline=None), "max_attempts"),
        (lambda: RetryPolicy(backoff=3), "backoff"),
        (lambda: RetryPolicy(retry_on=3), "retry_on"),
    ],
)
def test_bad_config_names_the_parameter(factory, param: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as ei:
        factory()
    assert ei.value.parameter == param


# --------------------------------------------------------------------------- increment
def test_increment_returns_new_value_with_history() -> None:
    clock = FakeClock()
    p0 = policy(clock, backoff=FixedBackoff(1.0))
    p1 = p0.increment(err(DEADLOCK))
    assert p0.history == () and len(p1.history) == 1
    rec = p1.history[0]
    assert isinstance(rec, AttemptRecord)
    assert (rec.attempt, rec.kind, rec.number, rec.delay, rec.at) == (
        1, ErrorKind.DEADLOCK, 1205, 1.0, 1000.0)
    assert p1.next_delay == 1.0 and p1.attempt == 2
    with pytest.raises(AttributeError):
        rec.delay = 3  # type: ignore[misc]


def test_increment_non_retryable_reraises_original() -> None:
    e = err(SYNTAX, "Incorrect syntax")
    with pytest.raises(pymssql.OperationalError) as ei:
        policy(FakeClock()).increment(e)
    assert ei.value is e


def test_exhausted_after_max_attempts_carries_everything() -> None:
    clock = FakeClock()
    p = policy(clock, max_attempts=3, backoff=FixedBackoff(0.1))
    errors = [err(DEADLOCK), err(1222), err(40613)]
    p = p.increment(errors[0]).increment(errors[1])
    with pytest.raises(RetryExhausted) as ei:
        p.increment(errors[2])
    ex = ei.value
    assert ex.last_error is errors[2]
    assert [a.error for a in ex.attempts] == errors
    assert [a.kind for a in ex.attempts] == [ErrorKind.DEADLOCK, ErrorKind.LOCK_TIMEOUT,
                                             ErrorKind.TRANSIENT]
    assert ex.__cause__ is errors[2]
    assert "3 attempt" in str(ex) and "40613" in str(ex)
    again = pickle.loads(pickle.dumps(ex))
    assert len(again.attempts) == 3


def test_deadline_no_retry_that_cannot_finish() -> None:
    clock = FakeClock()
    p = policy(clock, max_attempts=100, deadline=10.0, backoff=FixedBackoff(3.0)).begin()
    clock.now += 1.0   # attempt 1 took 1 s
    p = p.increment(err(DEADLOCK))  # t=1: sleep 3 + 1 s attempt -> t=5 <= 10: fine
    p.wait()
    p = p.begin()
    clock.now += 1.0  # t=5
    p = p.increment(err(DEADLOCK))  # 5 + 3 + 1 = 9 <= 10: fine
    p.wait()
    p = p.begin()
    clock.now += 1.0  # t=9
    with pytest.raises(RetryExhausted) as ei:
        p.increment(err(DEADLOCK))  # 9 + 3 > 10
    assert "deadline" in str(ei.value)
    assert clock.now - 1000.0 <= 10.0


def test_deadline_counts_sleeps_even_with_instant_attempts() -> None:
    clock = FakeClock()
    p = policy(clock, max_attempts=None, deadline=5.0, backoff=FixedBackoff(2.0))
    calls = []

    def fail() -> None:
        calls.append(clock.now)
        raise err(DEADLOCK)

    with pytest.raises(RetryExhausted):
        p.call(fail)
    assert calls == [1000.0, 1002.0, 1004.0]
    assert clock.now <= 1005.0


def test_server_hint_raises_delay_above_cap() -> None:
    clock = FakeClock()
    p = policy(clock, backoff=ExponentialBackoff(0.1, 2, 1.0, None), deadline=60.0)
    assert p.increment(err(40501, "busy")).next_delay == 10.0
    assert p.increment(err(10928)).next_delay == 5.0
    assert p.increment(err(DEADLOCK)).next_delay == pytest.approx(0.1)


def test_hint_that_overruns_deadline_gives_up() -> None:
    clock = FakeClock()
    p = policy(clock, deadline=5.0)
    with pytest.raises(RetryExhausted):
        p.increment(err(40501, "busy"))


def test_random_source_injectable_callable_or_random_instance() -> None:
    clock = FakeClock()
    b = ExponentialBackoff(1.0, 2.0, 100.0, "full")
    p1 = RetryPolicy(backoff=b, clock=clock, random=random.Random(42))
    p2 = RetryPolicy(backoff=b, clock=clock, random=random.Random(42))
    d1 = [r.delay for r in p1.increment(err(DEADLOCK)).increment(err(DEADLOCK)).history]
    d2 = [r.delay for r in p2.increment(err(DEADLOCK)).increment(err(DEADLOCK)).history]
    assert d1 == d2
    p3 = RetryPolicy(backoff=b, clock=clock, random=lambda: 0.25)
    assert p3.increment(err(DEADLOCK)).next_delay == pytest.approx(0.25)


# --------------------------------------------------------------------------- call / decorator
def test_call_retries_then_returns() -> None:
    clock = FakeClock()
    seen: list[AttemptRecord] = []
    p = policy(clock, backoff=FixedBackoff(0.5), on_retry=seen.append)
    outcomes = [err(DEADLOCK), err(1222), "ok"]

    def work(a: int, *, b: int) -> str:
        o = outcomes.pop(0)
        if isinstance(o, Exception):
            raise o
        return f"{o}{a}{b}"

    assert p.call(work, 1, b=2) == "ok12"
    assert clock.slept == [0.5, 0.5]
    assert [r.number for r in seen] == [1205, 1222]
    assert p.history == ()  # the policy value itself never changes


def test_call_non_retryable_propagates_at_once() -> None:
    clock = FakeClock()
    work = Mock(side_effect=err(18456, "Login failed"))
    with pytest.raises(pymssql.OperationalError):
        policy(clock).call(work)
    assert work.call_count == 1 and clock.slept == []


def test_never_retries_bare_exception_by_default() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError):
        policy(clock).call(lambda: (_ for _ in ()).throw(ValueError("x")))


def test_decorator_and_wraps() -> None:
    clock = FakeClock()
    p = policy(clock, backoff=FixedBackoff(0.0))
    state = {"n": 0}

    @p
    def flaky(x: int) -> int:
        """doc"""
        state["n"] += 1
        if state["n"] < 3:
            raise err(40613)
        return x * 2

    assert flaky(21) == 42 and state["n"] == 3
    assert flaky.__doc__ == "doc" and flaky.__name__ == "flaky"
    assert p.wraps(lambda: 5)() == 5


def test_attempts_iterator() -> None:
    clock = FakeClock()
    p = policy(clock, backoff=FixedBackoff(0.25))
    numbers = []
    outcomes = [err(DEADLOCK), err(DEADLOCK), None]
    for attempt in p.attempts():
        with attempt:
            numbers.append(attempt.number)
            o = outcomes.pop(0)
            if o is not None:
                raise o
    assert numbers == [1, 2, 3] and clock.slept == [0.25, 0.25]


def test_attempts_iterator_non_retryable_and_exhaustion() -> None:
    clock = FakeClock()
    with pytest.raises(pymssql.OperationalError):
        for attempt in policy(clock).attempts():
            with attempt:
                raise err(SYNTAX)
    count = 0
    with pytest.raises(RetryExhausted) as ei:
        for attempt in policy(clock, max_attempts=2, backoff=FixedBackoff(0)).attempts():
            with attempt:
                count += 1
                raise err(DEADLOCK)
    assert count == 2 and len(ei.value.attempts) == 2


def test_retry_on_composes() -> None:
    clock = FakeClock()
    p = policy(clock, retry_on=retry_if_kind(ErrorKind.QUERY_TIMEOUT), backoff=FixedBackoff(0))
    timeout = pymssql.OperationalError(20003, b"DB-Lib error message 20003: timed out")
    assert p.increment(timeout).attempt == 2
    with pytest.raises(pymssql.OperationalError):
        p.increment(err(DEADLOCK))


def test_broken_predicate_does_not_mask_error() -> None:
    def bad(e: BaseException) -> bool:
        raise RuntimeError("oops")

    e = err(DEADLOCK)
    with pytest.raises(pymssql.OperationalError):
        policy(FakeClock(), retry_on=bad).increment(e)


def test_hooks_errors_are_swallowed() -> None:
    def hook(r: AttemptRecord) -> None:
        raise RuntimeError("hook")

    p = policy(FakeClock(), on_retry=hook)
    assert p.increment(err(DEADLOCK)).attempt == 2


def test_every_retry_logged_warning_with_number(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.WARNING, logger="mssql_pool.retry")
    policy(clock, name="t").increment(err(1205)).increment(err(40501))
    msgs = [r for r in caplog.records if r.name == "mssql_pool.retry"]
    assert len(msgs) == 2
    assert all(r.levelno == logging.WARNING for r in msgs)
    assert "1205" in msgs[0].getMessage() and "40501" in msgs[1].getMessage()


# --------------------------------------------------------------------------- testing switch
def test_set_testing_skips_sleeps_and_caps_attempts() -> None:
    clock = FakeClock()
    old = set_testing(True, max_attempts=2)
    try:
        assert R.is_testing()
        calls = []

        def work() -> None:
            calls.append(1)
            raise err(DEADLOCK)

        with pytest.raises(RetryExhausted):
            policy(clock, backoff=FixedBackoff(5.0)).call(work)
        assert calls == [1, 1] and clock.slept == []
    finally:
        set_testing(old)
    assert not R.is_testing()
    with pytest.raises(ConfigError):
        set_testing(True, max_attempts=0)


# --------------------------------------------------------------------------- connect policy
def test_connect_policy_retries_transient_logins_not_auth() -> None:
    p = CONNECT_POLICY.new(clock=FakeClock(), random=lambda: 0.5)
    for e in (
        pymssql.OperationalError((40613, b"Database 'd' is not currently available.")),
        pymssql.OperationalError((4060, b"Cannot open database \"d\" requested by the login.")),
        pymssql.OperationalError((10928, b"Resource ID : 1. limit has been reached")),
        pymssql.OperationalError((233, b"No process is on the other end of the pipe.")),
        pymssql.OperationalError((20009, b"DB-Lib error message 20009, severity 9:\nUnable to "
                                          b"connect: Adaptive Server is unavailable")),
        pymssql.OperationalError((20003, b"DB-Lib error message 20003, severity 6:\nAdaptive "
                                          b"Server connection timed out")),
        ConnectionRefusedError(111, "refused"),
    ):
        assert p.increment(e).attempt == 2, e
    login = pymssql.OperationalError((18456, b"Login failed for user 'u'."))
    with pytest.raises(pymssql.OperationalError) as ei:
        p.increment(login)
    assert ei.value is login
    assert p.increment(pymssql.OperationalError((40501, b"The service is currently busy."))
                       ).next_delay >= 10.0


def test_connect_policy_factory_options() -> None:
    p = connect_policy(max_attempts=2, deadline=3.0, name="x")
    assert p.max_attempts == 2 and p.deadline == 3.0 and p.name == "x"
    assert "RetryPolicy" in repr(p)
