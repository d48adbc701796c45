"""The pool on a server like Babelfish for PostgreSQL, with the fake driver: no
sp_reset_connection (found once, said once, changed sessions closed instead), and 3903 in
other words from rollback() (a no-op, never a lost connection)."""

from __future__ import annotations

import logging

import pytest
from fakedb import FakeDB, OperationalError

from mssql_pool import ConnectionPool

NO_PROC = OperationalError(
    33557097,
    b"procedure sp_reset_connection() does not existDB-Lib error message 20018, severity 16:\n"
    b"General SQL Server error: Check messages from the SQL Server\n",
)
BBF_3903 = OperationalError(
    3903,
    b"ROLLBACK can only be used in transaction blocksDB-Lib error message 20018, severity 16:\n"
    b"General SQL Server error: Check messages from the SQL Server\n",
)


def reset_attempts(db: FakeDB, armed: int) -> int:
    """How many of the ``armed`` failing sp_reset_connection calls were made."""
    return armed - len(db._failures.get("reset", []))


def test_missing_sp_reset_connection_is_found_once_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = FakeDB(pymssql_like=True)
    db.fail_next("reset", count=10, error=NO_PROC)
    caplog.set_level(logging.DEBUG, logger="mssql_pool")
    pool = ConnectionPool(connect=db.connect, background=False, min_size=0, max_size=1)
    raws = []
    for _ in range(3):
        with pool.connection() as conn:        # never fails: not the checkout, not the return
            raws.append(conn.raw)
            conn.cursor().execute("SET LOCK_TIMEOUT 1234")
    with pool.connection() as conn:            # plain work: a rollback keeps the session
        raws.append(conn.raw)
        conn.cursor().execute("UPDATE t SET a = 1")
    with pool.connection() as conn:
        raws.append(conn.raw)
    stats = pool.get_stats()
    pool.close()
    assert reset_attempts(db, 10) == 1                     # asked once, then remembered
    assert len({id(r) for r in raws[:3]}) == 3 and raws[3] is raws[4]
    assert all(r.closed for r in raws[:3])
    assert stats["connections_discarded"] == 3 and stats["requests_errors"] == 0
    said = [r for r in caplog.records if "sp_reset_connection" in r.getMessage()
            and r.levelno >= logging.INFO]
    assert [r.levelno for r in said] == [logging.INFO]


def test_other_reset_failures_are_not_taken_for_a_missing_procedure() -> None:
    db = FakeDB(pymssql_like=True)
    db.fail_next("reset", count=1, error=OperationalError(
        50000, b"something else went wrongDB-Lib error message 20018, severity 16:\n"))
    pool = ConnectionPool(connect=db.connect, background=False, min_size=0, max_size=1)
    with pool.connection() as conn:
        conn.cursor().execute("SET LOCK_TIMEOUT 1")
    with pool.connection() as conn:
        conn.cursor().execute("SET LOCK_TIMEOUT 2")
        raw = conn.raw
    pool.close()
    assert raw.resets == 1                                 # tried again (it worked)


def test_rollback_with_nothing_to_roll_back_keeps_the_connection() -> None:
    db = FakeDB(pymssql_like=True)
    pool = ConnectionPool(connect=db.connect, background=False, min_size=0, max_size=1)
    with pool.connection() as conn:
        raw = conn.raw
        db.fail_next("rollback", error=BBF_3903)
        conn.rollback()                                    # no exception
        assert raw.in_transaction                          # pymssql's BEGIN TRAN re-sent
    with pool.connection() as conn:
        assert conn.raw is raw                             # not discarded
    stats = pool.get_stats()
    pool.close()
    assert stats["connections_discarded"] == 0 and stats["connections_lost"] == 0
