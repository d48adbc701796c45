"""Classification facts that user rules cannot change, fatal severities, and whose error
an exception is (the driver's or the application's)."""

from __future__ import annotations

from typing import Any

import pymssql
import pytest
from fakedb import FakeClock

from mssql_pool.classify import (
    Classifier,
    ErrorKind,
    classify,
    from_driver,
    mark_driver_error,
)
from mssql_pool.errors import PoolTimeout
from mssql_pool.retry import FixedBackoff, RetryPolicy
from mssql_pool.transaction import commit_outcome_unknown, run_transaction


def execute_error(number: int, text: str, severity: int) -> pymssql.OperationalError:
    """What cursor.execute() raises, with the message's severity."""
    err = pymssql.OperationalError(number, text.encode())
    err.severity = severity  # type: ignore[attr-defined]
    return err


DEAD = "DB-Lib error message 20047, severity 9:\nDBPROCESS is dead or not enabled\n"


@pytest.mark.parametrize("number", [50000, 208, 18456, 8134, 999999])
@pytest.mark.parametrize("severity", [20, 21, 24])
def test_fatal_severity_is_a_disconnect_whatever_the_number(number: int, severity: int) -> None:
    info = classify(execute_error(number, "the session ends", severity))
    assert info.kind is ErrorKind.DISCONNECT
    assert info.retryable and info.connection_dead


def test_severity_19_is_not_a_disconnect() -> None:
    info = classify(execute_error(50000, "bad", 19))
    assert info.kind is ErrorKind.OTHER and not info.connection_dead


def test_retryable_kinds_keep_their_kind_at_fatal_severity() -> None:
    info = classify(execute_error(40501, "The service is currently busy.", 20))
    assert info.kind is ErrorKind.THROTTLED and info.connection_dead


def test_a_user_rule_decides_the_kind_never_whether_the_connection_died() -> None:
    err = pymssql.OperationalError(20047, DEAD.encode())
    mine = Classifier().with_exception(pymssql.OperationalError, retryable=False)
    info = mine.classify(err)
    assert info.kind is ErrorKind.OTHER
    assert info.connection_dead
    assert mine.with_exception(pymssql.OperationalError,
                               retryable=True).classify(err).connection_dead


def test_the_ambiguous_commit_rule_ignores_user_rules() -> None:
    lost = pymssql.OperationalError(20047, DEAD.encode())
    assert commit_outcome_unknown(lost)
    refused = execute_error(3902, "The COMMIT TRANSACTION request has no corresponding BEGIN "
                            "TRANSACTION.", 16)
    assert not commit_outcome_unknown(refused)
    assert commit_outcome_unknown(ValueError("not from any driver"))


@pytest.mark.parametrize("exc", [OSError(5, "disk"), FileNotFoundError("x"), TimeoutError("t"),
                                 ConnectionResetError("r"), RuntimeError("Error 1205")])
def test_the_applications_own_exceptions_are_not_the_drivers(exc: Exception) -> None:
    assert not from_driver(exc)


def test_driver_and_pool_errors_and_what_wraps_them_are_the_drivers() -> None:
    assert from_driver(pymssql.OperationalError(20047, DEAD.encode()))
    assert from_driver(pymssql.InterfaceError("Not connected to any MS SQL server"))
    assert from_driver(PoolTimeout("no connection"))
    try:
        try:
            raise pymssql.OperationalError(1205, b"deadlocked")
        except pymssql.Error as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as wrapped:
        assert from_driver(wrapped)
    sock = ConnectionResetError("from a driver's socket")
    mark_driver_error(sock)      # what the pool's proxy does with every error it passes on
    assert from_driver(sock)


# ------------------------------------------------------------------ run_transaction, fake pool


class _Conn:
    def __init__(self) -> None:
        self.rolled_back = 0
        self.invalidated: str | None = None

    def cursor(self) -> Any:
        raise AssertionError("not used")

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        self.rolled_back += 1

    def invalidate(self, reason: str | None = None) -> None:
        self.invalidated = reason

    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Pool:
    def __init__(self) -> None:
        self.conns: list[_Conn] = []

    def connection(self, timeout: float | None = None) -> _Conn:
        self.conns.append(_Conn())
        return self.conns[-1]


def _policy(**kw: Any) -> RetryPolicy:
    clock = FakeClock(0.0)
    return RetryPolicy(backoff=FixedBackoff(0.01), clock=clock, sleep=clock.sleep,
                       max_attempts=5, **kw)


@pytest.mark.parametrize("error", [OSError(5, "disk"), FileNotFoundError("x.csv"),
                                   TimeoutError("api"), ConnectionResetError("api")])
def test_run_transaction_hands_the_applications_error_back_after_one_rollback(
        error: Exception) -> None:
    pool = _Pool()
    calls = []

    def unit(conn: Any) -> None:
        calls.append(conn)
        raise error

    with pytest.raises(type(error)) as ei:
        run_transaction(pool, unit, policy=_policy())
    assert ei.value is error and len(calls) == 1
    assert pool.conns[0].rolled_back == 1 and pool.conns[0].invalidated is None


def test_a_user_rule_still_retries_the_applications_own_exception() -> None:
    pool = _Pool()
    calls = []

    def unit(conn: Any) -> str:
        calls.append(conn)
        if len(calls) < 3:
            raise TimeoutError("the payment API timed out")
        return "paid"

    mine = Classifier().with_exception(TimeoutError, retryable=True)
    policy = _policy(classifier=mine, retry_on=lambda e: mine.classify(e).retryable)
    assert run_transaction(pool, unit, policy=policy) == "paid"
    assert len(calls) == 3
    assert all(c.invalidated is None for c in pool.conns)
