"""The exception hierarchy of mssql_pool, and nothing else.

Every exception the library raises on its own account derives from
:class:`MssqlPoolError`. Errors raised by the driver (pymssql) are passed through
unchanged unless a wrapper adds information (``RetryExhausted.last_error``,
``CommitUnknownError.__cause__``). Every class here pickles, so errors survive
``multiprocessing`` and ``concurrent.futures`` boundaries.

Messages never contain a password: whatever text comes from a connection string
goes through :func:`mssql_pool._dsn.redact` first.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MssqlPoolError",
    "ConfigError",
    "PoolError",
    "PoolTimeout",
    "PoolClosed",
    "TooManyRequests",
    "ConnectionCheckFailed",
    "RetryExhausted",
    "CommitUnknownError",
    "UnbalancedTransactionError",
    "CircuitOpenError",
    "PoolCircuitOpen",
    "RedirectError",
]


class MssqlPoolError(Exception):
    """Root of every exception raised by mssql_pool itself."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses with keyword-only attributes keep them in __dict__; restore both.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[MssqlPoolError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    obj.__dict__.update(state)
    return obj


class ConfigError(MssqlPoolError, ValueError):
    """A configuration value is invalid. The message names the parameter.

    It is also a :class:`ValueError`, so ``except ValueError`` keeps working.
    """

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.reason = message

    def nested(self, outer: str) -> ConfigError:
        """The same error inside option ``outer`` (``endpoint_breaker.reset_timeout``)."""
        return ConfigError(f"{outer}.{self.parameter}", self.reason)


class PoolError(MssqlPoolError):
    """Base for errors about the pool's own state (timeouts, closing, overload)."""


class NotPooledConnection(PoolError, TypeError):
    """``putconn()`` was given something that is not a connection this pool lent (None,
    a driver connection, another pool's proxy)."""


class PoolTimeout(PoolError, TimeoutError):
    """No connection could be handed out within the caller's timeout.

    ``waited`` is the time spent waiting in seconds, ``pool_size``/``max_size``
    and ``waiting`` describe the pool at that moment, and ``last_error`` is the
    most recent connection error when connecting is what failed (else None).
    """

    def __init__(
        self,
        message: str,
        *,
        waited: float = 0.0,
        pool_size: int = 0,
        max_size: int = 0,
        waiting: int = 0,
        last_error: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.waited = waited
        self.pool_size = pool_size
        self.max_size = max_size
        self.waiting = waiting
        self.last_error = last_error


class PoolClosed(PoolError):
    """The pool is closed (or was closed while the caller waited)."""


class TooManyRequests(PoolError):
    """The queue of waiting callers is full (``max_waiting`` reached)."""


class ConnectionCheckFailed(MssqlPoolError):
    """A health check failed on a connection (used internally; callers never get one)."""


class RetryExhausted(MssqlPoolError):
    """A retry policy gave up. ``last_error`` is the final error, ``attempts`` every attempt."""

    def __init__(
        self,
        message: str,
        *,
        last_error: BaseException | None = None,
        attempts: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(message)
        self.last_error = last_error
        self.attempts = attempts


class CommitUnknownError(MssqlPoolError):
    """The connection died while COMMIT was in flight: the unit may or may not have landed.

    It is never retried blindly. Declare the unit ``idempotent=True`` or pass
    ``verify=`` to let mssql_pool find out and carry on. ``__cause__`` is the
    driver error; ``attempts`` is the attempt history up to this point.
    """

    def __init__(
        self, message: str, *, original: BaseException | None = None, attempts: tuple[Any, ...] = ()
    ) -> None:
        super().__init__(message)
        self.original = original
        self.attempts = attempts


class UnbalancedTransactionError(MssqlPoolError):
    """``run_transaction``'s unit left the transaction count off its one transaction.

    ``trancount`` is the ``@@TRANCOUNT`` found at COMMIT time (1 is the unit's own
    transaction): above 1, ``fn`` left a BEGIN TRAN of its own open and the whole unit
    was rolled back (a COMMIT would only have lowered the count); 0, ``fn`` committed or
    rolled back run_transaction's transaction itself, so part of its work may be durable.
    Never retried: running the unit again would not change what it does.
    """

    def __init__(self, message: str, *, trancount: int) -> None:
        super().__init__(message)
        self.trancount = trancount


class CircuitOpenError(MssqlPoolError):
    """Connecting is suspended after repeated failures; fails fast instead of a login storm.

    ``last_error`` is the connect error that opened (or kept open) the circuit;
    ``retry_at`` is the monotonic time when the next probe is allowed and
    ``retry_in`` the seconds until then at the time of raising.
    """

    def __init__(
        self,
        message: str,
        *,
        last_error: BaseException | None = None,
        retry_at: float = 0.0,
        retry_in: float = 0.0,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.last_error = last_error
        self.retry_at = retry_at
        self.retry_in = retry_in
        self.endpoint = endpoint


class PoolCircuitOpen(PoolTimeout, CircuitOpenError):
    """A checkout refused at once: the pool has no connection at all (none idle, busy or
    being opened), connecting is suspended by an open circuit, and the circuit's next
    probe is due after the caller's timeout (see the ``circuit_wait`` option).

    Both a :class:`PoolTimeout` (so ``except PoolTimeout`` and ``except TimeoutError``
    catch it, like every other checkout that gets no connection) and a
    :class:`CircuitOpenError` (``.retry_at``, ``.retry_in``, ``.endpoint``; a unit of
    work retried by ``run_transaction`` waits for the probe). ``last_error`` is the
    connect error that opened the circuit.
    """

    def __init__(
        self,
        message: str,
        *,
        waited: float = 0.0,
        pool_size: int = 0,
        max_size: int = 0,
        waiting: int = 0,
        last_error: BaseException | None = None,
        retry_at: float = 0.0,
        retry_in: float = 0.0,
        endpoint: str | None = None,
    ) -> None:
        PoolTimeout.__init__(self, message, waited=waited, pool_size=pool_size,
                             max_size=max_size, waiting=waiting, last_error=last_error)
        self.retry_at = retry_at
        self.retry_in = retry_in
        self.endpoint = endpoint


class RedirectError(MssqlPoolError):
    """A login was routed more than once, looped, or the routed-to node failed the login."""

    def __init__(self, message: str, *, hops: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.hops = hops
