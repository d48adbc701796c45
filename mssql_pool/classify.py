"""What an error means: SQL Server error numbers -> kinds, and whether to try again.

:func:`classify` turns any exception pymssql, python-tds or a socket raises into an
:class:`ErrorInfo`: the numbers involved, the severity, a :class:`ErrorKind`, a
server-requested minimum delay, and two questions answered:

* ``retryable``: may the *unit of work* be run again (on a fresh connection)?
* ``connection_dead``: is the connection the error came from unusable?

The number tables are documented below as dicts ``number -> one-line meaning``, with
a frozenset of the keys next to each. A :class:`Classifier` is an immutable set of
rules; :data:`DEFAULT_CLASSIFIER` is what :func:`classify` uses, and users derive
their own with :meth:`Classifier.with_transient`, :meth:`Classifier.without`,
:meth:`Classifier.with_kind` and :meth:`Classifier.with_exception`.

Predicates (:func:`retry_if_kind`, :func:`retry_if_number`,
:func:`retry_if_exception_type`, :data:`retry_if_retryable`) compose with ``|``,
``&`` and ``~`` and are what :class:`mssql_pool.retry.RetryPolicy` takes as
``retry_on``.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ._driver import _chain, _is_driver, extract
from .errors import CircuitOpenError, MssqlPoolError

__all__ = [
    "ErrorKind",
    "ErrorInfo",
    "Classifier",
    "Predicate",
    "classify",
    "is_disconnect",
    "retry_if_kind",
    "retry_if_number",
    "retry_if_exception_type",
    "retry_if_retryable",
    "retry_never",
    "DEFAULT_CLASSIFIER",
    "get_default_classifier",
    "set_default_classifier",
    "SQLCLIENT_TRANSIENT",
    "SQLCLIENT_TRANSIENT_MEANINGS",
    "AZURE_TRANSIENT",
    "AZURE_TRANSIENT_MEANINGS",
    "EFCORE_TRANSIENT",
    "EFCORE_TRANSIENT_MEANINGS",
    "DEADLOCK_NUMBERS",
    "LOCK_TIMEOUT_NUMBERS",
    "THROTTLED_NUMBERS",
    "THROTTLE_MIN_DELAY",
    "DISCONNECT_NUMBERS",
    "DISCONNECT_MEANINGS",
    "QUERY_TIMEOUT_NUMBERS",
    "AUTH_NUMBERS",
    "AUTH_SEVERITY",
    "FATAL_SEVERITY",
    "from_driver",
    "mark_driver_error",
    "AUTH_MEANINGS",
    "PROGRAMMING_NUMBERS",
    "PROGRAMMING_MEANINGS",
    "MEANINGS",
]


class ErrorKind(str, enum.Enum):
    """What an error means for the caller."""

    TRANSIENT = "transient"  # try again: failover, resource limits, network blips at login
    DEADLOCK = "deadlock"  # 1205: the server rolled the whole transaction back
    LOCK_TIMEOUT = "lock_timeout"  # 1222: the statement was cancelled; roll back, retry the unit
    THROTTLED = "throttled"  # 40501, 10928, 10929...: try again after a minimum delay
    DISCONNECT = "disconnect"  # the connection is dead; the unit did not commit
    AUTH = "auth"  # login/permission failures: never retried
    PROGRAMMING = "programming"  # syntax, unknown names: never retried
    QUERY_TIMEOUT = "query_timeout"  # the work may have happened: not retried by default
    OTHER = "other"  # anything else: not retried

    def __str__(self) -> str:
        return self.value


_RETRYABLE_KINDS = frozenset(
    {
        ErrorKind.TRANSIENT,
        ErrorKind.DEADLOCK,
        ErrorKind.LOCK_TIMEOUT,
        ErrorKind.THROTTLED,
        ErrorKind.DISCONNECT,
    }
)

# --------------------------------------------------------------------------- tables

#: SqlClient's default transient list (SqlConfigurableRetryFactory).
SQLCLIENT_TRANSIENT_MEANINGS: Mapping[int, str] = MappingProxyType(
    {
        233: "connection established but the login failed: no process on the other end of the pipe",
        997: "connection established but the login failed: overlapped I/O in progress",
        1204: "the engine cannot obtain a LOCK resource right now (lock memory)",
        1205: "transaction was chosen as deadlock victim and rolled back",
        1222: "lock request time-out period exceeded (statement cancelled)",
        4060: "cannot open the database requested by the login (e.g. during failover)",
        4221: "login to a readable secondary failed: database in transition",
        10060: "network error: the connection attempt timed out / host did not respond",
        10928: "resource ID limit reached (Azure workers/sessions); retry after a delay",
        10929: "resource minimum guarantee not available: server too busy; retry later",
        40143: "the service encountered an error processing the request (connection)",
        40197: "the service encountered an error processing the request (failover/upgrade)",
        40501: "the service is currently busy; retry after 10 seconds",
        40540: "the service encountered an error processing the request; try again",
        40613: "database is not currently available (failover or reconfiguration)",
        42108: "cannot connect to the SQL pool: it is paused",
        42109: "the SQL pool is warming up",
        49918: "not enough resources to process the request",
        49919: "too many create or update operations in progress",
        49920: "too many operations in progress for the subscription",
    }
)
SQLCLIENT_TRANSIENT: frozenset[int] = frozenset(SQLCLIENT_TRANSIENT_MEANINGS)

#: Azure SQL's documented transient list: SqlClient's plus these.
AZURE_TRANSIENT_MEANINGS: Mapping[int, str] = MappingProxyType(
    {
        **SQLCLIENT_TRANSIENT_MEANINGS,
        615: "could not find database ID: the database is being moved or brought online",
        926: "database cannot be opened: in the middle of recovery/failover",
    }
)
AZURE_TRANSIENT: frozenset[int] = frozenset(AZURE_TRANSIENT_MEANINGS)

#: The EF Core (SqlServerTransientExceptionDetector) numbers that apply to pymssql users,
#: beyond Azure's list. EF Core deliberately does not retry a query timeout.
EFCORE_TRANSIENT_MEANINGS: Mapping[int, str] = MappingProxyType(
    {
        20: "the instance does not support encryption (seen transiently during failover)",
        64: "login failed: the specified network name is no longer available",
        121: "the semaphore timeout period has expired (network)",
        601: "could not continue scan with NOLOCK due to data movement",
        3960: "snapshot isolation update conflict: transaction aborted",
        8628: "timeout waiting for memory to compile the query",
        8645: "timeout waiting for memory resources to execute the query",
        8651: "low memory condition: could not perform the operation",
        10053: "connection aborted by the software in the host (network)",
        10054: "existing connection forcibly closed by the remote host",
        17197: "login failed due to timeout; the connection has been closed",
        41301: "in-memory OLTP: a dependency transaction failed to commit",
        41302: "in-memory OLTP: row updated by another transaction since this one began",
        41305: "in-memory OLTP: repeatable read validation failure",
        41325: "in-memory OLTP: serializable validation failure",
        41839: "in-memory OLTP: too many commit dependencies",
    }
)
EFCORE_TRANSIENT: frozenset[int] = frozenset(EFCORE_TRANSIENT_MEANINGS)

DEADLOCK_NUMBERS: frozenset[int] = frozenset({1205})
LOCK_TIMEOUT_NUMBERS: frozenset[int] = frozenset({1222})

#: Throttling numbers and the minimum delay (seconds) the server asks for before retrying.
THROTTLE_MIN_DELAY: Mapping[int, float] = MappingProxyType(
    {40501: 10.0, 10928: 5.0, 10929: 5.0, 49918: 0.0, 49919: 0.0, 49920: 0.0}
)
THROTTLED_NUMBERS: frozenset[int] = frozenset(THROTTLE_MIN_DELAY)

#: Errors after which the connection is unusable (DB-Library / network / killed session).
DISCONNECT_MEANINGS: Mapping[int, str] = MappingProxyType(
    {
        20002: "DB-Lib: Adaptive Server connection failed",
        20003: "DB-Lib: Adaptive Server connection timed out (FreeTDS closes the socket)",
        20004: "DB-Lib: read from the server failed",
        20006: "DB-Lib: write to the server failed",
        20009: "DB-Lib: unable to connect, server unavailable or refused",
        20017: "DB-Lib: unexpected EOF from the server (closed mid reply)",
        20047: "DB-Lib: DBPROCESS is dead or not enabled (socket closed while idle)",
        596: "cannot continue the execution because the session is in the kill state",
        3980: "the request failed to run because the batch is aborted",
        6005: "SHUTDOWN is in progress",
        10053: "connection aborted by the software in the host (network)",
        10054: "existing connection forcibly closed by the remote host",
        64: "the specified network name is no longer available",
        121: "the semaphore timeout period has expired (network)",
        233: "no process is on the other end of the pipe",
    }
)
DISCONNECT_NUMBERS: frozenset[int] = frozenset(DISCONNECT_MEANINGS)

#: Severity 14 is SQL Server's class of security-related errors (login failed, permission
#: denied). A login failure of this class is AUTH even when its number was lost.
AUTH_SEVERITY = 14

#: From this severity on, SQL Server ends the session (errors 20-25 are "fatal"): such an
#: error is a disconnect whatever its number.
FATAL_SEVERITY = 20

#: A query timeout: the socket is gone and the work may or may not have happened.
QUERY_TIMEOUT_NUMBERS: frozenset[int] = frozenset({20003})

AUTH_MEANINGS: Mapping[int, str] = MappingProxyType(
    {
        18456: "login failed for the user (wrong name or password)",
        18452: "login failed: the login is from an untrusted domain",
        18470: "login failed: the account is disabled",
        18486: "login failed: the account is locked out",
        18487: "login failed: the password has expired",
        18488: "login failed: the password must be changed",
        4064: "cannot open the user's default database",
        229: "permission denied on the object",
        230: "permission denied on the column",
        262: "permission denied in the database (CREATE ...)",
        916: "the server principal cannot access the database under the current security context",
    }
)
AUTH_NUMBERS: frozenset[int] = frozenset(AUTH_MEANINGS)

PROGRAMMING_MEANINGS: Mapping[int, str] = MappingProxyType(
    {
        102: "incorrect syntax",
        105: "unclosed quotation mark",
        137: "must declare the scalar variable",
        156: "incorrect syntax near a keyword",
        201: "procedure expects a parameter that was not supplied",
        207: "invalid column name",
        208: "invalid object name",
        209: "ambiguous column name",
        2812: "could not find stored procedure",
        4104: "the multi-part identifier could not be bound",
        8144: "procedure or function has too many arguments",
    }
)
PROGRAMMING_NUMBERS: frozenset[int] = frozenset(PROGRAMMING_MEANINGS)

#: Every documented number and its meaning.
MEANINGS: Mapping[int, str] = MappingProxyType(
    {
        **EFCORE_TRANSIENT_MEANINGS,
        **AZURE_TRANSIENT_MEANINGS,
        **DISCONNECT_MEANINGS,
        **AUTH_MEANINGS,
        **PROGRAMMING_MEANINGS,
    }
)

# Which kind wins when an error carries several numbers (a failed login names the server's
# message and DB-Library's 20002; a dead-connection error may carry 20047 and 20003).
_PRECEDENCE: tuple[ErrorKind, ...] = (
    ErrorKind.AUTH,
    ErrorKind.PROGRAMMING,
    ErrorKind.QUERY_TIMEOUT,
    ErrorKind.DEADLOCK,
    ErrorKind.LOCK_TIMEOUT,
    ErrorKind.THROTTLED,
    ErrorKind.TRANSIENT,
    ErrorKind.DISCONNECT,
    ErrorKind.OTHER,
)
_RANK = {kind: i for i, kind in enumerate(_PRECEDENCE)}


def _default_number_kinds() -> dict[int, ErrorKind]:
    kinds: dict[int, ErrorKind] = {}
    # A number in several lists gets the kind of the last one (64 is transient and a
    # disconnect: a disconnect).
    for numbers, kind in (
        (EFCORE_TRANSIENT | AZURE_TRANSIENT, ErrorKind.TRANSIENT),
        (DISCONNECT_NUMBERS, ErrorKind.DISCONNECT),
        (THROTTLED_NUMBERS, ErrorKind.THROTTLED),
        (DEADLOCK_NUMBERS, ErrorKind.DEADLOCK),
        (LOCK_TIMEOUT_NUMBERS, ErrorKind.LOCK_TIMEOUT),
        (QUERY_TIMEOUT_NUMBERS, ErrorKind.QUERY_TIMEOUT),
        (AUTH_NUMBERS, ErrorKind.AUTH),
        (PROGRAMMING_NUMBERS, ErrorKind.PROGRAMMING),
    ):
        kinds.update(dict.fromkeys(numbers, kind))
    return kinds


# --------------------------------------------------------------------------- ErrorInfo


@dataclass(frozen=True)
class ErrorInfo:
    """Our view of one error.

    ``numbers`` every error number involved (primary first), ``number`` the one that
    decided the kind (or the first), ``severity`` the highest severity seen,
    ``min_delay`` the server's minimum wait before a retry (40501: 10 s; 10928/10929:
    5 s), ``message`` a short, redacted text.
    """

    kind: ErrorKind
    numbers: tuple[int, ...] = ()
    number: int | None = None
    severity: int | None = None
    min_delay: float = 0.0
    message: str = ""
    dead: bool = field(default=False, repr=False)

    @property
    def retryable(self) -> bool:
        """May the unit of work be run again on a fresh connection?"""
        return self.kind in _RETRYABLE_KINDS

    @property
    def connection_dead(self) -> bool:
        """Is the connection the error came from unusable (discard, never reuse)?"""
        return (
            self.dead
            or self.kind in (ErrorKind.DISCONNECT, ErrorKind.QUERY_TIMEOUT)
            or (self.severity is not None and self.severity >= 20)
        )

    def describe(self) -> str:
        """One line for logs: kind, number, meaning."""
        meaning = MEANINGS.get(self.number, "") if self.number is not None else ""
        num = f" {self.number}" if self.number is not None else ""
        extra = f" ({meaning})" if meaning else ""
        return f"{self.kind.value}{num}{extra}"


# --------------------------------------------------------------------------- Classifier

_ExcTypes = type[BaseException] | tuple[type[BaseException], ...]


@dataclass(frozen=True)
class Classifier:
    """An immutable set of classification rules.

    ``number_kinds`` maps an error number to its kind (numbers absent are OTHER);
    ``exception_kinds`` maps exception types to a kind and is consulted first, in
    order, so users can declare their own exceptions retryable (``TRANSIENT``) or
    not (``OTHER``). Derive variants with the ``with_*``/``without`` methods.
    """

    number_kinds: Mapping[int, ErrorKind] = field(
        default_factory=lambda: MappingProxyType(_default_number_kinds())
    )
    exception_kinds: tuple[tuple[_ExcTypes, ErrorKind], ...] = ()
    min_delays: Mapping[int, float] = field(default_factory=lambda: THROTTLE_MIN_DELAY)

    # -- derivation ------------------------------------------------------------------

    def with_kind(self, kind: ErrorKind | str, *numbers: int) -> Classifier:
        """A copy in which ``numbers`` have ``kind``."""
        kind = ErrorKind(kind)
        kinds = dict(self.number_kinds)
        for n in _check_numbers(numbers):
            kinds[n] = kind
        return Classifier(MappingProxyType(kinds), self.exception_kinds, self.min_delays)

    def with_transient(self, *numbers: int) -> Classifier:
        """A copy in which ``numbers`` are retried (kind TRANSIENT)."""
        return self.with_kind(ErrorKind.TRANSIENT, *numbers)

    def without(self, *numbers: int) -> Classifier:
        """A copy in which ``numbers`` are no longer special (kind OTHER: not retried)."""
        kinds = dict(self.number_kinds)
        for n in _check_numbers(numbers):
            kinds.pop(n, None)
        return Classifier(MappingProxyType(kinds), self.exception_kinds, self.min_delays)

    def with_min_delay(self, number: int, seconds: float) -> Classifier:
        """A copy in which error ``number`` asks for at least ``seconds`` before a retry."""
        if seconds < 0:
            from .errors import ConfigError

            raise ConfigError("seconds", f"must be >= 0, got {seconds!r}")
        delays = dict(self.min_delays)
        delays[int(number)] = float(seconds)
        return Classifier(self.number_kinds, self.exception_kinds, MappingProxyType(delays))

    def with_exception(
        self,
        exc_type: _ExcTypes,
        kind: ErrorKind | str | None = None,
        *,
        retryable: bool | None = None,
    ) -> Classifier:
        """A copy that classifies instances of ``exc_type`` (user exceptions) as ``kind``.

        Pass either ``kind`` or ``retryable=True`` (TRANSIENT) / ``retryable=False``
        (OTHER). Later registrations take precedence over earlier ones.
        """
        if kind is None:
            if retryable is None:
                from .errors import ConfigError

                raise ConfigError("kind", "pass a kind or retryable=True/False")
            kind = ErrorKind.TRANSIENT if retryable else ErrorKind.OTHER
        rule = (exc_type, ErrorKind(kind))
        return Classifier(self.number_kinds, (rule, *self.exception_kinds), self.min_delays)

    # -- classification --------------------------------------------------------------

    def kind_of(self, number: int) -> ErrorKind:
        return self.number_kinds.get(number, ErrorKind.OTHER)

    def rule_for(self, exc: BaseException) -> ErrorKind | None:
        """The kind a :meth:`with_exception` rule gives ``exc``, or None."""
        for exc_type, kind in self.exception_kinds:
            if isinstance(exc, exc_type):
                return kind
        return None

    def classify(self, exc: BaseException) -> ErrorInfo:
        """Classify ``exc``; never raises.

        A :meth:`with_exception` rule decides the kind (so whether it is retried), never
        the facts: a driver error that says its connection is dead (a disconnect number,
        a severity of 20 or more, a dead socket) keeps ``connection_dead`` whatever rule
        matched, so the pool never reuses that connection.
        """
        kind = self.rule_for(exc)
        if kind is not None:
            if not from_driver(exc):
                return ErrorInfo(kind=kind, message=_short(exc))
            facts = self._builtin(exc)
            return ErrorInfo(kind=kind, numbers=facts.numbers, number=facts.number,
                             severity=facts.severity, min_delay=facts.min_delay,
                             message=facts.message, dead=facts.connection_dead)
        return self._builtin(exc)

    def _builtin(self, exc: BaseException) -> ErrorInfo:
        if isinstance(exc, CircuitOpenError):
            # Connecting is suspended until the next probe: worth another try after it,
            # if the caller's deadline allows (a unit of work waits for the probe).
            retry_in = float(getattr(exc, "retry_in", 0.0) or 0.0)
            return ErrorInfo(kind=ErrorKind.TRANSIENT, min_delay=max(0.0, retry_in),
                             message=_short(exc))
        if isinstance(exc, MssqlPoolError):
            # Our own other errors (PoolTimeout, RetryExhausted, ...) are decisions, not
            # faults of one connection: never retried by a policy that wraps them.
            return ErrorInfo(kind=ErrorKind.OTHER, message=_short(exc))
        try:
            raw = extract(exc)
        except Exception:  # pragma: no cover - defensive: classification must not fail
            return ErrorInfo(kind=ErrorKind.OTHER, message=_short(exc))
        best = ErrorKind.OTHER
        decided: int | None = None
        for n in raw.numbers:
            k = self.number_kinds.get(n, ErrorKind.OTHER)
            if _RANK[k] < _RANK[best]:
                best, decided = k, n
        if raw.timeout and _RANK[ErrorKind.QUERY_TIMEOUT] < _RANK[best]:
            if self.number_kinds.get(20003, ErrorKind.QUERY_TIMEOUT) == ErrorKind.QUERY_TIMEOUT:
                best = ErrorKind.QUERY_TIMEOUT
        if raw.dead and best is ErrorKind.OTHER:
            best = ErrorKind.DISCONNECT
        if (
            raw.connect
            and raw.severity == AUTH_SEVERITY
            and best in (ErrorKind.DISCONNECT, ErrorKind.OTHER)
        ):
            # A login failure whose server message pymssql dropped (it does so after any
            # earlier login failure of equal or higher severity in the process, which it
            # never resets) still shows its class: 14 is "security-related errors"
            # (18456 and friends), so it fails fast instead of being retried.
            best, decided = ErrorKind.AUTH, None
        fatal = raw.severity is not None and raw.severity >= FATAL_SEVERITY
        if fatal and best not in _RETRYABLE_KINDS and best is not ErrorKind.QUERY_TIMEOUT:
            # SQL Server closes the session after such an error, whatever its number.
            best = ErrorKind.DISCONNECT
        min_delay = max((self.min_delays.get(n, 0.0) for n in raw.numbers), default=0.0)
        dead = fatal or raw.dead or any(
            self.number_kinds.get(n) in (ErrorKind.DISCONNECT, ErrorKind.QUERY_TIMEOUT)
            for n in raw.numbers
        )
        return ErrorInfo(
            kind=best,
            numbers=raw.numbers,
            number=decided if decided is not None else raw.number,
            severity=raw.severity,
            min_delay=min_delay,
            message=raw.text,
            dead=dead,
        )

    def is_disconnect(self, exc: BaseException) -> bool:
        return self.classify(exc).connection_dead

    def __repr__(self) -> str:
        return (
            f"<Classifier numbers={len(self.number_kinds)} "
            f"exception_rules={len(self.exception_kinds)}>"
        )


# --------------------------------------------------------------------------- origin

_DRIVER_MARK = "_mssql_pool_from_driver"


def mark_driver_error(exc: BaseException) -> None:
    """Record that ``exc`` was raised by a driver connection the pool handed out (the
    pool's proxy calls this for every error it passes on)."""
    try:
        setattr(exc, _DRIVER_MARK, True)
    except Exception:  # noqa: S110 - an exception type without __dict__: the chain decides
        pass


def from_driver(exc: BaseException) -> bool:
    """Whether ``exc`` came from the database driver or the pool, rather than from the
    application's own code.

    True when ``exc`` or anything it wraps (``__cause__``, ``__context__``, ``.orig``) is
    a pymssql or python-tds error, an error of mssql_pool itself, or an error the pool's
    proxy saw coming out of a driver connection (:func:`mark_driver_error`: how errors of
    other drivers, sockets included, are recognised). An ``OSError`` or ``TimeoutError``
    the application raised itself is not the server's, and is never retried or taken
    for a disconnect by the transaction layer.
    """
    for e in _chain(exc):
        if getattr(e, _DRIVER_MARK, False) or isinstance(e, MssqlPoolError) or _is_driver(e):
            return True
    return False


def _check_numbers(numbers: Iterable[int]) -> list[int]:
    out = []
    for n in numbers:
        if isinstance(n, bool) or not isinstance(n, int):
            from .errors import ConfigError

            raise ConfigError("numbers", f"error numbers must be int, got {n!r}")
        out.append(n)
    return out


def _short(exc: BaseException) -> str:
    from ._driver import short_text

    return short_text(f"{type(exc).__name__}: {exc}")


DEFAULT_CLASSIFIER = Classifier()
_default_lock = threading.Lock()
_default: Classifier = DEFAULT_CLASSIFIER


def get_default_classifier() -> Classifier:
    """The classifier :func:`classify` uses."""
    return _default


def set_default_classifier(classifier: Classifier | None) -> Classifier:
    """Replace the process-wide classifier (None restores the built-in one); returns the old."""
    global _default
    with _default_lock:
        old = _default
        _default = classifier if classifier is not None else DEFAULT_CLASSIFIER
    return old


def classify(exc: BaseException) -> ErrorInfo:
    """Classify ``exc`` with the default classifier."""
    return _default.classify(exc)


def is_disconnect(exc: BaseException) -> bool:
    """True when the connection ``exc`` came from is unusable (``.connection_dead``)."""
    return _default.classify(exc).connection_dead


# --------------------------------------------------------------------------- predicates


class Predicate:
    """A named test on an exception; compose with ``|``, ``&`` and ``~``."""

    __slots__ = ("_fn", "name")

    def __init__(self, fn: Callable[[BaseException], bool], name: str) -> None:
        self._fn = fn
        self.name = name

    def __call__(self, exc: BaseException) -> bool:
        return bool(self._fn(exc))

    def __or__(self, other: Callable[[BaseException], bool]) -> Predicate:
        o = _as_predicate(other)
        return Predicate(lambda e: self(e) or o(e), f"({self.name} | {o.name})")

    def __and__(self, other: Callable[[BaseException], bool]) -> Predicate:
        o = _as_predicate(other)
        return Predicate(lambda e: self(e) and o(e), f"({self.name} & {o.name})")

    def __invert__(self) -> Predicate:
        return Predicate(lambda e: not self(e), f"~{self.name}")

    def __repr__(self) -> str:
        return f"<Predicate {self.name}>"


def _as_predicate(fn: Callable[[BaseException], bool]) -> Predicate:
    if isinstance(fn, Predicate):
        return fn
    return Predicate(fn, getattr(fn, "__name__", repr(fn)))


def retry_if_kind(*kinds: ErrorKind | str, classifier: Classifier | None = None) -> Predicate:
    """True when the error's kind is one of ``kinds``."""
    wanted = frozenset(ErrorKind(k) for k in kinds)

    def test(exc: BaseException) -> bool:
        c = classifier if classifier is not None else _default
        return c.classify(exc).kind in wanted

    names = ",".join(sorted(k.value for k in wanted))
    return Predicate(test, f"kind({names})")


def retry_if_number(*numbers: int, classifier: Classifier | None = None) -> Predicate:
    """True when any of ``numbers`` appears in the error."""
    wanted = frozenset(_check_numbers(numbers))

    def test(exc: BaseException) -> bool:
        c = classifier if classifier is not None else _default
        return not wanted.isdisjoint(c.classify(exc).numbers)

    return Predicate(test, f"number({','.join(map(str, sorted(wanted)))})")


def retry_if_exception_type(*types: type[BaseException]) -> Predicate:
    """True when the error is an instance of one of ``types``."""
    return Predicate(lambda e: isinstance(e, types), f"type({','.join(t.__name__ for t in types)})")


def _retryable(exc: BaseException) -> bool:
    return _default.classify(exc).retryable


#: The default ``retry_on``: transient, deadlock, lock timeout, throttled, disconnect.
retry_if_retryable = Predicate(_retryable, "retryable")
#: Never retry.
retry_never = Predicate(lambda e: False, "never")
