"""The TDS test server where it departed from SQL Server's documented behaviour (found by
the behaviour probes run against a real engine, tests/integration/behaviour_probes.py):
SET IMPLICIT_TRANSACTIONS ON, KILL of one's own session, a statement that ends early,
division by zero."""

from __future__ import annotations

from typing import Any

import pymssql
import pytest


def scalar(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    row = cur.fetchone()
    return row[0] if row else None


@pytest.fixture
def conn(tds_server: Any) -> Any:
    c = pymssql.connect(**tds_server.connect_kwargs(autocommit=True))
    c.cursor().execute("CREATE TABLE it (x INT)")
    yield c
    c.close()


def test_implicit_transactions_open_at_the_first_data_statement(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute("SET IMPLICIT_TRANSACTIONS ON")
    assert scalar(conn, "SELECT @@TRANCOUNT") == 0          # no table read: no transaction
    assert scalar(conn, "SELECT @@OPTIONS & 2") == 2
    cur.execute("INSERT INTO it VALUES (1)")
    assert scalar(conn, "SELECT @@TRANCOUNT") == 1
    cur.execute("INSERT INTO it VALUES (2)")                # already open: stays 1
    assert scalar(conn, "SELECT @@TRANCOUNT") == 1
    cur.execute("ROLLBACK TRAN")
    assert scalar(conn, "SELECT @@TRANCOUNT") == 0
    assert scalar(conn, "SELECT COUNT(*) FROM it") == 0      # undone; this SELECT opened one
    assert scalar(conn, "SELECT @@TRANCOUNT") == 1
    cur.execute("COMMIT TRAN")
    cur.execute("UPDATE it SET x = 3")
    cur.execute("COMMIT TRAN")
    assert scalar(conn, "SELECT @@TRANCOUNT") == 0


def test_implicit_transactions_commit_makes_it_durable(conn: Any, tds_server: Any) -> None:
    conn.cursor().execute("SET IMPLICIT_TRANSACTIONS ON")
    conn.cursor().execute("INSERT INTO it VALUES (7)")
    conn.cursor().execute("COMMIT TRAN")
    other = pymssql.connect(**tds_server.connect_kwargs(autocommit=True))
    try:
        assert scalar(other, "SELECT COUNT(*) FROM it WHERE x = 7") == 1
    finally:
        other.close()


def test_begin_tran_under_implicit_transactions_counts_two(conn: Any) -> None:
    conn.cursor().execute("SET IMPLICIT_TRANSACTIONS ON")
    conn.cursor().execute("BEGIN TRAN")
    assert scalar(conn, "SELECT @@TRANCOUNT") == 2
    conn.cursor().execute("ROLLBACK TRAN")


def test_implicit_transactions_off_again(conn: Any) -> None:
    conn.cursor().execute("SET IMPLICIT_TRANSACTIONS ON")
    conn.cursor().execute("SET IMPLICIT_TRANSACTIONS OFF")
    conn.cursor().execute("INSERT INTO it VALUES (1)")
    assert scalar(conn, "SELECT @@TRANCOUNT") == 0


def test_kill_own_session_is_refused_with_6104(conn: Any) -> None:
    with pytest.raises(pymssql.OperationalError) as info:
        conn.cursor().execute(f"KILL {scalar(conn, 'SELECT @@SPID')}")
    assert info.value.args[0] == 6104
    assert scalar(conn, "SELECT 1") == 1                     # still alive


def test_statement_ending_early_is_a_syntax_error(conn: Any) -> None:
    with pytest.raises(pymssql.Error) as info:
        conn.cursor().execute("SELECT 1 +")
    assert info.value.args[0] == 102


def test_divide_by_zero_is_8134_and_keeps_the_transaction(tds_server: Any) -> None:
    c = pymssql.connect(**tds_server.connect_kwargs())       # pymssql's BEGIN TRAN
    try:
        with pytest.raises(pymssql.OperationalError) as info:
            c.cursor().execute("SELECT 1/0")
        assert info.value.args[0] == 8134
        assert scalar(c, "SELECT @@TRANCOUNT") == 1          # a statement error only
        c.cursor().execute("SET XACT_ABORT ON")
        with pytest.raises(pymssql.OperationalError):
            c.cursor().execute("SELECT 10 / (2 - 2)")
        assert scalar(c, "SELECT @@TRANCOUNT") == 0          # XACT_ABORT: rolled back
    finally:
        c.close()


@pytest.mark.parametrize(("expr", "value"), [
    ("7 / 2", 3), ("-7 / 2", -3), ("7 / -2", -3), ("7.0 / 2", 3.5), ("NULL / 0", None),
    ("12 / 2 / 3", 2), ("1 + 6 / 3", 3),
])
def test_division_keeps_sql_server_semantics(conn: Any, expr: str, value: Any) -> None:
    assert scalar(conn, f"SELECT {expr}") == value


def test_divide_by_zero_without_arithabort_and_ansi_warnings_is_null(conn: Any) -> None:
    conn.cursor().execute("SET ARITHABORT OFF")
    conn.cursor().execute("SET ANSI_WARNINGS OFF")
    assert scalar(conn, "SELECT 1/0") is None


def test_division_by_zero_in_a_where_clause(conn: Any) -> None:
    conn.cursor().execute("INSERT INTO it VALUES (0)")
    with pytest.raises(pymssql.OperationalError) as info:
        scalar(conn, "SELECT COUNT(*) FROM it WHERE 10 / x > 1")
    assert info.value.args[0] == 8134
    assert scalar(conn, "SELECT 1") == 1          # the next statement is unaffected
