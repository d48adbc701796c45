"""The TDS test server where it departed from SQL Server's documented behaviour (found by
the behaviour probes run against a real engine, tests/integration/behaviour_probes.py):
SET IMPLICIT_TRANSACTIONS ON, KILL of one's own session, a statement that ends early."""

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
