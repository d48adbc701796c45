"""CircuitBreaker: stop sending logins at a server that is down.

Three states:

* ``CLOSED``: every attempt goes ahead; consecutive failures are counted.
* ``OPEN``: after ``failure_threshold`` consecutive failures. Attempts fail fast with
  :class:`~mssql_pool.errors.CircuitOpenError` (carrying the last error and when the
  next probe is due) until ``reset_timeout`` has passed.
* ``HALF_OPEN``: exactly one attempt (the probe) goes ahead; everyone else fails fast
  or waits. The probe's success closes the circuit; its failure opens it again, for a
  reset timeout that grows (x2) up to ``max_reset_timeout`` when one is given.

However many threads wait, at most one login reaches the server per probe interval.
The breaker only decides; callers report outcomes with :meth:`record_success` /
:meth:`record_failure`. :meth:`call` wraps a function with both.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from ._driver import short_text
from .errors import CircuitOpenError, ConfigError

if TYPE_CHECKING:
    from .events import EventBus
    from .retry import RetryPolicy

__all__ = ["CircuitBreaker", "CircuitState", "ConnectGuard", "guarded_connect"]

logger = logging.getLogger("mssql_pool.breaker")

T = TypeVar("T")


class CircuitState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __str__(self) -> str:
        return self.value


class CircuitBreaker:
    """A thread-safe circuit breaker for connecting (see the module docstring).

    ``failure_threshold`` consecutive failures open it; ``reset_timeout`` seconds later
    one probe is let through; ``max_reset_timeout`` (optional) lets the interval double
    after each failed probe up to that bound; ``probe_timeout`` is how long a probe may
    stay unanswered before another caller may probe (a probe whose thread died must not
    wedge the breaker). ``clock`` is injectable; it must be monotonic.

    ``events`` (an :class:`~mssql_pool.events.EventBus`, normally the pool's, set by the
    pool) receives ``circuit_opened``, ``circuit_half_open`` and ``circuit_closed``,
    emitted after the breaker's lock is released; ``endpoint`` names the endpoint in them.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 5.0,
        *,
        max_reset_timeout: float | None = None,
        probe_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
        events: EventBus | None = None,
        endpoint: str | None = None,
    ) -> None:
        if (
            isinstance(failure_threshold, bool)
            or not isinstance(failure_threshold, int)
            or failure_threshold < 1
        ):
            raise ConfigError(
                "failure_threshold", f"must be an int >= 1, got {failure_threshold!r}"
            )
        _seconds("reset_timeout", reset_timeout)
        if max_reset_timeout is not None:
            _seconds("max_reset_timeout", max_reset_timeout)
            if max_reset_timeout < reset_timeout:
                raise ConfigError(
                    "max_reset_timeout",
                    f"must be >= reset_timeout ({reset_timeout}), got {max_reset_timeout!r}",
                )
        if probe_timeout is not None:
            _seconds("probe_timeout", probe_timeout)
        if not callable(clock):
            raise ConfigError("clock", f"must be callable, got {type(clock).__name__}")
        if not isinstance(name, str):
            raise ConfigError("name", f"must be a string, got {type(name).__name__}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = float(reset_timeout)
        self.max_reset_timeout = None if max_reset_timeout is None else float(max_reset_timeout)
        self.probe_timeout = (
            float(probe_timeout) if probe_timeout is not None else max(30.0, self.reset_timeout)
        )
        self.clock = clock
        self.name = name
        self.events = events
        self.endpoint = endpoint
        self._opened_at: float | None = None
        self._cond = threading.Condition(threading.Lock())
        self._state = CircuitState.CLOSED
        self._consecutive = 0
        self._interval = self.reset_timeout
        self._retry_at = 0.0
        self._probe_since: float | None = None  # set while a probe is in flight
        self._last_error: BaseException | None = None
        # counters
        self._successes = 0
        self._failures = 0
        self._rejected = 0
        self._opened = 0
        self._probes = 0

    # -- observation ---------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state (OPEN turns into HALF_OPEN only when a caller probes)."""
        return self._state

    @property
    def last_error(self) -> BaseException | None:
        return self._last_error

    @property
    def retry_at(self) -> float:
        """Clock time at which the next probe is allowed (meaningful when not CLOSED)."""
        return self._retry_at

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    def stats(self) -> dict[str, Any]:
        """Counters: ``state``, ``consecutive_failures``, ``failures``, ``successes``,
        ``rejected`` (fast failures), ``opened`` (times opened), ``probes``,
        ``retry_in`` (seconds until the next probe, 0 when closed)."""
        with self._cond:
            now = self.clock()
            return {
                "state": self._state.value,
                "consecutive_failures": self._consecutive,
                "failures": self._failures,
                "successes": self._successes,
                "rejected": self._rejected,
                "opened": self._opened,
                "probes": self._probes,
                "retry_in": max(0.0, self._retry_at - now)
                if self._state is not CircuitState.CLOSED
                else 0.0,
            }

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return (
            f"<CircuitBreaker{name} state={self._state.value} "
            f"failures={self._consecutive}/{self.failure_threshold}>"
        )

    # -- decisions --------------------------------------------------------------------------

    def _permit_locked(self, now: float, notes: list[dict[str, Any]]) -> float:
        """0.0 when the caller may attempt now (it may be the probe), else seconds to wait."""
        if self._state is CircuitState.CLOSED:
            return 0.0
        if self._state is CircuitState.OPEN:
            if now < self._retry_at:
                return self._retry_at - now
            self._state = CircuitState.HALF_OPEN
            self._probe_since = now
            self._probes += 1
            notes.append({"kind": "circuit_half_open"})
            logger.info("circuit%s half-open: letting one probe through", self._label())
            return 0.0
        # HALF_OPEN
        if self._probe_since is None or now - self._probe_since >= self.probe_timeout:
            if self._probe_since is not None:
                logger.warning(
                    "circuit%s: probe unanswered for %.1fs; letting another through",
                    self._label(),
                    now - self._probe_since,
                )
            self._probe_since = now
            self._probes += 1
            return 0.0
        # A probe is in flight: wait for its verdict (but no longer than the probe timeout).
        return max(0.0, min(self._interval, self._probe_since + self.probe_timeout - now)) or 1e-3

    def _error_locked(self, now: float) -> CircuitOpenError:
        self._rejected += 1
        if self._state is CircuitState.OPEN:
            retry_at = self._retry_at
        else:
            # A probe is in flight: should it fail, the next one is an interval away (or
            # when this one is given up). Never "now": a caller would spin on it.
            since = self._probe_since if self._probe_since is not None else now
            retry_at = min(now + self._interval, since + self.probe_timeout)
        retry_in = max(0.0, retry_at - now)
        last = self._last_error
        why = short_text(f"{type(last).__name__}: {last}") if last is not None else "unknown"
        if self._state is CircuitState.HALF_OPEN:
            msg = f"circuit{self._label()} is half-open: a probe connection is in flight"
        else:
            msg = (
                f"circuit{self._label()} is open after {self._consecutive} consecutive connect "
                f"failure(s); next probe in {retry_in:.2f}s"
            )
        return CircuitOpenError(
            f"{msg}; last error: {why}", last_error=last, retry_at=retry_at, retry_in=retry_in
        )

    def before_attempt(self, wait: bool = False) -> float:
        """Ask to make one attempt.

        Returns 0.0 when the caller may go ahead (and must then report with
        :meth:`record_success` or :meth:`record_failure`). Otherwise raises
        :class:`CircuitOpenError`, or with ``wait=True`` returns the seconds to wait
        before asking again.
        """
        notes: list[dict[str, Any]] = []
        try:
            with self._cond:
                now = self.clock()
                delay = self._permit_locked(now, notes)
                if delay <= 0.0:
                    return 0.0
                if wait:
                    return delay
                raise self._error_locked(now)
        finally:
            self._emit(notes)

    def wait_for_permission(self, timeout: float | None) -> None:
        """Block until the caller may attempt, or raise CircuitOpenError after ``timeout``.

        Waiters wake as soon as a probe's verdict arrives; only one of them becomes the
        next probe. ``timeout=None`` waits as long as it takes; 0 never waits.
        """
        # Bounded by the injected clock and by real time alike, so a fake clock that
        # nobody advances cannot turn a bounded wait into an endless one.
        real_deadline = None if timeout is None else time.monotonic() + timeout
        notes: list[dict[str, Any]] = []
        try:
            with self._cond:
                deadline = None if timeout is None else self.clock() + timeout
                while True:
                    now = self.clock()
                    delay = self._permit_locked(now, notes)
                    if delay <= 0.0:
                        return
                    remaining = None if deadline is None else deadline - now
                    if real_deadline is not None:
                        real_left = real_deadline - time.monotonic()
                        remaining = real_left if remaining is None else min(remaining, real_left)
                    if remaining is not None and remaining <= 0:
                        raise self._error_locked(now)
                    self._cond.wait(delay if remaining is None else min(delay, remaining))
        finally:
            self._emit(notes)

    def record_success(self) -> None:
        """Report a successful attempt: the circuit closes."""
        notes: list[dict[str, Any]] = []
        with self._cond:
            self._successes += 1
            was = self._state
            self._state = CircuitState.CLOSED
            self._consecutive = 0
            self._interval = self.reset_timeout
            self._probe_since = None
            self._retry_at = 0.0
            if was is not CircuitState.CLOSED:
                logger.info("circuit%s closed: connecting works again", self._label())
                self._closed_locked(notes)
                self._cond.notify_all()
        self._emit(notes)

    def record_failure(self, exc: BaseException | None = None) -> None:
        """Report a failed attempt; may open (or re-open) the circuit."""
        notes: list[dict[str, Any]] = []
        with self._cond:
            now = self.clock()
            self._failures += 1
            self._consecutive += 1
            if exc is not None:
                self._last_error = exc
            if self._state is CircuitState.HALF_OPEN:
                # The probe failed (or a straggler from before): open again, longer.
                if self.max_reset_timeout is not None:
                    self._interval = min(self.max_reset_timeout, self._interval * 2.0)
                self._open_locked(now, notes)
            elif self._state is CircuitState.CLOSED:
                if self._consecutive >= self.failure_threshold:
                    self._open_locked(now, notes)
            # OPEN: a late failure from an attempt that started earlier; nothing changes.
        self._emit(notes)

    def _open_locked(self, now: float, notes: list[dict[str, Any]]) -> None:
        if self._opened_at is None:
            self._opened_at = now
        notes.append({"kind": "circuit_opened", "attempt": self._consecutive,
                      "delay": self._interval, "error": self._last_error})
        self._state = CircuitState.OPEN
        self._retry_at = now + self._interval
        self._probe_since = None
        self._opened += 1
        num = ""
        if self._last_error is not None:
            from .classify import classify

            info = classify(self._last_error)
            num = f" (last error {info.number if info.number is not None else '-'} {info.kind})"
        logger.warning(
            "circuit%s open after %d consecutive connect failure(s)%s; next probe in %.2fs",
            self._label(),
            self._consecutive,
            num,
            self._interval,
        )
        self._cond.notify_all()

    def reset(self) -> None:
        """Close the circuit and forget the failures (e.g. after reconfiguring)."""
        notes: list[dict[str, Any]] = []
        with self._cond:
            if self._state is not CircuitState.CLOSED:
                self._closed_locked(notes)
            self._state = CircuitState.CLOSED
            self._consecutive = 0
            self._interval = self.reset_timeout
            self._probe_since = None
            self._retry_at = 0.0
            self._cond.notify_all()
        self._emit(notes)

    def _closed_locked(self, notes: list[dict[str, Any]]) -> None:
        since = self._opened_at
        self._opened_at = None
        notes.append({"kind": "circuit_closed",
                      "duration": None if since is None else self.clock() - since})

    def _emit(self, notes: list[dict[str, Any]]) -> None:
        """Emit the transitions noted under the lock (called after releasing it)."""
        bus = self.events
        if not notes or bus is None:
            return
        from .events import EventKind, error_info

        for note in notes:
            kind = EventKind(note.pop("kind"))
            if not bus.wants(kind):
                continue
            if "error" in note:
                note["error_info"] = error_info(note.pop("error"))
            bus.emit(kind, endpoint=self.endpoint, **note)

    def call(self, fn: Callable[..., T], *args: Any, wait: float | None = 0.0, **kwargs: Any) -> T:
        """Run ``fn`` under the breaker; ``wait`` seconds may be spent waiting for permission."""
        if wait:
            self.wait_for_permission(wait)
        else:
            self.before_attempt()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.record_failure(exc)
            raise
        self.record_success()
        return result

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (one another thread of the parent held would
        stay held forever)."""
        self._cond = threading.Condition(threading.Lock())

    def _label(self) -> str:
        return f" {self.name!r}" if self.name else ""


#: The longest interval a breaker accepts (a day): waits beyond it could not be slept on.
MAX_INTERVAL = 86400.0


def _seconds(name: str, value: Any) -> None:
    """A breaker interval: a finite number of seconds in (0, MAX_INTERVAL]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or not 0 < value <= MAX_INTERVAL:
        raise ConfigError(name, f"must be a finite number of seconds > 0 and <= "
                                f"{MAX_INTERVAL:g}, got {value!r}")


def guarded_connect(
    connect: Callable[[], T],
    *,
    policy: RetryPolicy | None = None,
    breaker: CircuitBreaker | None = None,
    timeout: float | None = None,
    wait: bool = False,
) -> T:
    """Open a connection through a connect policy and a circuit breaker.

    Every login attempt first asks ``breaker`` (failing fast with CircuitOpenError, or
    with ``wait=True`` waiting up to what is left of ``timeout`` for the next probe) and
    reports its outcome to it. Failures that ``policy`` retries (transient logins,
    network errors) are retried with its backoff, within ``timeout`` seconds when one is
    given; others (18456) propagate at once, exhaustion raises RetryExhausted.
    """
    state = policy.begin() if policy is not None else None
    if state is not None and timeout is not None:
        deadline = timeout if state.deadline is None else min(state.deadline, timeout)
        state = replace(state, deadline=max(deadline, 0.0))
    clock = state.clock if state is not None else (breaker.clock if breaker else time.monotonic)
    end = None if timeout is None else clock() + timeout
    while True:
        if breaker is not None:
            left = None if end is None else end - clock()
            if wait and (left is None or left > 0):
                breaker.wait_for_permission(left)
            else:
                breaker.before_attempt()
        try:
            conn = connect()
        except Exception as exc:
            if breaker is not None:
                breaker.record_failure(exc)
            if state is None:
                raise
            state = state.increment(exc)  # raises exc itself or RetryExhausted
            state.wait()
            state = state.begin()
            continue
        if breaker is not None:
            breaker.record_success()
        return conn


def _default_classifier() -> Any:
    from .classify import get_default_classifier

    return get_default_classifier()


#: Pool options read by :class:`ConnectGuard` (see :meth:`ConnectGuard.pop_options`).
GUARD_OPTIONS = ("connect_policy", "circuit_breaker", "circuit_wait")
_AUTO = "auto"


class ConnectGuard:
    """What a pool puts in front of its one connect method.

    ``policy`` retries transient login failures (None: one attempt per call);
    ``breaker`` stops logins after repeated failures (None: no circuit); ``wait`` says
    whether callers wait for the circuit within their acquire timeout (True) or fail fast
    with :class:`CircuitOpenError` (False, the default).
    """

    def __init__(self, policy: RetryPolicy | None, breaker: CircuitBreaker | None,
                 wait: bool = False) -> None:
        self.policy = policy
        self.breaker = breaker
        self.wait = wait

    @staticmethod
    def pop_options(options: dict[str, Any]) -> dict[str, Any]:
        """Take the guard's options out of a pool's keyword options."""
        return {name: options.pop(name) for name in GUARD_OPTIONS if name in options}

    @classmethod
    def from_options(
        cls,
        *,
        connect_policy: Any = _AUTO,
        circuit_breaker: Any = _AUTO,
        circuit_wait: Any = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        random: Callable[[], float] | None = None,
        name: str = "",
        other_circuits: bool = False,
    ) -> ConnectGuard:
        """Validate the pool options ``connect_policy`` (a RetryPolicy, "auto" for
        :data:`~mssql_pool.retry.CONNECT_POLICY`, or None), ``circuit_breaker`` (a
        CircuitBreaker, a mapping of its arguments, "auto" for the defaults, or None) and
        ``circuit_wait`` (bool). The pool's clock, sleep and random source are used unless
        the policy or breaker was given its own. ``other_circuits``: the pool already has
        circuits in front of its logins (one per endpoint), so "auto" adds none."""
        from .retry import CONNECT_POLICY, RetryPolicy

        policy: RetryPolicy | None
        if connect_policy == _AUTO:
            policy = CONNECT_POLICY
        elif connect_policy is None or isinstance(connect_policy, RetryPolicy):
            policy = connect_policy
        else:
            raise ConfigError("connect_policy",
                              f"must be a RetryPolicy, 'auto' or None, got {connect_policy!r}")
        if policy is not None and policy.clock is time.monotonic:
            changes: dict[str, Any] = {"clock": clock, "sleep": sleep}
            if random is not None:
                changes["random"] = random
            policy = policy.new(**changes)
        breaker: CircuitBreaker | None
        if circuit_breaker == _AUTO:
            breaker = None if other_circuits else CircuitBreaker(clock=clock, name=name)
        elif circuit_breaker is None or isinstance(circuit_breaker, CircuitBreaker):
            breaker = circuit_breaker
        elif isinstance(circuit_breaker, Mapping):
            args = dict(circuit_breaker)
            args.setdefault("clock", clock)
            args.setdefault("name", name)
            try:
                breaker = CircuitBreaker(**args)
            except ConfigError as exc:
                raise exc.nested("circuit_breaker") from None
            except TypeError as exc:
                raise ConfigError("circuit_breaker", str(exc)) from None
        else:
            raise ConfigError(
                "circuit_breaker",
                f"must be a CircuitBreaker, a mapping of its arguments, 'auto' or None, "
                f"got {circuit_breaker!r}",
            )
        if not isinstance(circuit_wait, bool):
            raise ConfigError("circuit_wait", f"must be True or False, got {circuit_wait!r}")
        return cls(policy, breaker, circuit_wait)

    def bind_events(self, bus: EventBus | None) -> None:
        """Send the pool-wide circuit's transitions to ``bus`` (a breaker given with
        events of its own keeps them)."""
        if self.breaker is not None and self.breaker.events is None:
            self.breaker.events = bus

    def connect(self, dial: Callable[[], T], timeout: float | None = None) -> T:
        """One login with ``dial``, through the breaker.

        ``timeout`` is what is left of the caller's acquire timeout: with ``wait`` the
        caller may spend it waiting for the circuit's next probe. None (background
        refills) never waits. Retrying is the pool's loop: it backs off while staying in
        the queue, so a connection returned meanwhile still reaches the caller.
        """
        return guarded_connect(dial, breaker=self.breaker, timeout=timeout,
                               wait=self.wait and timeout is not None)

    def give_up(self, exc: BaseException) -> bool:
        """Should the pool hand this connect error to the caller at once, rather than
        trying again until the acquire timeout? True for an open circuit when callers do
        not wait, and for login failures the connect policy never retries (18456)."""
        if isinstance(exc, CircuitOpenError):
            return not self.wait
        if self.policy is None:
            return False
        from .classify import ErrorKind

        info = (self.policy.classifier or _default_classifier()).classify(exc)
        return info.kind is ErrorKind.AUTH and not self.policy.should_retry(exc)

    def min_delay(self, exc: BaseException | None) -> float:
        """The server's minimum pause before the next login after ``exc`` (40501 asks for
        10 s, 10928/10929 for 5 s); 0 without a connect policy."""
        if self.policy is None or exc is None:
            return 0.0
        return float((self.policy.classifier or _default_classifier()).classify(exc).min_delay)

    def __repr__(self) -> str:
        return f"<ConnectGuard policy={self.policy!r} breaker={self.breaker!r} wait={self.wait}>"
