"""pymssql's query timeout is process-wide: one test's short ``timeout`` must not reach the
next test's connections (the autouse fixture in tests/conftest.py resets it). The two tests
run in this order; without the reset the second fails with 20003 after 1 s."""

from __future__ import annotations

from contextlib import closing

import pymssql

from mssql_pool.testing import TdsServer


def test_a_connection_with_a_short_query_timeout(tds_server: TdsServer) -> None:
    with closing(pymssql.connect(**tds_server.connect_kwargs(timeout=1))) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchall() == [(1,)]


def test_a_later_connection_without_one_waits_past_it(tds_server: TdsServer) -> None:
    with closing(pymssql.connect(**tds_server.connect_kwargs())) as conn:
        cur = conn.cursor()
        cur.execute("WAITFOR DELAY '00:00:01.500'; SELECT 2")
        assert cur.fetchall() == [(2,)]
