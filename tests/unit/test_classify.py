"""Classification of SQL Server / pymssql / socket errors, in the shapes pymssql raises them
(docs/retries.md, "pymssql's shapes and quirks")."""

from __future__ import annotations

import pickle
import socket

import pymssql
import pytest
from pymssql import _mssql
from pymssql_shapes import connect_error, db_exc, raised_in_handler

from mssql_pool import classify as C
from mssql_pool.classify import (
    AUTH_NUMBERS,
    AZURE_TRANSIENT,
    DISCONNECT_NUMBERS,
    EFCORE_TRANSIENT,
    MEANINGS,
    PROGRAMMING_NUMBERS,
    SQLCLIENT_TRANSIENT,
    THROTTLED_NUMBERS,
    Classifier,
    ErrorKind,
    classify,
    is_disconnect,
    retry_if_exception_type,
    retry_if_kind,
    retry_if_number,
    retry_if_retryable,
    retry_never,
)
from mssql_pool.errors import CircuitOpenError, ConfigError, PoolTimeout, RetryExhausted

DBLIB_20018 = (
    "DB-Lib error message 20018, severity 13:\n"
    "General SQL Server error: Check messages from the SQL Server\n"
)


# --------------------------------------------------------------------------- shape builders
def execute_error(number: int, text: str, cls: type[Exception] = pymssql.OperationalError):
    """cursor.execute(): args[0] number, args[1] bytes; __context__ the _mssql error."""
    return raised_in_handler(db_exc(number, text + DBLIB_20018), lambda e: cls(*e.args[0]))


def commit_error(number: int, text: str) -> Exception:
    """conn.commit(): a string; the number only on __context__.number."""
    return raised_in_handler(
        db_exc(number, text),
        lambda e: pymssql.OperationalError("Cannot commit transaction: " + str(e.args[0])),
    )


def test_shapes_are_what_facts_say() -> None:
    e = execute_error(1205, "deadlocked")
    assert isinstance(e.args[0], int) and isinstance(e.args[1], bytes)
    assert isinstance(e.__context__, _mssql.MSSQLDatabaseException)
    c = connect_error(18456, "Login failed for user 'x'.")
    assert isinstance(c.args[0], tuple)
    m = commit_error(1205, "x")
    assert isinstance(m.args[0], str) and m.__context__ is not None


# --------------------------------------------------------------------------- tables
def test_tables_are_documented_frozensets() -> None:
    for table in (SQLCLIENT_TRANSIENT, AZURE_TRANSIENT, EFCORE_TRANSIENT, DISCONNECT_NUMBERS,
                  AUTH_NUMBERS, PROGRAMMING_NUMBERS, THROTTLED_NUMBERS):
        assert isinstance(table, frozenset)
    everything = (SQLCLIENT_TRANSIENT | AZURE_TRANSIENT | EFCORE_TRANSIENT | DISCONNECT_NUMBERS
                  | AUTH_NUMBERS | PROGRAMMING_NUMBERS)
    for n in everything:
        assert MEANINGS[n], n


def test_sqlclient_list_matches_facts() -> None:
    assert SQLCLIENT_TRANSIENT == {233, 997, 1204, 1205, 1222, 4060, 4221, 10060, 10928, 10929,
                                   40143, 40197, 40501, 40540, 40613, 42108, 42109, 49918,
                                   49919, 49920}
    assert AZURE_TRANSIENT == SQLCLIENT_TRANSIENT | {615, 926}
    assert {20, 64, 121, 10053, 10054, 41301, 41302, 41305, 41325, 41839} <= EFCORE_TRANSIENT


@pytest.mark.parametrize("number", sorted(SQLCLIENT_TRANSIENT | AZURE_TRANSIENT | EFCORE_TRANSIENT))
def test_every_transient_number_is_retryable(number: int) -> None:
    info = classify(execute_error(number, "some message"))
    assert info.number == number
    assert info.retryable, info


@pytest.mark.parametrize(
    "number,kind",
    [
        (1205, ErrorKind.DEADLOCK),
        (1222, ErrorKind.LOCK_TIMEOUT),
        (40501, ErrorKind.THROTTLED),
        (10928, ErrorKind.THROTTLED),
        (10929, ErrorKind.THROTTLED),
        (40613, ErrorKind.TRANSIENT),
        (4060, ErrorKind.TRANSIENT),
        (233, ErrorKind.DISCONNECT),
        (596, ErrorKind.DISCONNECT),
        (10053, ErrorKind.DISCONNECT),
        (10054, ErrorKind.DISCONNECT),
        (18456, ErrorKind.AUTH),
        (102, ErrorKind.PROGRAMMING),
        (207, ErrorKind.PROGRAMMING),
        (208, ErrorKind.PROGRAMMING),
        (2812, ErrorKind.PROGRAMMING),
        (4104, ErrorKind.PROGRAMMING),
        (2627, ErrorKind.OTHER),
        (547, ErrorKind.OTHER),
        (50000, ErrorKind.OTHER),
    ],
)
def test_kinds(number: int, kind: ErrorKind) -> None:
    info = classify(execute_error(number, "message"))
    assert info.kind is kind
    assert info.number == number
    assert info.retryable == (kind in {ErrorKind.TRANSIENT, ErrorKind.DEADLOCK,
                                       ErrorKind.LOCK_TIMEOUT, ErrorKind.THROTTLED,
                                       ErrorKind.DISCONNECT})


def test_kind_values_are_lowercase_strings() -> None:
    assert ErrorKind.LOCK_TIMEOUT == "lock_timeout"
    assert {k.value for k in ErrorKind} == {
        "transient", "deadlock", "lock_timeout", "throttled", "disconnect", "auth",
        "programming", "query_timeout", "other"}


def test_programming_and_integrity_error_classes() -> None:
    assert classify(execute_error(208, "Invalid object name 'x'.",
                                  pymssql.ProgrammingError)).kind is ErrorKind.PROGRAMMING
    info = classify(execute_error(2627, "Violation of PRIMARY KEY", pymssql.IntegrityError))
    assert info.kind is ErrorKind.OTHER and not info.retryable and not info.connection_dead


# --------------------------------------------------------------------------- hints
@pytest.mark.parametrize("number,delay", [(40501, 10.0), (10928, 5.0), (10929, 5.0), (1205, 0.0)])
def test_min_delay_hints(number: int, delay: float) -> None:
    assert classify(execute_error(number, "busy")).min_delay == delay


# --------------------------------------------------------------------------- disconnects
@pytest.mark.parametrize("number", [20002, 20004, 20006, 20009, 20017, 20047])
def test_dblib_dead_numbers(number: int) -> None:
    text = f"DB-Lib error message {number}, severity 9:\nsomething\n"
    e = pymssql.OperationalError(number, text.encode())
    info = classify(e)
    assert info.kind is ErrorKind.DISCONNECT
    assert info.connection_dead and is_disconnect(e)
    assert info.retryable


def test_query_timeout_20047_with_20003_in_text() -> None:
    text = (b"DB-Lib error message 20003, severity 6:\nAdaptive Server connection timed out\n"
            b"DB-Lib error message 20047, severity 9:\nDBPROCESS is dead or not enabled\n")
    e = pymssql.OperationalError(20047, text)
    info = classify(e)
    assert info.kind is ErrorKind.QUERY_TIMEOUT
    assert info.connection_dead
    assert not info.retryable
    assert 20003 in info.numbers and 20047 in info.numbers


def test_query_timeout_20003() -> None:
    e = pymssql.OperationalError(
        20003, b"DB-Lib error message 20003, severity 6:\nAdaptive Server connection timed out\n")
    info = classify(e)
    assert info.kind is ErrorKind.QUERY_TIMEOUT and info.connection_dead


def test_severity_20_kills_the_connection() -> None:
    # 40501 at class 20: throttled (retryable, 10 s) and the session is gone.
    err = raised_in_handler(
        db_exc(40501, "The service is currently busy."),
        lambda e: pymssql.OperationalError(40501, b"The service is currently busy."),
    )
    err.severity = 20  # type: ignore[attr-defined]
    info = classify(err)
    assert info.kind is ErrorKind.THROTTLED
    assert info.severity == 20
    assert info.connection_dead
    assert info.min_delay == 10.0


def test_interface_error_not_connected() -> None:
    e = pymssql.InterfaceError("Not connected to any MS SQL server")
    info = classify(e)
    assert info.kind is ErrorKind.DISCONNECT and info.connection_dead


def test_interface_error_connection_closed() -> None:
    assert is_disconnect(pymssql.InterfaceError("Connection is closed."))


def test_driver_exception_is_not_a_pymssql_error_but_is_classified() -> None:
    e = _mssql.MSSQLDriverException("Not connected to any MS SQL server")
    assert not isinstance(e, pymssql.Error)
    info = classify(e)
    assert info.kind is ErrorKind.DISCONNECT and info.connection_dead


def test_driver_exception_during_connect_setup_is_dead() -> None:
    # the session was killed while pymssql sent its SET batch (seen)
    for text in ("Could not set connection properties",
                 "Connection to the database failed for an unknown reason."):
        info = classify(_mssql.MSSQLDriverException(text))
        assert info.kind is ErrorKind.DISCONNECT and info.retryable


def test_driver_exception_on_bad_parameter_is_not_dead() -> None:
    e = _mssql.MSSQLDriverException("Unable to determine database type from python x type")
    info = classify(e)
    assert not info.connection_dead and not info.retryable


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(104, "Connection reset by peer"),
        BrokenPipeError(32, "Broken pipe"),
        ConnectionRefusedError(111, "Connection refused"),
        OSError(113, "No route to host"),
        socket.gaierror(-2, "Name or service not known"),
    ],
)
def test_socket_errors_are_disconnects(exc: BaseException) -> None:
    info = classify(exc)
    assert info.kind is ErrorKind.DISCONNECT and info.connection_dead and info.retryable


def test_socket_timeout_is_a_timeout() -> None:
    sock_timeout = socket.timeout  # noqa: UP041 - the alias pymssql-era code raises
    for exc in (TimeoutError("timed out"), sock_timeout("timed out")):
        info = classify(exc)
        assert info.kind is ErrorKind.QUERY_TIMEOUT and info.connection_dead


def test_our_own_errors_are_not_driver_faults() -> None:
    for exc in (PoolTimeout("x"), RetryExhausted("x")):
        info = classify(exc)
        assert info.kind is ErrorKind.OTHER and not info.connection_dead


def test_open_circuit_is_retryable_after_the_next_probe() -> None:
    info = classify(CircuitOpenError("open", retry_at=12.0, retry_in=1.5))
    assert info.kind is ErrorKind.TRANSIENT and info.retryable
    assert info.min_delay == 1.5 and not info.connection_dead


def test_plain_exceptions_are_other() -> None:
    for exc in (ValueError("x"), KeyError("k"), RuntimeError("Error 1205 in my own code?")):
        assert not classify(exc).retryable


# --------------------------------------------------------------------------- connect quirks
def test_connect_shape_reads_number_when_server_message_present() -> None:
    e = connect_error(
        18456,
        "Login failed for user 'app'.DB-Lib error message 20018, severity 14:\n"
        "General SQL Server error: Check messages from the SQL Server\n"
        "DB-Lib error message 20002, severity 9:\nAdaptive Server connection failed\n",
    )
    info = classify(e)
    assert info.kind is ErrorKind.AUTH
    assert info.number == 18456
    assert not info.retryable


def test_connect_40613_is_transient() -> None:
    e = connect_error(40613, "Database 'db' on server 'srv' is not currently available. "
                             "Please retry the connection later.DB-Lib error message 20002, "
                             "severity 9:\nAdaptive Server connection failed\n")
    info = classify(e)
    assert info.kind is ErrorKind.TRANSIENT and info.number == 40613


def test_connect_stale_number_is_ignored_without_server_message() -> None:
    # A refused connection after an earlier 18456: args[0][0] still says 18456.
    e = connect_error(18456, "DB-Lib error message 20009, severity 9:\nUnable to connect: Adaptive "
                             "Server is unavailable or does not exist (127.0.0.1)\nNet-Lib error "
                             "during Connection refused (111)\n")
    info = classify(e)
    assert 18456 not in info.numbers
    assert info.number == 20009
    assert info.kind is ErrorKind.DISCONNECT and info.retryable


def test_connect_failure_whose_messages_were_lost_is_retried() -> None:
    # pymssql shares one message buffer between threads: of 200 refused logins from 8
    # threads at once, 20 said only this (and the number may be stale: 20047 seen).
    info = classify(connect_error(20047, "Unknown error"))
    assert 20047 not in info.numbers
    assert info.kind is ErrorKind.DISCONNECT and info.retryable


def lost_login(stale: int, severity: int) -> Exception:
    """A login failure whose server message pymssql dropped (seen after a severe one)."""
    return connect_error(
        stale,
        f"DB-Lib error message 20018, severity {severity}:\nGeneral SQL Server error: Check "
        "messages from the SQL Server\nDB-Lib error message 20002, severity 9:\n"
        "Adaptive Server connection failed (127.0.0.1)\n",
    )


def test_connect_lost_message_of_class_14_is_still_auth() -> None:
    # After one 40613 a wrong password shows only 20018/20002 and the stale 40613; the
    # 20018 line still carries the lost message's class: 14, security errors.
    info = classify(lost_login(40613, 14))
    assert 40613 not in info.numbers
    assert set(info.numbers) == {20018, 20002}
    assert info.kind is ErrorKind.AUTH and info.severity == 14
    assert not info.retryable


def test_connect_lost_message_of_other_class_is_retried() -> None:
    # after an 18456, a 4060 (class 11) is lost the same way: retried, never taken as auth
    info = classify(lost_login(18456, 11))
    assert 18456 not in info.numbers
    assert info.kind is ErrorKind.DISCONNECT and info.retryable


def test_connect_numbers_from_sql_server_message_pattern() -> None:
    e = connect_error(0, "SQL Server message 4060, severity 11, state 1:\nCannot open database")
    assert classify(e).number == 4060
    e2 = pymssql.OperationalError("Msg 1205, Level 13, State 51, Line 1 deadlock")
    assert classify(e2).kind is ErrorKind.DEADLOCK


def test_commit_shape_number_from_context() -> None:
    e = commit_error(1205, "Transaction was deadlocked on lock resources with another process")
    info = classify(e)
    assert info.kind is ErrorKind.DEADLOCK and info.number == 1205
    assert "Cannot commit transaction" in info.message


def test_commit_shape_dead_connection() -> None:
    e = commit_error(
        20047, "DB-Lib error message 20047, severity 9:\nDBPROCESS is dead or not enabled\n"
    )
    info = classify(e)
    assert info.connection_dead and info.kind is ErrorKind.DISCONNECT


def test_known_text_fallback_when_no_number() -> None:
    assert classify(pymssql.OperationalError("Login failed for user 'sa'.")).kind is ErrorKind.AUTH


def test_sqlalchemy_style_orig_is_followed() -> None:
    class DBAPIError(Exception):
        def __init__(self, orig: BaseException) -> None:
            super().__init__(str(orig))
            self.orig = orig

    info = classify(DBAPIError(execute_error(1205, "deadlocked")))
    assert info.kind is ErrorKind.DEADLOCK


def test_python_tds_errors() -> None:
    import pytds.tds_base as tb

    e = tb.OperationalError("Transaction was deadlocked")
    e.msg_no = 1205  # type: ignore[attr-defined]
    e.number = 1205  # type: ignore[attr-defined]
    e.severity = 13  # type: ignore[attr-defined]
    assert classify(e).kind is ErrorKind.DEADLOCK
    closed = tb.ClosedConnectionError()
    assert classify(closed).connection_dead
    to = tb.TimeoutError("Timeout")
    assert classify(to).kind is ErrorKind.QUERY_TIMEOUT


def test_message_is_short_and_redacted() -> None:
    e = pymssql.OperationalError(50000, ("password=hunter2 " + "x" * 1000).encode())
    info = classify(e)
    assert "hunter2" not in info.message
    assert len(info.message) <= 240


def test_errorinfo_is_frozen_and_picklable() -> None:
    info = classify(execute_error(1205, "deadlocked"))
    with pytest.raises(AttributeError):
        info.kind = ErrorKind.OTHER  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(info)) == info
    assert "deadlock 1205" in info.describe()


# --------------------------------------------------------------------------- customisation
def test_classifier_with_transient_and_without() -> None:
    c = Classifier().with_transient(50001)
    assert c.classify(execute_error(50001, "custom")).kind is ErrorKind.TRANSIENT
    c2 = c.without(1205)
    assert c2.classify(execute_error(1205, "x")).kind is ErrorKind.OTHER
    # the default is untouched (immutable)
    assert classify(execute_error(1205, "x")).kind is ErrorKind.DEADLOCK
    assert classify(execute_error(50001, "x")).kind is ErrorKind.OTHER


def test_classifier_with_kind_and_min_delay() -> None:
    c = Classifier().with_kind("throttled", 50002).with_min_delay(50002, 3.0)
    info = c.classify(execute_error(50002, "slow down"))
    assert info.kind is ErrorKind.THROTTLED and info.min_delay == 3.0
    with pytest.raises(ConfigError):
        Classifier().with_min_delay(1, -1)
    with pytest.raises(ConfigError):
        Classifier().with_transient("1205")  # type: ignore[arg-type]


def test_user_exception_types() -> None:
    class Flaky(Exception):
        pass

    class Fatal(Exception):
        pass

    c = Classifier().with_exception(Flaky, retryable=True).with_exception(Fatal, retryable=False)
    assert c.classify(Flaky()).retryable
    assert not c.classify(Fatal()).retryable
    # a user rule can even override a driver error's classification
    c2 = Classifier().with_exception(pymssql.OperationalError, ErrorKind.OTHER)
    assert not c2.classify(execute_error(1205, "x")).retryable
    with pytest.raises(ConfigError):
        Classifier().with_exception(Flaky)


def test_default_classifier_can_be_swapped() -> None:
    old = C.set_default_classifier(Classifier().with_transient(50003))
    try:
        assert classify(execute_error(50003, "x")).retryable
    finally:
        C.set_default_classifier(old)
    assert not classify(execute_error(50003, "x")).retryable


# --------------------------------------------------------------------------- predicates
def test_predicates_compose() -> None:
    deadlock = execute_error(1205, "x")
    timeout = pymssql.OperationalError(20003, b"DB-Lib error message 20003: timed out")
    syntax = execute_error(102, "Incorrect syntax")
    p = retry_if_kind(ErrorKind.DEADLOCK) | retry_if_kind("query_timeout")
    assert p(deadlock) and p(timeout) and not p(syntax)
    q = retry_if_retryable & ~retry_if_number(1205)
    assert not q(deadlock)
    assert q(execute_error(40613, "x"))
    assert not retry_never(deadlock)
    t = retry_if_exception_type(KeyError) | (lambda e: isinstance(e, ValueError))
    assert t(KeyError()) and t(ValueError()) and not t(TypeError())
    assert "deadlock" in repr(p)
