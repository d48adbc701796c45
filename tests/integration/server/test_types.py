"""Every SQL Server type both ways through pymssql and python-tds, NULL of each, big results."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pymssql
import pytds
import pytest

from mssql_pool.testing import TdsServer

pytestmark = pytest.mark.timeout(120)

D = decimal.Decimal
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))

# (declared type, value sent, value expected back)
CASES: list[tuple[str, Any, Any]] = [
    ("bit", True, True),
    ("tinyint", 255, 255),
    ("smallint", -32768, -32768),
    ("int", -2147483648, -2147483648),
    ("bigint", 2**62 + 1, 2**62 + 1),
    ("real", 1.5, 1.5),
    ("float", 1 / 3, 1 / 3),
    ("decimal(12,3)", D("123456789.123"), D("123456789.123")),
    ("numeric(5,2)", D("-1.50"), D("-1.50")),
    ("char(5)", "ab", "ab   "),
    ("varchar(10)", "hello", "hello"),
    ("varchar(max)", "v" * 10000, "v" * 10000),
    ("nchar(4)", "é", "é   "),
    ("nvarchar(20)", "ünïcødé ☃", "ünïcødé ☃"),
    ("nvarchar(max)", "☃" * 6000, "☃" * 6000),
    ("varbinary(10)", b"\x00\x01\xff", b"\x00\x01\xff"),
    ("varbinary(max)", bytes(range(256)) * 40, bytes(range(256)) * 40),
    ("date", dt.date(2024, 2, 29), dt.date(2024, 2, 29)),
    ("time", dt.time(13, 14, 15, 123456), dt.time(13, 14, 15, 123456)),
    ("datetime", dt.datetime(2024, 2, 29, 12, 30, 45, 500000),
     dt.datetime(2024, 2, 29, 12, 30, 45, 500000)),
    ("datetime2", dt.datetime(2024, 2, 29, 12, 30, 45, 123456),
     dt.datetime(2024, 2, 29, 12, 30, 45, 123456)),
    ("datetimeoffset", dt.datetime(2024, 2, 29, 12, 30, 45, 123456, tzinfo=IST),
     dt.datetime(2024, 2, 29, 12, 30, 45, 123456, tzinfo=IST)),
    ("uniqueidentifier", uuid.UUID("12345678-1234-5678-1234-567812345678"),
     uuid.UUID("12345678-1234-5678-1234-567812345678")),
]
IDS = [c[0] for c in CASES]


def pymssql_conn(server: TdsServer, **kw: Any) -> Any:
    return pymssql.connect(**server.connect_kwargs(autocommit=True, **kw))


def pytds_conn(server: TdsServer) -> Any:
    return pytds.connect(dsn=server.host, port=server.port, user=server.user,
                         password=server.password, database=server.database, autocommit=True)


def pytds_value(v: Any) -> Any:
    return pytds.Binary(v) if isinstance(v, bytes) else v


def pymssql_sent(decl: str, expected: Any) -> Any:
    """pymssql formats parameters client-side; datetime2 literals carry milliseconds."""
    if decl == "datetime2":
        return expected.replace(microsecond=expected.microsecond // 1000 * 1000)
    return expected


def same(got: Any, expected: Any) -> bool:
    return bool(got == expected and type(got) is type(expected)) or (
        isinstance(expected, float) and isinstance(got, float) and got == expected)


@pytest.fixture
def typed_table(tds_server: TdsServer) -> TdsServer:
    """Table ty: row 1 written by pymssql, row 2 by python-tds (typed RPC), row 3 all NULL."""
    cols = ", ".join(f"c{i} {decl}" for i, (decl, _v, _e) in enumerate(CASES))
    marks = ", ".join(["%s"] * len(CASES))
    ms = pymssql_conn(tds_server)
    ms.cursor().execute(f"CREATE TABLE ty (id INT PRIMARY KEY, {cols})")
    ms.cursor().execute(f"INSERT INTO ty VALUES (1, {marks})", tuple(v for _d, v, _e in CASES))
    ms.cursor().execute("INSERT INTO ty (id) VALUES (3)")
    ms.close()
    td = pytds_conn(tds_server)
    td.cursor().execute(f"INSERT INTO ty VALUES (2, {marks})",
                        tuple(pytds_value(v) for _d, v, _e in CASES))
    td.close()
    return tds_server


@pytest.mark.parametrize("client", ["pymssql", "pytds"])
def test_table_round_trip_of_every_type(typed_table: TdsServer, client: str) -> None:
    conn = pymssql_conn(typed_table) if client == "pymssql" else pytds_conn(typed_table)
    cur = conn.cursor()
    bad = []
    for i, (decl, _v, expected) in enumerate(CASES):
        cur.execute(f"SELECT c{i} FROM ty ORDER BY id")
        by_pymssql, by_pytds, nulls = (r[0] for r in cur.fetchall())
        if not same(by_pymssql, pymssql_sent(decl, expected)):
            bad.append((decl, "written by pymssql", by_pymssql))
        if not same(by_pytds, expected):
            bad.append((decl, "written by pytds", by_pytds))
        if nulls is not None:
            bad.append((decl, "NULL", nulls))
    assert not bad
    conn.close()


@pytest.mark.parametrize(("decl", "value", "expected"), CASES, ids=IDS)
def test_typed_parameter_comes_back_with_its_type(tds_server: TdsServer, decl: str,
                                                  value: Any, expected: Any) -> None:
    conn = pytds_conn(tds_server)
    cur = conn.cursor()
    cur.execute("SELECT %s AS v, CAST(NULL AS " + decl + ") AS n", (pytds_value(value),))
    got, null = cur.fetchone()
    assert same(got, value)  # a parameter is typed by its value, not padded
    assert null is None
    conn.close()


LITERALS = [
    ("CAST(1 AS BIT)", True), ("CAST(200 AS TINYINT)", 200), ("CAST(-5 AS SMALLINT)", -5),
    ("CAST(7 AS INT)", 7), ("CAST(9000000000 AS BIGINT)", 9000000000),
    ("CAST(0.25 AS REAL)", 0.25), ("CAST(0.1 AS FLOAT)", 0.1),
    ("CAST('1234567890123456789012345678.0123456789' AS DECIMAL(38,10))",
     D("1234567890123456789012345678.0123456789")),
    ("CAST(2.5 AS NUMERIC(6,3))", D("2.500")), ("12.345", D("12.345")),
    ("CAST('ab' AS CHAR(4))", "ab  "), ("CAST('abc' AS VARCHAR(10))", "abc"),
    ("CAST(N'é' AS NCHAR(2))", "é "), ("N'ünï'", "ünï"),
    ("CAST(REPLICATE('x', 9000) AS VARCHAR(MAX))", "x" * 9000),
    ("0x00FF10", b"\x00\xff\x10"),
    ("CAST('2024-02-29' AS DATE)", dt.date(2024, 2, 29)),
    ("CAST('23:59:59.1234560' AS TIME)", dt.time(23, 59, 59, 123456)),
    ("CAST('2024-02-29 12:30:45.123' AS DATETIME)", dt.datetime(2024, 2, 29, 12, 30, 45, 123000)),
    ("CONVERT(DATETIME2, '2024-02-29 12:30:45.1234560')",
     dt.datetime(2024, 2, 29, 12, 30, 45, 123456)),
    ("CAST('2024-02-29 12:30:45 +05:30' AS DATETIMEOFFSET)",
     dt.datetime(2024, 2, 29, 12, 30, 45, tzinfo=IST)),
    ("CAST('12345678-1234-5678-1234-567812345678' AS UNIQUEIDENTIFIER)",
     uuid.UUID("12345678-1234-5678-1234-567812345678")),
]


@pytest.mark.parametrize("client", ["pymssql", "pytds"])
def test_select_list_casts_and_literals(tds_server: TdsServer, client: str) -> None:
    conn = pymssql_conn(tds_server) if client == "pymssql" else pytds_conn(tds_server)
    cur = conn.cursor()
    bad = []
    for expr, expected in LITERALS:
        if "REPLICATE" in expr:
            expr = f"CAST('{'x' * 9000}' AS VARCHAR(MAX))"
        cur.execute(f"SELECT {expr}")
        got = cur.fetchone()[0]
        if not same(got, expected):
            bad.append((expr[:50], got if not isinstance(got, str) else got[:20]))
    assert not bad
    conn.close()


def test_new_types_reach_old_tds_versions_as_text(typed_table: TdsServer) -> None:
    """A TDS 7.2 client gets time and datetimeoffset as strings, as SQL Server sends them."""
    conn = pymssql_conn(typed_table, tds_version="7.2")
    cur = conn.cursor()
    names = [d for d, _v, _e in CASES]
    cur.execute(f"SELECT c{names.index('time')}, c{names.index('datetimeoffset')}, "
                f"c{names.index('tinyint')} FROM ty WHERE id = 2")
    t, dto, tiny = cur.fetchone()
    assert t.startswith("13:14:15.123456") and "+05:30" in dto and tiny == 255


@pytest.mark.parametrize("client", ["pymssql", "pytds"])
def test_results_larger_than_many_packets(tds_server: TdsServer, client: str) -> None:
    conn = pymssql_conn(tds_server) if client == "pymssql" else pytds_conn(tds_server)
    cur = conn.cursor()
    cur.execute("CREATE TABLE big (id INT, s NVARCHAR(100), b VARBINARY(max))")
    rows = [(i, f"row {i} " + "ж" * 50, bytes([i % 256]) * 300) for i in range(3000)]
    values = ", ".join(f"({i}, N'{s}', 0x{b.hex()})" for i, s, b in rows)
    cur.execute(f"INSERT INTO big VALUES {values}")  # a request of many packets too
    cur.execute("SELECT id, s, b FROM big ORDER BY id")  # about 1.2 MB, 300+ packets
    got = [tuple(r) for r in cur.fetchall()]
    assert got == rows
    huge = "é" * 700_000
    cur.execute("SELECT %s", (huge,))
    assert cur.fetchone()[0] == huge
    conn.close()
