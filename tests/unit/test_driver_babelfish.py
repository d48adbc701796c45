"""Babelfish for PostgreSQL at the driver boundary: 3903 in its wording, generic 33557097.

The shapes are pymssql's (tests/unit/pymssql_shapes.py); the texts are what Babelfish
4.2 sends (seen with pymssql 2.4.6).
"""

from __future__ import annotations

from typing import Any

import pymssql
import pytest
from pymssql import _mssql
from pymssql_shapes import connect_error, db_exc, raised_in_handler

from mssql_pool._driver import extract, is_no_transaction, rollback
from mssql_pool.classify import ErrorKind, classify

DBLIB = (
    "DB-Lib error message 20018, severity 16:\n"
    "General SQL Server error: Check messages from the SQL Server\n"
)
BBF_3903 = "ROLLBACK can only be used in transaction blocks"
SQLSERVER_3903 = "The ROLLBACK TRANSACTION request has no corresponding BEGIN TRANSACTION."


def execute_error(number: int, text: str) -> Exception:
    return raised_in_handler(db_exc(number, text + DBLIB),
                             lambda e: pymssql.OperationalError(*e.args[0]))


# --------------------------------------------------------------------------- classification
@pytest.mark.parametrize(
    ("text", "number", "kind"),
    [
        ("canceling statement due to lock timeout", 1222, ErrorKind.LOCK_TIMEOUT),
        ('relation "dbo.no_such_table" does not exist', 208, ErrorKind.PROGRAMMING),
        ('column "nope" does not exist', 207, ErrorKind.PROGRAMMING),
        ('syntax error at or near "SELEC"', 102, ErrorKind.PROGRAMMING),
        ("syntax error near '+' at line 1 and character position 9", 102, ErrorKind.PROGRAMMING),
        ("procedure sp_reset_connection() does not exist", 2812, ErrorKind.PROGRAMMING),
        ("deadlock detected", 1205, ErrorKind.DEADLOCK),
    ],
)
def test_generic_number_is_read_from_its_text(text: str, number: int, kind: ErrorKind) -> None:
    info = classify(execute_error(33557097, text))
    assert info.number == number
    assert 33557097 in info.numbers          # the server's own number is kept
    assert info.kind is kind


def test_shutting_down_at_login_is_transient_like_40613() -> None:
    exc = connect_error(
        33557097, "the database system is shutting down" + DBLIB
        + "DB-Lib error message 20002, severity 9:\nAdaptive Server connection failed\n"
    )
    info = classify(exc)
    assert info.number == 40613
    assert info.retryable


def test_login_keeps_other_texts_out() -> None:
    """At login only the server-state texts count: pymssql's number there may be stale."""
    exc = connect_error(18456, "Login failed for user 'x'. relation \"t\" does not exist" + DBLIB)
    assert classify(exc).number == 18456


@pytest.mark.parametrize(
    "number", [50000, 208, 245]   # a user's RAISERROR text, real SQL Server numbers
)
def test_sql_server_errors_are_not_reinterpreted(number: int) -> None:
    """The texts are read only under Babelfish's generic number: SQL Server is unchanged."""
    info = classify(execute_error(number, "canceling statement due to lock timeout"))
    assert info.number == number
    assert info.kind is not ErrorKind.LOCK_TIMEOUT or number == 1222


def test_babelfish_3903_is_recognised() -> None:
    assert is_no_transaction(db_exc(3903, BBF_3903 + DBLIB))
    assert is_no_transaction(db_exc(3903, SQLSERVER_3903 + DBLIB))
    assert not is_no_transaction(db_exc(1205, "deadlock" + DBLIB))
    assert extract(db_exc(3903, BBF_3903 + DBLIB)).number == 3903


# --------------------------------------------------------------------------- rollback()
class _Inner:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def execute_non_query(self, sql: str) -> None:
        self.sent.append(sql)


class _Raw:
    """pymssql's connection as far as rollback() is concerned."""

    def __init__(self, error: BaseException | None, autocommit: bool = False) -> None:
        self._conn = _Inner()
        self.autocommit_state = autocommit
        self.error = error

    def rollback(self) -> None:
        if self.error is not None:
            raise self.error


def test_rollback_with_nothing_to_roll_back_reopens_pymssqls_transaction() -> None:
    raw = _Raw(db_exc(3903, BBF_3903 + DBLIB))
    rollback(raw)
    assert raw._conn.sent == ["BEGIN TRAN"]


def test_rollback_in_autocommit_mode_opens_nothing() -> None:
    raw = _Raw(db_exc(3903, BBF_3903 + DBLIB), autocommit=True)
    rollback(raw)
    assert raw._conn.sent == []


def test_rollback_success_sends_nothing_more() -> None:
    raw = _Raw(None)
    rollback(raw)
    assert raw._conn.sent == []


@pytest.mark.parametrize(
    "error",
    [
        db_exc(1205, "Transaction was deadlocked" + DBLIB),
        _mssql.MSSQLDriverException("Not connected to any MS SQL server"),
        db_exc(3903, "DB-Lib error message 20047, severity 9:\nDBPROCESS is dead\n"),
    ],
)
def test_rollback_other_errors_propagate(error: BaseException) -> None:
    raw = _Raw(error)
    with pytest.raises(type(error)):
        rollback(raw)
    assert raw._conn.sent == []


def test_rollback_through_a_proxy_uses_its_raw_connection() -> None:
    raw = _Raw(None)

    class Proxy:
        def __init__(self) -> None:
            self.raw = raw

        def rollback(self) -> Any:
            raise db_exc(3903, BBF_3903 + DBLIB)

    rollback(Proxy())
    assert raw._conn.sent == ["BEGIN TRAN"]
