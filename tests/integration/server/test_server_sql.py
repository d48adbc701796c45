"""SQL Server semantics of the TDS test server seen through real pymssql."""

from __future__ import annotations

import datetime as dt
import decimal

import pymssql
import pytest
from tds_client import committed, connect, scalar

from mssql_pool.testing import TdsServer

pytestmark = pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["7.0", "7.1", "7.2", "7.3", "7.4"])
def test_every_tds_version_selects(tds_server: TdsServer, version: str) -> None:
    conn = connect(tds_server, tds_version=version)
    cur = conn.cursor()
    cur.execute("SELECT 1 AS one, N'héllo' AS s, CAST(NULL AS INT) AS n, 2.5 AS f")
    assert cur.fetchall() == [(1, "héllo", None, 2.5)]
    cur.execute("CREATE TABLE t (id INT, name NVARCHAR(20))")
    cur.executemany("INSERT INTO t VALUES (%d, %s)", [(i, f"n{i}") for i in range(300)])
    assert cur.rowcount >= 1
    cur.execute("SELECT id, name FROM t ORDER BY id")
    rows = cur.fetchall()
    assert len(rows) == 300 and rows[299] == (299, "n299")
    conn.rollback()
    conn.close()


@pytest.mark.parametrize("version", ["7.1", "7.2", "7.4"])
def test_types_round_trip(tds_server: TdsServer, version: str) -> None:
    conn = connect(tds_server, tds_version=version)
    cur = conn.cursor()
    cur.execute(
        "CREATE TABLE ty (id INT IDENTITY(1,1) PRIMARY KEY, b BIT, i INT, bi BIGINT, f FLOAT, "
        "d DECIMAL(12, 3), s NVARCHAR(40), vs VARCHAR(40), m NVARCHAR(max), dtm DATETIME, "
        "dt2 DATETIME2, vb VARBINARY(64), vbm VARBINARY(max))"
    )
    big = "x" * 20000
    values = (True, -7, 2**40, 3.25, decimal.Decimal("1234.567"), "ünïcode", "plain", big,
              dt.datetime(2024, 2, 29, 12, 30, 45, 500000),
              dt.datetime(2023, 1, 2, 3, 4, 5, 123000),
              b"\x00\xffbin", b"\x01" * 9000)
    cur.execute("INSERT INTO ty (b, i, bi, f, d, s, vs, m, dtm, dt2, vb, vbm) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", values)
    cur.execute("INSERT INTO ty (b) VALUES (NULL)")
    cur.execute("SELECT b, i, bi, f, d, s, vs, m, dtm, dt2, vb, vbm FROM ty ORDER BY id")
    got, nulls = cur.fetchall()
    assert got[0] is True and got[1] == -7 and got[2] == 2**40 and got[3] == 3.25
    assert got[4] == decimal.Decimal("1234.567")
    assert got[5:8] == ("ünïcode", "plain", big)
    assert got[8] == dt.datetime(2024, 2, 29, 12, 30, 45, 500000)
    assert got[9] == dt.datetime(2023, 1, 2, 3, 4, 5, 123000)
    assert got[10] == b"\x00\xffbin" and got[11] == b"\x01" * 9000
    assert nulls == (None,) * 12
    cur.execute("SELECT CAST('test max support' AS NVARCHAR(max))")
    assert cur.fetchone()[0] == "test max support"


def test_transaction_rollback_undoes_rows(tds_server: TdsServer) -> None:
    conn, cur = committed(tds_server, "CREATE TABLE r (id INT)")
    cur.execute("INSERT INTO r VALUES (1)")
    other = connect(tds_server, autocommit=True).cursor()
    conn.rollback()
    assert scalar(cur, "SELECT COUNT(*) FROM r") == 0
    cur.execute("INSERT INTO r VALUES (2)")
    conn.commit()
    assert scalar(other, "SELECT COUNT(*) FROM r") == 1


def test_trancount_nesting(tds_server: TdsServer) -> None:
    conn = connect(tds_server, autocommit=True)
    cur = conn.cursor()
    cur.execute("CREATE TABLE n (id INT)")
    assert scalar(cur, "SELECT @@TRANCOUNT") == 0
    cur.execute("BEGIN TRAN")
    cur.execute("BEGIN TRANSACTION")
    assert scalar(cur, "SELECT @@TRANCOUNT") == 2
    cur.execute("INSERT INTO n VALUES (1)")
    cur.execute("COMMIT")
    assert scalar(cur, "SELECT @@TRANCOUNT") == 1
    cur.execute("ROLLBACK")
    assert scalar(cur, "SELECT @@TRANCOUNT") == 0
    assert scalar(cur, "SELECT COUNT(*) FROM n") == 0  # the inner COMMIT committed nothing
    with pytest.raises(pymssql.OperationalError) as info:
        cur.execute("COMMIT TRAN")
    assert info.value.args[0] == 3902
    cur.execute("BEGIN TRAN; INSERT INTO n VALUES (1); SAVE TRAN s1; INSERT INTO n VALUES (2); "
                "ROLLBACK TRAN s1; COMMIT")
    assert scalar(cur, "SELECT COUNT(*) FROM n") == 1


def test_temp_tables_are_private_and_dropped_on_close(tds_server: TdsServer) -> None:
    a = connect(tds_server, autocommit=True).cursor()
    b = connect(tds_server, autocommit=True).cursor()
    a.execute("CREATE TABLE #work (v INT)")
    a.execute("INSERT INTO #work VALUES (1)")
    assert scalar(a, "SELECT COUNT(*) FROM #work") == 1
    with pytest.raises(pymssql.ProgrammingError) as info:
        b.execute("SELECT * FROM #work")
    assert info.value.args[0] == 208 and b"#work" in info.value.args[1]
    b.execute("CREATE TABLE #work (v INT)")
    assert scalar(b, "SELECT COUNT(*) FROM #work") == 0
    assert scalar(a, "SELECT CASE WHEN OBJECT_ID('tempdb..#work') IS NULL THEN 0 ELSE 1 END") == 1


def _reset(conn: pymssql.Connection) -> None:
    conn._conn.init_procedure("sp_reset_connection").execute()


def test_sp_reset_connection(tds_server: TdsServer) -> None:
    tds_server._engine.add_database("other")
    conn, cur = committed(tds_server, "CREATE TABLE keep (id INT)")
    cur.execute("INSERT INTO keep VALUES (1)")
    cur.execute("CREATE TABLE #tmp (v INT)")
    cur.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    cur.execute("SET NOCOUNT ON")
    cur.execute("SET CONTEXT_INFO 0x0102")
    cur.execute("EXEC sp_set_session_context N'tenant', N'acme'")
    assert scalar(cur, "SELECT SESSION_CONTEXT(N'tenant')") == "acme"
    cur.execute("USE other")
    assert scalar(cur, "SELECT DB_NAME()") == "other"
    assert scalar(cur, "SELECT @@OPTIONS") & 512
    _reset(conn)
    assert scalar(cur, "SELECT @@TRANCOUNT") == 0
    assert scalar(cur, "SELECT DB_NAME()") == "master"
    assert scalar(cur, "SELECT COUNT(*) FROM keep") == 0  # the open transaction was aborted
    with pytest.raises(pymssql.ProgrammingError):
        cur.execute("SELECT * FROM #tmp")
    assert scalar(cur, "SELECT CONTEXT_INFO()") is None
    assert scalar(cur, "SELECT SESSION_CONTEXT(N'tenant')") is None
    assert not scalar(cur, "SELECT @@OPTIONS") & 512
    iso = scalar(cur, "SELECT transaction_isolation_level FROM sys.dm_exec_sessions "
                      "WHERE session_id = @@SPID")
    assert iso == 4  # kept, as SQL Server keeps it


def test_session_functions_and_control_flow(tds_server: TdsServer) -> None:
    conn = connect(tds_server, autocommit=True)
    cur = conn.cursor()
    assert scalar(cur, "SELECT SCHEMA_NAME()") == "dbo"
    assert scalar(cur, "SELECT SERVERPROPERTY('ProductVersion')").startswith("16.")
    assert scalar(cur, "SELECT @@SPID") == tds_server.sessions()[0]["spid"]
    cur.execute("DECLARE @x INT = 5; SET @x = @x + 1; IF @x > 5 SELECT 'big' ELSE SELECT 'small'")
    assert cur.fetchone()[0] == "big"
    cur.execute("IF EXISTS (SELECT 1) BEGIN SELECT 1 AS a; SELECT 2 AS b END")
    assert cur.fetchall() == [(1,)]
    assert cur.nextset() and cur.fetchall() == [(2,)]
    cur.execute("WAITFOR DELAY '00:00:00.05'; PRINT 'hello'; SELECT 3")
    assert cur.fetchone()[0] == 3
    with pytest.raises(pymssql.OperationalError) as info:
        cur.execute("RAISERROR('bad %s', 16, 1, 'thing')")
    assert info.value.args[0] == 50000 and b"bad thing" in info.value.args[1]
    with pytest.raises(pymssql.OperationalError) as info:
        cur.execute("THROW 51000, 'thrown', 1")
    assert info.value.args[0] == 51000
    cur.execute("BEGIN TRY THROW 51001, 'x', 1 END TRY BEGIN CATCH SELECT ERROR_NUMBER() END CATCH")
    assert cur.fetchone()[0] == 51001
    assert "Microsoft SQL Server" in scalar(cur, "SELECT @@VERSION")


def test_errors_have_sql_server_numbers(tds_server: TdsServer) -> None:
    conn = connect(tds_server, autocommit=True)
    cur = conn.cursor()
    cases = [("SELECT * FROM missing_table", 208, "Invalid object name 'missing_table'."),
             ("EXEC no_such_proc", 2812, "Could not find stored procedure 'no_such_proc'."),
             ("SELEC 1", 102, "Incorrect syntax near")]
    for sql, number, text in cases:
        with pytest.raises(pymssql.ProgrammingError) as info:
            cur.execute(sql)
        assert info.value.args[0] == number and text.encode() in info.value.args[1]
    with pytest.raises(pymssql._mssql.MSSQLDatabaseException) as info2:
        conn._conn.init_procedure("sp_nothing_here").execute()
    assert info2.value.number == 2812
    cur.execute("CREATE TABLE u (id INT PRIMARY KEY)")
    cur.execute("INSERT INTO u VALUES (1)")
    with pytest.raises(pymssql.IntegrityError) as info:
        cur.execute("INSERT INTO u VALUES (1)")
    assert info.value.args[0] == 2627
    cur.execute("SELECT 1")
    assert cur.fetchone()[0] == 1


def test_use_and_unknown_database(tds_server_factory) -> None:
    server = tds_server_factory(database="appdb", databases=["other"])
    cur = connect(server, autocommit=True).cursor()
    assert scalar(cur, "SELECT DB_NAME()") == "appdb"
    cur.execute("USE other")
    assert scalar(cur, "SELECT DB_NAME()") == "other"
    with pytest.raises(pymssql.OperationalError) as info:
        cur.execute("USE nowhere")
    assert info.value.args[0] == 911


def test_sessions_and_request_counts(tds_server: TdsServer) -> None:
    conn = connect(tds_server)
    cur = conn.cursor()
    before = tds_server.stats()
    (info,) = tds_server.sessions()
    assert info["user"] == "sa" and info["database"] == "master" and not info["in_request"]
    assert isinstance(info["login_time"], dt.datetime)
    for _ in range(3):
        cur.execute("SELECT 1")
        cur.fetchall()
    after = tds_server.stats()
    assert after["requests"] - before["requests"] == 3
    assert after["batches"] - before["batches"] == 3
    assert tds_server.sessions()[0]["requests"] == info["requests"] + 3


def test_writers_wait_and_lock_timeout_gives_1222(tds_server: TdsServer) -> None:
    a = connect(tds_server)
    ca = a.cursor()
    ca.execute("CREATE TABLE w (id INT)")
    a.commit()
    ca.execute("INSERT INTO w VALUES (1)")  # a's transaction now holds the write lock
    b = connect(tds_server)
    cb = b.cursor()
    cb.execute("SELECT COUNT(*) FROM w")  # readers are not blocked and see committed data
    assert cb.fetchone()[0] == 0
    cb.execute("SET LOCK_TIMEOUT 200")
    cb.execute("INSERT INTO w VALUES (2)")  # another row: row locks do not conflict
    with pytest.raises(pymssql.OperationalError) as info:
        cb.execute("UPDATE w SET id = 20 WHERE id = 1")  # a's uncommitted row: waits
    assert info.value.args[0] == 1222
    assert scalar(cb, "SELECT @@TRANCOUNT") == 1  # the statement was cancelled, not the tran
    a.commit()
    cb.execute("UPDATE w SET id = 20 WHERE id = 1")
    b.commit()
    ca.execute("SELECT id FROM w")
    assert sorted(r[0] for r in ca.fetchall()) == [2, 20]


def test_statement_errors_do_not_abort_the_batch(tds_server: TdsServer) -> None:
    cur = connect(tds_server, autocommit=True).cursor()
    cur.execute("CREATE TABLE pk (id INT PRIMARY KEY)")
    with pytest.raises(pymssql.IntegrityError):
        cur.execute("INSERT INTO pk VALUES (1); INSERT INTO pk VALUES (1); "
                    "INSERT INTO pk VALUES (2)")
    assert scalar(cur, "SELECT COUNT(*) FROM pk") == 2


def test_unsupported_sql_is_an_error_not_a_dead_session(tds_server: TdsServer) -> None:
    cur = connect(tds_server, autocommit=True).cursor()
    for sql in ["SET", "KILL 'x'", "SET LOCK_TIMEOUT NULL", "WHILE 1 = 1 PRINT 'x'",
                "SELECT * FROM", "]"]:
        with pytest.raises(pymssql.Error):
            cur.execute(sql)
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1
    assert len(tds_server.sessions()) == 1


def test_callproc_rpc_procedures(tds_server: TdsServer) -> None:
    conn = connect(tds_server)
    cur = conn.cursor()
    cur.callproc("sp_set_session_context", ("tenant", "acme"))
    assert scalar(cur, "SELECT SESSION_CONTEXT(N'tenant')") == "acme"
    with pytest.raises(pymssql.DatabaseError) as info:
        cur.callproc("no_such_proc", (1,))
    assert info.value.args[0] == 2812
    assert scalar(cur, "SELECT 1") == 1
    assert tds_server.stats()["rpcs"] == 2
