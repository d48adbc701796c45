"""Retry-wrapped units of work: run_transaction, transactional, run.

A *unit* is a function ``fn(conn, *args, **kwargs)`` that does its work on ``conn``
and does not commit. :func:`run_transaction` runs it as one transaction:

1. a validated connection from the pool (within what is left of the policy's deadline);
2. ``SET TRANSACTION ISOLATION LEVEL`` if asked;
3. ``fn(conn, ...)``;
4. COMMIT.

On a retryable error (deadlock 1205, lock timeout 1222, throttling, failover, a dead
connection...) the transaction is rolled back if the connection lives, or the
connection is invalidated if it is dead; then the policy backs off and the *whole unit*
runs again on a fresh connection. A non-retryable error is rolled back and propagates
unchanged.

Ambiguous commits: if the connection dies while COMMIT is in flight, nobody knows whether
the unit landed. It is never re-run blindly: :class:`~mssql_pool.errors.CommitUnknownError`
is raised, unless the unit is declared ``idempotent=True`` (then it is re-run) or a
``verify(conn) -> bool`` callable is given, which is run on a fresh connection: True means
it landed (the first run's result is returned), False means it did not (re-run).

With pymssql the COMMIT is one batch, :data:`COMMIT_BATCH`, that commits only when the
unit's transaction is the only one open and reports the ``@@TRANCOUNT`` it found: a unit
whose ``fn`` left a ``BEGIN TRAN`` of its own open (a bare COMMIT would only lower the
count and the work would be rolled back later) or ended the transaction itself raises
:class:`~mssql_pool.errors.UnbalancedTransactionError` instead of returning success for
work that is not durable. Only a failure of that batch is ambiguous, and whether it is
ambiguous is decided by the built-in rules (:func:`commit_outcome_unknown`), never by the
caller's classifier. In pymssql's default mode (an implicit ``BEGIN TRAN`` always open)
the batch is :data:`COMMIT_REOPEN_BATCH`, which also re-opens that transaction (``IF
@@TRANCOUNT = 0 BEGIN TRAN``) before reporting the count: the whole unit costs its
statements plus this one round trip, and a connection lost before its reply is an unknown
outcome, exactly as with a bare COMMIT. With ``autocommit=True`` run_transaction opens the
transaction itself.

Whose error: only an exception that comes from the driver or the pool
(:func:`mssql_pool.classify.from_driver`) is classified and possibly retried. The
application's own exceptions raised in ``fn`` (``OSError``, ``TimeoutError``...) are
rolled back and re-raised unchanged at once, the connection kept, unless a
``with_exception`` rule of the policy's classifier names them.

:func:`run` offers statement-level retry outside a transaction, only for work the caller
declares idempotent.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol, TypeVar, cast

from ._driver import pymssql_autocommit
from ._driver import rollback as driver_rollback
from .classify import (
    DEFAULT_CLASSIFIER,
    Classifier,
    ErrorInfo,
    ErrorKind,
    from_driver,
    get_default_classifier,
)
from .errors import (
    CommitUnknownError,
    ConfigError,
    RetryExhausted,
    UnbalancedTransactionError,
)
from .events import EventKind
from .retry import ExponentialBackoff, RetryPolicy

__all__ = [
    "run_transaction",
    "transactional",
    "run",
    "TRANSACTION_POLICY",
    "ISOLATION_LEVELS",
    "COMMIT_BATCH",
    "COMMIT_REOPEN_BATCH",
    "commit_outcome_unknown",
]

logger = logging.getLogger("mssql_pool.transaction")

T = TypeVar("T")

#: The default policy for units of work: 5 attempts within 30 s, exponential backoff from
#: 50 ms with full jitter, capped at 5 s (server hints such as 40501's 10 s still apply).
TRANSACTION_POLICY = RetryPolicy(
    max_attempts=5,
    deadline=30.0,
    backoff=ExponentialBackoff(base=0.05, factor=2.0, cap=5.0, jitter="full"),
    name="transaction",
)

#: Accepted ``isolation_level`` values (case and underscores are forgiven).
ISOLATION_LEVELS = frozenset(
    {"READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SNAPSHOT", "SERIALIZABLE"}
)


class _Pool(Protocol):
    def connection(self, timeout: float | None = ...) -> Any: ...


def _isolation_sql(level: str | None) -> str | None:
    if level is None:
        return None
    if not isinstance(level, str):
        raise ConfigError("isolation_level", f"must be a string, got {level!r}")
    norm = " ".join(level.replace("_", " ").upper().split())
    if norm not in ISOLATION_LEVELS:
        raise ConfigError(
            "isolation_level",
            f"must be one of {', '.join(sorted(ISOLATION_LEVELS))}; got {level!r}",
        )
    return f"SET TRANSACTION ISOLATION LEVEL {norm}"


def _check_policy(policy: RetryPolicy | None) -> RetryPolicy:
    if policy is None:
        return TRANSACTION_POLICY
    if not isinstance(policy, RetryPolicy):
        raise ConfigError("policy", f"must be a RetryPolicy or None, got {policy!r}")
    return policy.new() if policy.history or policy.started_at is not None else policy


def _check_unit(fn: object, verify: object = None, *, kind: str = "callable",
                target: str = "conn") -> None:
    """``fn`` and ``verify=`` must be callables (``kind``: "an async callable" for the
    asyncio runners; ``target``: what ``verify`` is given)."""
    if not callable(fn):
        raise ConfigError("fn", f"must be {kind}, got {fn!r}")
    if verify is not None and not callable(verify):
        raise ConfigError("verify", f"must be {kind}({target}) -> bool, got {verify!r}")


def _start(policy: RetryPolicy | None) -> tuple[RetryPolicy, Classifier]:
    """The policy state of a unit's first attempt, and the classifier that judges its
    errors (the policy's own, else the default)."""
    base = _check_policy(policy)
    classifier = base.classifier if base.classifier is not None else get_default_classifier()
    return base.begin(), classifier


# --------------------------------------------------------------------------- commit protocol


class _CommitOutcome(Exception):
    """Internal: COMMIT failed. ``ambiguous`` when the connection died with it in flight."""

    def __init__(self, error: BaseException, ambiguous: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.ambiguous = ambiguous
        self.result: object = None  # what fn returned before the COMMIT


def _raw(conn: Any) -> Any:
    return getattr(conn, "raw", conn)


def _pymssql_mode(conn: Any) -> bool | None:
    """For a pymssql connection: its autocommit state; None for any other driver."""
    return pymssql_autocommit(_raw(conn))


def _execute(conn: Any, sql: str) -> None:
    cur = conn.cursor()
    try:
        cur.execute(sql)
    finally:
        try:
            cur.close()
        except Exception:  # noqa: S110 - a cursor on a dead connection may not close
            pass


def _begin(conn: Any, isolation_sql: str | None) -> None:
    if _pymssql_mode(conn) is True:
        # autocommit=True: no implicit transaction; open one ourselves.
        _execute(conn, "BEGIN TRAN")
    if isolation_sql is not None:
        _execute(conn, isolation_sql)


def commit_outcome_unknown(exc: BaseException) -> bool:
    """Whether a failed COMMIT may nevertheless have committed.

    Decided by the built-in rules only (:data:`~mssql_pool.classify.DEFAULT_CLASSIFIER`),
    never by the caller's classifier: a rule such as ``with_exception(OperationalError,
    retryable=True)`` decides what is retried, not whether the connection died with the
    COMMIT in flight. Unknown when the connection is dead (a disconnect, a severity of 20
    or more, a dead socket), on a query timeout (the socket is closed with the reply
    pending), and for an error that did not come from the driver at all.
    """
    if not from_driver(exc):
        return True
    info = DEFAULT_CLASSIFIER.classify(exc)
    return info.connection_dead or info.kind is ErrorKind.QUERY_TIMEOUT


#: The COMMIT of a unit on pymssql: commits only when the unit's own transaction is the
#: only one open, and reports the count it found (one round trip, like a bare COMMIT).
COMMIT_BATCH = "DECLARE @n INT = @@TRANCOUNT; IF @n = 1 COMMIT TRAN; SELECT @n"

#: :data:`COMMIT_BATCH` in pymssql's default mode: the same batch also re-opens the
#: transaction pymssql keeps open (when none is left), so the unit costs no further trip.
COMMIT_REOPEN_BATCH = ("DECLARE @n INT = @@TRANCOUNT; IF @n = 1 COMMIT TRAN; "
                       "IF @@TRANCOUNT = 0 BEGIN TRAN; SELECT @n")


def _commit_checked(conn: Any, batch: str = COMMIT_BATCH) -> int:
    """Send ``batch``; the transaction count found before it (1: committed)."""
    cur = conn.cursor()
    try:
        cur.execute(batch)
        rows = cur.fetchall()          # to the end: nothing is left pending on the wire
        row = rows[0] if rows else None
    finally:
        try:
            cur.close()
        except Exception:  # noqa: S110 - a cursor on a dead connection may not close
            pass
    value = next(iter(row.values()), None) if isinstance(row, dict) else (
        row[0] if row else None)          # a cursor with as_dict=True gives a dict
    if not isinstance(value, int):
        raise UnbalancedTransactionError(
            f"the COMMIT batch returned {row!r} instead of the transaction count; "
            "nothing was committed", trancount=-1)
    return value


def _settled(conn: Any) -> None:
    """Tell the pool's proxy the transaction count is at its baseline (no reset needed)."""
    settled = getattr(conn, "_settled", None)
    if settled is not None:
        settled()


def _commit(conn: Any, classifier: Classifier) -> None:
    """COMMIT; raises _CommitOutcome on failure (ambiguous when the connection died) and
    :class:`UnbalancedTransactionError` (nothing committed by us) when ``fn`` left the
    transaction count anywhere but at the unit's one transaction."""
    mode = _pymssql_mode(conn)
    if mode is None:
        try:
            conn.commit()
        except Exception as exc:
            raise _CommitOutcome(exc, commit_outcome_unknown(exc)) from exc
        return
    try:
        found = _commit_checked(conn, COMMIT_BATCH if mode else COMMIT_REOPEN_BATCH)
    except UnbalancedTransactionError:
        raise
    except Exception as exc:
        raise _CommitOutcome(exc, commit_outcome_unknown(exc)) from exc
    if found != 1:
        if found > 1:
            message = (
                f"the unit left {found - 1} transaction(s) of its own open (BEGIN TRAN "
                "without COMMIT): a COMMIT would only have lowered the count and nothing "
                "would be durable, so the whole unit was rolled back. Balance BEGIN TRAN "
                "with COMMIT inside fn, or leave transactions to run_transaction."
            )
        else:
            message = (
                "the unit ended run_transaction's transaction itself (COMMIT or ROLLBACK "
                "inside fn): what it did before that may be committed, what it did after "
                "ran outside any transaction. Nothing more was committed and the unit is "
                "not run again; leave COMMIT/ROLLBACK to run_transaction."
            )
        raise UnbalancedTransactionError(message, trancount=found)
    # Committed. In pymssql's default mode the same batch re-opened its transaction; the
    # pool's proxy is told the connection holds no work, so its return costs nothing.
    _settled(conn)


def _invalidate(conn: Any, reason: str) -> None:
    invalidate = getattr(conn, "invalidate", None)
    if invalidate is not None:
        try:
            invalidate(reason)
        except Exception:  # pragma: no cover - defensive
            logger.exception("invalidate() raised")


def _rollback(conn: Any, info: ErrorInfo | None, classifier: Classifier) -> None:
    """Roll back if the connection lives; otherwise (or if rollback fails) invalidate it."""
    if info is not None and info.connection_dead:
        _invalidate(conn, f"connection lost: {info.describe()}")
        return
    try:
        mode = _pymssql_mode(conn)
        if mode is True:
            _execute(conn, "IF @@TRANCOUNT > 0 ROLLBACK TRAN")
        else:
            driver_rollback(conn)   # a deadlock victim's is already rolled back: 3903
        if mode is not None:
            # pymssql's ROLLBACK TRAN ends every nesting level; its BEGIN TRAN (autocommit
            # off) or nothing (autocommit on) leaves the count at its baseline.
            _settled(conn)
    except Exception as exc:
        logger.warning(
            "rollback failed (%s); discarding the connection", classifier.classify(exc).describe()
        )
        _invalidate(conn, "rollback failed")


def _retrying(pool: Any, state: RetryPolicy) -> RetryPolicy:
    """A ``retry_attempt`` event for the attempt ``state`` just recorded (pool events)."""
    bus = getattr(pool, "events", None)
    if bus is not None and state.history and bus.wants(EventKind.RETRY_ATTEMPT):
        rec = state.history[-1]
        bus.emit(EventKind.RETRY_ATTEMPT, attempt=rec.attempt, delay=rec.delay,
                 duration=rec.duration, error_info=_info(state, rec.error),
                 reason=state.name or None)
    return state


def _commit_unknown(pool: Any, info: ErrorInfo, state: RetryPolicy, *, idempotent: bool,
                    verify: bool) -> None:
    """A ``commit_unknown`` event (pool events); ``reason`` says what happens next."""
    bus = getattr(pool, "events", None)
    if bus is not None:
        bus.emit(EventKind.COMMIT_UNKNOWN, error_info=info, attempt=state.attempt,
                 reason="rerun" if idempotent else ("verify" if verify else "raised"))


def _info(state: RetryPolicy, exc: BaseException) -> ErrorInfo:
    return (state.classifier or get_default_classifier()).classify(exc)


def _acquire(pool: _Pool, policy: RetryPolicy) -> Any:
    remaining = policy.remaining()
    if remaining is None:
        return pool.connection()
    return pool.connection(timeout=max(remaining, 0.001))


# --------------------------------------------------------------------------- run_transaction


def run_transaction(
    pool: Any,
    fn: Callable[..., T],
    *args: Any,
    policy: RetryPolicy | None = None,
    isolation_level: str | None = None,
    idempotent: bool = False,
    verify: Callable[[Any], bool] | None = None,
    **kwargs: Any,
) -> T:
    """Run ``fn(conn, *args, **kwargs)`` as one transaction, retrying the whole unit.

    See the module docstring for the rules. Returns ``fn``'s result. Raises the original
    error for non-retryable failures, :class:`RetryExhausted` when the policy gives up,
    and :class:`CommitUnknownError` when the outcome of COMMIT is unknown and neither
    ``idempotent=True`` nor ``verify=`` lets the unit continue.
    """
    _check_unit(fn, verify)
    iso = _isolation_sql(isolation_level)
    state, classifier = _start(policy)
    while True:
        try:
            return cast(T, _one_unit(pool, fn, args, kwargs, iso, classifier, state))
        except _CommitOutcome as outcome:
            decided = _resolve_commit(pool, outcome, state, idempotent=idempotent,
                                      verify=verify, classifier=classifier)
            if isinstance(decided, _Landed):
                return cast(T, decided.result)
            state = _retrying(pool, decided)
        except Exception as exc:
            state = _failed(pool, exc, state, classifier)
        state.wait()
        state = state.begin()


def _failed(pool: Any, exc: Exception, state: RetryPolicy, classifier: Classifier
            ) -> RetryPolicy:
    """The policy state of the next attempt after one failed with ``exc``, announced as a
    ``retry_attempt`` event of ``pool`` (anything with ``events``, or None). Raises ``exc``
    itself when it is the application's own error (rolled back: never retried) or one the
    policy does not retry, and :class:`RetryExhausted` when the policy is spent."""
    if _users_own(exc, classifier):
        raise exc
    return _retrying(pool, state.increment(exc))


def _users_own(exc: BaseException, classifier: Classifier) -> bool:
    """An exception raised by the application's code inside ``fn`` (not by the driver or
    the pool, and not named by a ``with_exception`` rule of the caller's classifier)."""
    return not from_driver(exc) and classifier.rule_for(exc) is None


def _unit_error_info(exc: BaseException, classifier: Classifier) -> ErrorInfo | None:
    """How to treat the connection after ``fn`` raised ``exc``: None for the application's
    own error (roll back; the connection is kept when that works)."""
    if not isinstance(exc, Exception) or _users_own(exc, classifier):
        return None
    return classifier.classify(exc)


class _Landed:
    __slots__ = ("result",)

    def __init__(self, result: object) -> None:
        self.result = result


def _one_unit(
    pool: Any,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    iso: str | None,
    classifier: Classifier,
    policy: RetryPolicy,
) -> Any:
    with _acquire(pool, policy) as conn:
        try:
            _begin(conn, iso)
            result = fn(conn, *args, **kwargs)
        except BaseException as exc:
            _rollback(conn, _unit_error_info(exc, classifier), classifier)
            if not isinstance(exc, Exception):
                _invalidate(conn, f"interrupted by {type(exc).__name__}")
            raise
        try:
            _commit(conn, classifier)
        except UnbalancedTransactionError:
            _rollback(conn, None, classifier)
            raise
        except _CommitOutcome as outcome:
            if outcome.ambiguous:
                _invalidate(conn, "connection lost during COMMIT")
            else:
                _rollback(conn, classifier.classify(outcome.error), classifier)
            outcome.result = result
            raise
        except BaseException:
            _invalidate(conn, "interrupted during COMMIT")
            raise
        return result


def _resolve_commit(
    pool: Any,
    outcome: _CommitOutcome,
    state: RetryPolicy,
    *,
    idempotent: bool,
    verify: Callable[[Any], bool] | None,
    classifier: Classifier,
) -> RetryPolicy | _Landed:
    """Decide what a failed COMMIT means; returns the next policy state or _Landed."""
    decided = _before_verify(pool, outcome, state, idempotent=idempotent,
                             verify=verify is not None, classifier=classifier)
    if decided is not None:
        return decided
    assert verify is not None        # without one, _before_verify raised

    def check(vstate: RetryPolicy) -> bool:      # verify= on a fresh connection
        with _acquire(pool, vstate) as vconn:
            return bool(verify(vconn))

    return _verified(pool, check, outcome, state)


def _verified(pool: Any, check: Callable[[RetryPolicy], bool], outcome: _CommitOutcome,
              state: RetryPolicy) -> RetryPolicy | _Landed:
    """Run ``check`` (``verify=`` on a fresh connection) under the unit's policy until it
    answers; what the answer means (:func:`_after_verify`)."""
    vstate = state
    while True:
        try:
            landed = check(vstate)
            break
        except Exception as verr:
            vstate = _verify_failed(pool, vstate, verr, outcome.error)
        vstate.wait()
        vstate = vstate.begin()
    return _after_verify(landed, outcome, vstate)


def _before_verify(pool: Any, outcome: _CommitOutcome, state: RetryPolicy, *,
                   idempotent: bool, verify: bool, classifier: Classifier) -> RetryPolicy | None:
    """The steps of a failed COMMIT before ``verify=`` runs (sync and async alike). A
    COMMIT that surely failed is an error like any other (the next policy state; raises
    the error or RetryExhausted when it is not retried). An ambiguous one is logged and
    counted, then an idempotent unit is re-run (the next policy state), or
    :class:`CommitUnknownError` is raised when there is no ``verify=``. None: run
    ``verify``."""
    exc = outcome.error
    if not outcome.ambiguous:
        return state.increment(exc)
    info = classifier.classify(exc)
    logger.warning(
        "connection lost while COMMIT was in flight (%s): outcome unknown", info.describe()
    )
    _commit_unknown(pool, info, state, idempotent=idempotent, verify=verify)
    if idempotent:
        return _next_or_exhausted(state, exc, "idempotent unit re-run after an unknown commit")
    if not verify:
        raise CommitUnknownError(
            "the connection was lost while COMMIT was in flight: the unit may or may not "
            f"have been applied ({info.describe()}). It was not re-run. Pass verify= or "
            "idempotent=True to let mssql_pool find out.",
            original=exc,
            attempts=_record(state, exc),
        ) from exc
    return None


def _verify_failed(pool: Any, vstate: RetryPolicy, verr: Exception,
                   exc: BaseException) -> RetryPolicy:
    """The policy state after ``verify=`` itself failed with ``verr`` (sync and async
    alike); :class:`CommitUnknownError` (about the COMMIT's error ``exc``) when the
    policy gives up."""
    try:
        return _retrying(pool, vstate.increment(verr))
    except Exception as final:
        raise CommitUnknownError(
            "the connection was lost while COMMIT was in flight and verify() could "
            f"not tell whether the unit landed: {type(final).__name__}: {final}",
            original=exc,
            attempts=_record(vstate, exc),
        ) from exc


def _after_verify(landed: bool, outcome: _CommitOutcome,
                  vstate: RetryPolicy) -> RetryPolicy | _Landed:
    """What ``verify=``'s answer means: the unit landed (its first result stands), or it
    is re-run under the policy."""
    if landed:
        logger.warning("verify() says the unit landed despite the lost COMMIT; not re-running")
        return _Landed(outcome.result)
    logger.warning("verify() says the unit did not land; re-running it")
    return _next_or_exhausted(vstate, outcome.error, "re-run after verify() returned False")


def _record(state: RetryPolicy, exc: BaseException) -> tuple[Any, ...]:
    """The history with the ambiguous attempt appended (no retry decision)."""
    from .retry import AttemptRecord

    info = (state.classifier or get_default_classifier()).classify(exc)
    now = state.clock()
    started = state.attempt_started_at if state.attempt_started_at is not None else now
    rec = AttemptRecord(len(state.history) + 1, exc, info.kind, info.number, 0.0, now,
                        now - started)
    return (*state.history, rec)


def _next_or_exhausted(state: RetryPolicy, exc: BaseException, why: str) -> RetryPolicy:
    # An ambiguous commit is re-run only because the caller allowed it: retry_on (which
    # may reject e.g. query timeouts) is not consulted, attempts and deadline still are.
    result = replace(state, retry_on=lambda e: True)._decide(exc, None)
    if isinstance(result, RetryExhausted):
        raise result from exc
    logger.info("%s", why)
    return replace(result, retry_on=state.retry_on)


# --------------------------------------------------------------------------- decorator, run


def transactional(
    pool: Any,
    *,
    policy: RetryPolicy | None = None,
    isolation_level: str | None = None,
    idempotent: bool = False,
    verify: Callable[[Any], bool] | None = None,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator factory: ``@transactional(pool, policy=...)`` on ``fn(conn, *args)``
    makes ``fn(*args)`` run through :func:`run_transaction` (the connection is supplied)."""
    _isolation_sql(isolation_level)  # validate now, not at the first call
    _check_policy(policy)

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            return run_transaction(
                pool,
                fn,
                *args,
                policy=policy,
                isolation_level=isolation_level,
                idempotent=idempotent,
                verify=verify,
                **kwargs,
            )

        wrapper.__wrapped_unit__ = fn  # type: ignore[attr-defined]
        return wrapper

    return decorate


def run(
    pool: Any,
    fn: Callable[..., T],
    *args: Any,
    idempotent: bool = False,
    policy: RetryPolicy | None = None,
    **kwargs: Any,
) -> T:
    """Statement-level retry outside a transaction, for idempotent work only.

    ``fn(conn, *args, **kwargs)`` runs on a pooled connection and what it did is
    committed; on a retryable error (including a lost COMMIT) it runs again on a fresh
    connection. Refused unless ``idempotent=True``: re-running non-idempotent work
    after an unknown outcome could apply it twice (use :func:`run_transaction`).
    """
    if idempotent is not True:
        raise ConfigError(
            "idempotent",
            "run() retries statements blindly and is only for idempotent work; pass "
            "idempotent=True, or use run_transaction() for a unit that must apply once",
        )
    _check_unit(fn)
    state, classifier = _start(policy)
    while True:
        try:
            with _acquire(pool, state) as conn:
                try:
                    result = fn(conn, *args, **kwargs)
                    conn.commit()
                except Exception as exc:
                    _rollback(conn, _unit_error_info(exc, classifier), classifier)
                    raise
                return result
        except Exception as exc:
            state = _failed(pool, exc, state, classifier)
        state.wait()
        state = state.begin()
