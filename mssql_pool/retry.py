"""RetryPolicy: an immutable value that decides whether, and when, to try again.

A policy holds its settings and the history of failed attempts so far.
:meth:`RetryPolicy.increment` returns a *new* policy with one more
:class:`AttemptRecord`, or raises :class:`~mssql_pool.errors.RetryExhausted` when
no further attempt may start (attempts used up, or the next sleep plus the
expected attempt would overrun the deadline). Backoff strategies are frozen
dataclasses whose :meth:`delay` is a pure function of the attempt number and a
random number in ``[0, 1)``.

Three ways to use a policy::

    policy.call(fn, *args, **kwargs)

    @policy
    def work(): ...

    for attempt in policy.attempts():
        with attempt:
            work()

Every retry is logged at WARNING on ``mssql_pool.retry`` with the error number.
:func:`set_testing` turns every backoff sleep into a no-op for users' test suites.
"""

from __future__ import annotations

import functools
import logging
import random as _random_module
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from .classify import (
    Classifier,
    ErrorKind,
    Predicate,
    get_default_classifier,
    retry_if_kind,
    retry_if_retryable,
)
from .errors import ConfigError, RetryExhausted

__all__ = [
    "Backoff",
    "ExponentialBackoff",
    "LinearBackoff",
    "FixedBackoff",
    "PhasedBackoff",
    "AttemptRecord",
    "Attempt",
    "RetryPolicy",
    "CONNECT_POLICY",
    "connect_policy",
    "CONNECT_RETRY_ON",
    "set_testing",
    "is_testing",
]

logger = logging.getLogger("mssql_pool.retry")

T = TypeVar("T")
Jitter = Literal["full", "equal"] | None

# --------------------------------------------------------------------------- testing switch

_testing_lock = threading.Lock()
_testing = False
_testing_max_attempts: int | None = None


def set_testing(on: bool, *, max_attempts: int | None = None) -> bool:
    """Turn backoff sleeps off (``on=True``) for users' tests; returns the previous setting.

    While on, every policy still counts attempts and records delays, but never sleeps;
    ``max_attempts`` (optional) caps the attempts of every policy as well.
    """
    global _testing, _testing_max_attempts
    if max_attempts is not None and max_attempts < 1:
        raise ConfigError("max_attempts", f"must be >= 1, got {max_attempts!r}")
    with _testing_lock:
        old = _testing
        _testing = bool(on)
        _testing_max_attempts = max_attempts if on else None
    return old


def is_testing() -> bool:
    """True while :func:`set_testing` has turned sleeps off."""
    return _testing


# --------------------------------------------------------------------------- backoffs


@runtime_checkable
class Backoff(Protocol):
    """A pure function of the attempt number (1 = after the first failure) and ``rnd``."""

    def delay(self, attempt: int, rnd: float) -> float: ...


def _apply_jitter(raw: float, jitter: Jitter, rnd: float) -> float:
    if jitter == "full":
        return raw * rnd
    if jitter == "equal":
        return raw / 2.0 + (raw / 2.0) * rnd
    return raw


def _check_nonneg(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ConfigError(name, f"must be a number >= 0, got {value!r}")


def _check_jitter(value: object) -> None:
    if value not in ("full", "equal", None):
        raise ConfigError("jitter", f"must be 'full', 'equal' or None, got {value!r}")


@dataclass(frozen=True)
class ExponentialBackoff:
    """``base * factor ** (attempt - 1)``, capped at ``cap``, then jittered.

    ``jitter="full"``: uniform in ``[0, d)`` (AWS "full jitter"); ``"equal"``: in
    ``[d/2, d)``; ``None``: exactly ``d``.
    """

    base: float = 0.1
    factor: float = 2.0
    cap: float = 10.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        _check_nonneg("base", self.base)
        _check_nonneg("cap", self.cap)
        if self.factor < 1:
            raise ConfigError("factor", f"must be >= 1, got {self.factor!r}")
        _check_jitter(self.jitter)

    def delay(self, attempt: int, rnd: float) -> float:
        exponent = max(0, attempt - 1)
        try:
            raw = self.base * self.factor**exponent
        except OverflowError:
            raw = self.cap
        return _apply_jitter(min(self.cap, raw), self.jitter, rnd)


@dataclass(frozen=True)
class LinearBackoff:
    """``start + step * (attempt - 1)``, capped at ``cap``, optionally jittered."""

    start: float = 0.1
    step: float = 0.1
    cap: float = 10.0
    jitter: Jitter = None

    def __post_init__(self) -> None:
        _check_nonneg("start", self.start)
        _check_nonneg("step", self.step)
        _check_nonneg("cap", self.cap)
        _check_jitter(self.jitter)

    def delay(self, attempt: int, rnd: float) -> float:
        raw = self.start + self.step * max(0, attempt - 1)
        return _apply_jitter(min(self.cap, raw), self.jitter, rnd)


@dataclass(frozen=True)
class FixedBackoff:
    """The same ``interval`` every time (capped at ``cap``), optionally jittered."""

    interval: float = 1.0
    cap: float = 60.0
    jitter: Jitter = None

    def __post_init__(self) -> None:
        _check_nonneg("interval", self.interval)
        _check_nonneg("cap", self.cap)
        _check_jitter(self.jitter)

    def delay(self, attempt: int, rnd: float) -> float:
        return _apply_jitter(min(self.cap, self.interval), self.jitter, rnd)


@dataclass(frozen=True)
class PhasedBackoff:
    """Three phases: ``immediate`` retries with no delay, then ``exponential`` retries
    growing from ``base`` by ``factor``, then a steady ``interval`` for as long as the
    policy allows. Every delay is capped at ``cap``; jitter applies to phases 2 and 3.

    Shaped for failovers: a blip is retried at once, a reconfiguration (8 s on average)
    is ridden out with growing waits, a long outage is polled at a steady pace.
    """

    immediate: int = 1
    base: float = 0.5
    factor: float = 2.0
    exponential: int = 5
    interval: float = 10.0
    cap: float = 60.0
    jitter: Jitter = "equal"

    def __post_init__(self) -> None:
        if self.immediate < 0:
            raise ConfigError("immediate", f"must be >= 0, got {self.immediate!r}")
        if self.exponential < 0:
            raise ConfigError("exponential", f"must be >= 0, got {self.exponential!r}")
        _check_nonneg("base", self.base)
        _check_nonneg("interval", self.interval)
        _check_nonneg("cap", self.cap)
        if self.factor < 1:
            raise ConfigError("factor", f"must be >= 1, got {self.factor!r}")
        _check_jitter(self.jitter)

    def phase(self, attempt: int) -> int:
        """1 (immediate), 2 (exponential) or 3 (steady) for ``attempt``."""
        if attempt <= self.immediate:
            return 1
        if attempt <= self.immediate + self.exponential:
            return 2
        return 3

    def delay(self, attempt: int, rnd: float) -> float:
        phase = self.phase(attempt)
        if phase == 1:
            return 0.0
        if phase == 2:
            n = attempt - self.immediate - 1
            try:
                raw = self.base * self.factor**n
            except OverflowError:
                raw = self.cap
        else:
            raw = self.interval
        return _apply_jitter(min(self.cap, raw), self.jitter, rnd)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class AttemptRecord:
    """One failed attempt: its number (1-based), the error, our classification of it,
    the delay chosen before the next attempt (0.0 for the final one), the clock time it
    was recorded at, and how long the attempt took (0.0 when unknown)."""

    attempt: int
    error: BaseException
    kind: ErrorKind
    number: int | None
    delay: float
    at: float
    duration: float = 0.0

    def __repr__(self) -> str:
        num = f" {self.number}" if self.number is not None else ""
        return (
            f"<AttemptRecord #{self.attempt} {self.kind.value}{num} "
            f"{type(self.error).__name__} delay={self.delay:.3f}s>"
        )


# --------------------------------------------------------------------------- the policy

RetryOn = Callable[[BaseException], bool]
OnRetry = Callable[[AttemptRecord], object]


class _RandomSource(Protocol):
    def random(self) -> float: ...


@dataclass(frozen=True)
class RetryPolicy:
    """An immutable retry policy. See the module docstring for the three ways to use it.

    ``max_attempts`` counts every attempt including the first (None: only the deadline
    bounds it); ``deadline`` bounds the total time in seconds from the first attempt,
    sleeps included (None: no deadline); ``retry_on`` decides which errors are retried
    (default: the retryable kinds of :mod:`mssql_pool.classify`; never a bare
    ``Exception``); ``on_retry`` is called with each :class:`AttemptRecord` before the
    sleep; ``classifier`` gives kinds, numbers and server hints; ``clock``, ``sleep``
    and ``random`` (a callable or a ``random.Random``) are injectable for tests.
    ``name`` appears in log lines.
    """

    max_attempts: int | None = 5
    deadline: float | None = 30.0
    backoff: Backoff = field(default_factory=ExponentialBackoff)
    retry_on: RetryOn = retry_if_retryable
    on_retry: OnRetry | None = None
    classifier: Classifier | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    sleep: Callable[[float], object] = field(default=time.sleep, repr=False)
    random: Callable[[], float] | _RandomSource = field(default=_random_module.random, repr=False)
    name: str = ""
    history: tuple[AttemptRecord, ...] = ()
    started_at: float | None = field(default=None, repr=False)
    attempt_started_at: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ConfigError(
                "max_attempts", f"must be an int >= 1 or None, got {self.max_attempts!r}"
            )
        if self.deadline is not None:
            _check_nonneg("deadline", self.deadline)
        if self.max_attempts is None and self.deadline is None:
            raise ConfigError("max_attempts", "max_attempts and deadline cannot both be None")
        if not isinstance(self.backoff, Backoff):
            raise ConfigError(
                "backoff", f"must have a delay(attempt, rnd) method, got {self.backoff!r}"
            )
        if not callable(self.retry_on):
            raise ConfigError("retry_on", f"must be callable, got {self.retry_on!r}")
        if self.on_retry is not None and not callable(self.on_retry):
            raise ConfigError("on_retry", f"must be callable or None, got {self.on_retry!r}")

    # -- derived values ---------------------------------------------------------------

    @property
    def attempt(self) -> int:
        """The number of the attempt about to run (1 before any failure)."""
        return len(self.history) + 1

    @property
    def last_error(self) -> BaseException | None:
        return self.history[-1].error if self.history else None

    @property
    def next_delay(self) -> float:
        """The delay chosen by the last :meth:`increment` (0.0 before any failure)."""
        return self.history[-1].delay if self.history else 0.0

    def _classifier(self) -> Classifier:
        return self.classifier if self.classifier is not None else get_default_classifier()

    def _rnd(self) -> float:
        r = self.random
        value = r.random() if hasattr(r, "random") else r()
        return float(value)

    def _max_attempts(self) -> int | None:
        cap = _testing_max_attempts
        if cap is None:
            return self.max_attempts
        return cap if self.max_attempts is None else min(cap, self.max_attempts)

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left before the deadline (None without a deadline or before starting)."""
        if self.deadline is None or self.started_at is None:
            return None
        now = self.clock() if now is None else now
        return self.started_at + self.deadline - now

    # -- transitions -------------------------------------------------------------------

    def new(self, **changes: Any) -> RetryPolicy:
        """A fresh copy (empty history, not started) with ``changes`` applied."""
        return replace(self, history=(), started_at=None, attempt_started_at=None, **changes)

    def begin(self, now: float | None = None) -> RetryPolicy:
        """Mark the start of an attempt (and of the whole operation on the first call)."""
        now = self.clock() if now is None else now
        started = self.started_at if self.started_at is not None else now
        return replace(self, started_at=started, attempt_started_at=now)

    def should_retry(self, exc: BaseException) -> bool:
        """Does ``retry_on`` accept ``exc``? (Does not look at attempts or the deadline.)"""
        try:
            return bool(self.retry_on(exc))
        except Exception:  # a broken predicate must not mask the real error
            logger.exception("retry_on predicate raised; not retrying")
            return False

    def increment(self, exc: BaseException, *, now: float | None = None) -> RetryPolicy:
        """Record a failed attempt and return the policy for the next one.

        Raises ``exc`` itself (unchanged) when ``retry_on`` rejects it, and
        :class:`RetryExhausted` (``from exc``) when no further attempt may start. The
        delay to sleep before the next attempt is ``new_policy.next_delay``.
        """
        if not self.should_retry(exc):
            raise exc
        result = self._decide(exc, now)
        if isinstance(result, RetryExhausted):
            raise result from exc
        return result

    def _decide(self, exc: BaseException, now: float | None) -> RetryPolicy | RetryExhausted:
        now = self.clock() if now is None else now
        started = self.started_at if self.started_at is not None else now
        duration = now - self.attempt_started_at if self.attempt_started_at is not None else 0.0
        info = self._classifier().classify(exc)
        attempt = len(self.history) + 1
        delay = max(self.backoff.delay(attempt, self._rnd()), info.min_delay)
        reason = ""
        limit = self._max_attempts()
        if limit is not None and attempt >= limit:
            reason = f"{attempt} attempt(s) of {limit} used"
        elif self.deadline is not None:
            # The next attempt must be able to finish in time: its sleep plus the
            # shortest attempt seen so far.
            fastest = min([r.duration for r in self.history] + [max(duration, 0.0)])
            finish = now + delay + fastest
            if finish > started + self.deadline:
                reason = (
                    f"the next attempt (after {delay:.3f}s) could not finish within the "
                    f"{self.deadline:g}s deadline"
                )
        if reason:
            final = AttemptRecord(attempt, exc, info.kind, info.number, 0.0, now, duration)
            history = (*self.history, final)
            what = f" {self.name!r}" if self.name else ""
            num = f" {info.number}" if info.number is not None else ""
            return RetryExhausted(
                f"gave up{what} after {attempt} attempt(s): {reason}; last error: "
                f"{info.kind.value}{num}: {info.message or type(exc).__name__}",
                last_error=exc,
                attempts=history,
            )
        record = AttemptRecord(attempt, exc, info.kind, info.number, delay, now, duration)
        logger.warning(
            "retry%s: attempt %d failed with error %s (%s), retrying in %.3fs: %s",
            f" {self.name}" if self.name else "",
            attempt,
            info.number if info.number is not None else "-",
            info.kind.value,
            delay,
            info.message or type(exc).__name__,
        )
        if self.on_retry is not None:
            try:
                self.on_retry(record)
            except Exception:
                logger.exception("on_retry hook raised; continuing")
        return replace(self, history=(*self.history, record), started_at=started)

    def wait(self, delay: float | None = None) -> None:
        """Sleep ``delay`` (default: :attr:`next_delay`), unless :func:`set_testing` is on."""
        d = self.next_delay if delay is None else delay
        if d > 0 and not _testing:
            self.sleep(d)

    # -- the three ways to use it ---------------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)``, retrying as the policy says; return its result."""
        policy = self.begin()
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                policy = policy.increment(exc)
            policy.wait()
            policy = policy.begin()

    def __call__(self, fn: Callable[..., T]) -> Callable[..., T]:
        """Use the policy as a decorator: every call of ``fn`` is retried."""
        return self.wraps(fn)

    def wraps(self, fn: Callable[..., T]) -> Callable[..., T]:
        """Wrap ``fn`` so that every call goes through :meth:`call`."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            return self.call(fn, *args, **kwargs)

        wrapper.retry_policy = self  # type: ignore[attr-defined]
        return wrapper

    def attempts(self) -> Iterator[Attempt]:
        """Yield :class:`Attempt` context managers until one succeeds::

            for attempt in policy.attempts():
                with attempt:
                    do_work()

        A retryable error inside ``with attempt`` is swallowed and the loop goes on after
        the backoff; a non-retryable one propagates; exhaustion raises RetryExhausted.
        """
        policy = self.begin()
        while True:
            attempt = Attempt(policy)
            yield attempt
            if attempt.next_policy is None:
                return
            policy = attempt.next_policy
            policy.wait()
            policy = policy.begin()

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return (
            f"<RetryPolicy{name} attempt={self.attempt} max_attempts={self.max_attempts} "
            f"deadline={self.deadline} backoff={self.backoff!r}>"
        )


class Attempt:
    """One attempt inside :meth:`RetryPolicy.attempts`; use it as a context manager."""

    __slots__ = ("policy", "next_policy", "error")

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.next_policy: RetryPolicy | None = None
        self.error: BaseException | None = None

    @property
    def number(self) -> int:
        """1-based number of this attempt."""
        return self.policy.attempt

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        self.error = exc
        if not self.policy.should_retry(exc):
            return False
        result = self.policy._decide(exc, None)
        if isinstance(result, RetryExhausted):
            raise result from exc
        self.next_policy = result
        return True

    def __repr__(self) -> str:
        return f"<Attempt #{self.number}>"


# --------------------------------------------------------------------------- connecting

#: Which login failures are retried: transient (40613, 4060 during failover, 233...),
#: throttled (40501, 10928, 10929), network failures and login timeouts. Auth (18456)
#: and everything else fail at once.
CONNECT_RETRY_ON: Predicate = retry_if_kind(
    ErrorKind.TRANSIENT,
    ErrorKind.THROTTLED,
    ErrorKind.DISCONNECT,
    ErrorKind.QUERY_TIMEOUT,
)


def connect_policy(
    *,
    max_attempts: int | None = None,
    deadline: float | None = 30.0,
    backoff: Backoff | None = None,
    **kwargs: Any,
) -> RetryPolicy:
    """The default policy for opening connections.

    Retries transient login errors and network failures with exponential backoff and
    equal jitter (0.1 s doubling to a 2 s cap; 40501 waits at least 10 s) for ``deadline``
    seconds (30: an Azure failover usually ends well within it), with no limit on the
    number of logins unless ``max_attempts`` is given: the cap keeps a pool to about one
    login every 2 s in a long outage, and a short one (a burst of 40613) is ridden through
    within a few seconds. 18456 (login failed) fails at once. Pair it with a
    :class:`~mssql_pool.breaker.CircuitBreaker` so that a fleet of callers cannot turn an
    outage into a login storm.
    """
    kwargs.setdefault("retry_on", CONNECT_RETRY_ON)
    kwargs.setdefault("name", "connect")
    return RetryPolicy(
        max_attempts=max_attempts,
        deadline=deadline,
        backoff=backoff if backoff is not None else ExponentialBackoff(0.1, 2.0, 2.0, "equal"),
        **kwargs,
    )


#: The default connect policy (see :func:`connect_policy`).
CONNECT_POLICY: RetryPolicy = connect_policy()
