"""Lock waits, LOCK_TIMEOUT, deadlock victims and committed reads, with real pymssql threads."""

from __future__ import annotations

import time
from typing import Any

import pymssql
import pytest
from tds_client import Background, connect, scalar

from mssql_pool.testing import TdsServer

pytestmark = pytest.mark.timeout(60)
def wait_until_blocked(server: TdsServer, spid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s["spid"] == spid and s["in_request"] for s in server.sessions()):
            time.sleep(0.05)  # in the request; give it time to reach the lock wait
            return
        time.sleep(0.01)
    raise AssertionError(f"session {spid} never started waiting")


def two_sessions(server: TdsServer) -> tuple[Any, Any, Any, Any]:
    """Two connections in pymssql's default mode (a transaction open) and a cursor on each."""
    a, b = connect(server), connect(server)
    return a, b, a.cursor(), b.cursor()


@pytest.fixture
def accounts(tds_server: TdsServer) -> TdsServer:
    conn = connect(tds_server, autocommit=True)
    conn.cursor().execute(
        "CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL); "
        "INSERT INTO acct VALUES (1, 100), (2, 100), (3, 100)")
    conn.close()
    return tds_server


def test_writers_of_the_same_row_wait_for_the_commit(accounts: TdsServer) -> None:
    a, b, ca, cb = two_sessions(accounts)
    ca.execute("UPDATE acct SET bal = bal - 10 WHERE id = 1")
    b_spid = scalar(cb, "SELECT @@SPID")
    waiter = Background(lambda: cb.execute("UPDATE acct SET bal = bal + 1 WHERE id = 1"))
    wait_until_blocked(accounts, b_spid)
    time.sleep(0.3)
    assert not waiter.done.is_set(), "the second writer did not wait for the row lock"
    a.commit()
    waiter.join()
    assert waiter.error is None
    b.commit()
    assert scalar(ca, "SELECT bal FROM acct WHERE id = 1") == 91
    a.close()
    b.close()


def test_writers_of_different_rows_do_not_wait(accounts: TdsServer) -> None:
    a, b, ca, cb = two_sessions(accounts)
    ca.execute("UPDATE acct SET bal = 1 WHERE id = 1")
    cb.execute("SET LOCK_TIMEOUT 0")
    start = time.monotonic()
    cb.execute("UPDATE acct SET bal = 2 WHERE id = 2")
    cb.execute("DELETE FROM acct WHERE id = 3")
    cb.execute("INSERT INTO acct VALUES (4, 4)")
    assert time.monotonic() - start < 2.0
    a.commit()
    b.commit()
    ca.execute("SELECT id, bal FROM acct ORDER BY id")
    assert ca.fetchall() == [(1, 1), (2, 2), (4, 4)]


def test_lock_timeout_gives_1222_and_the_transaction_lives(accounts: TdsServer) -> None:
    a, b, ca, cb = two_sessions(accounts)
    ca.execute("UPDATE acct SET bal = 0 WHERE id = 1")
    cb.execute("UPDATE acct SET bal = 222 WHERE id = 2")  # b's transaction has work in it
    cb.execute("SET LOCK_TIMEOUT 250")
    assert scalar(cb, "SELECT @@LOCK_TIMEOUT") == 250
    start = time.monotonic()
    with pytest.raises(pymssql.OperationalError) as info:
        cb.execute("UPDATE acct SET bal = 111 WHERE id = 1")
    elapsed = time.monotonic() - start
    assert info.value.args[0] == 1222
    assert 0.2 <= elapsed < 3.0
    # only the statement was cancelled: the transaction and its earlier update live on
    assert scalar(cb, "SELECT @@TRANCOUNT") == 1
    assert scalar(cb, "SELECT bal FROM acct WHERE id = 2") == 222
    a.commit()
    cb.execute("UPDATE acct SET bal = 111 WHERE id = 1")
    b.commit()
    ca.execute("SELECT id, bal FROM acct ORDER BY id")
    assert ca.fetchall() == [(1, 111), (2, 222), (3, 100)]


def test_deadlock_victim_gets_1205_and_its_transaction_is_rolled_back(
        accounts: TdsServer) -> None:
    a, b, ca, cb = two_sessions(accounts)
    ca.execute("UPDATE acct SET bal = bal - 50 WHERE id = 1")
    ca.execute("INSERT INTO acct VALUES (10, 10)")
    cb.execute("UPDATE acct SET bal = bal - 7 WHERE id = 2")
    b_spid = scalar(cb, "SELECT @@SPID")
    waiter = Background(lambda: cb.execute("UPDATE acct SET bal = bal + 7 WHERE id = 1"))
    wait_until_blocked(accounts, b_spid)
    start = time.monotonic()
    with pytest.raises(pymssql.OperationalError) as info:
        ca.execute("UPDATE acct SET bal = bal + 50 WHERE id = 2")  # closes the cycle
    assert info.value.args[0] == 1205
    assert b"deadlock victim" in info.value.args[1]
    assert time.monotonic() - start < 3.0
    # the victim's transaction is gone and its locks released: b goes on
    waiter.join()
    assert waiter.error is None
    assert scalar(ca, "SELECT @@TRANCOUNT") == 0
    b.commit()
    cur = connect(accounts, autocommit=True).cursor()
    cur.execute("SELECT id, bal FROM acct ORDER BY id")
    assert cur.fetchall() == [(1, 107), (2, 93), (3, 100)]  # none of a's work survived


def test_reads_see_committed_data_and_rollback_restores_every_change(
        accounts: TdsServer) -> None:
    a, b, ca, cb = two_sessions(accounts)
    ca.execute("UPDATE acct SET bal = 0 WHERE id = 1")
    ca.execute("DELETE FROM acct WHERE id = 2")
    ca.execute("INSERT INTO acct VALUES (5, 5)")
    ca.execute("SAVE TRANSACTION half")
    ca.execute("UPDATE acct SET bal = -1 WHERE id = 3")
    ca.execute("ROLLBACK TRANSACTION half")
    assert scalar(ca, "SELECT bal FROM acct WHERE id = 3") == 100
    cb.execute("SET LOCK_TIMEOUT 0")
    start = time.monotonic()
    cb.execute("SELECT id, bal FROM acct ORDER BY id")  # committed data, no waiting
    assert cb.fetchall() == [(1, 100), (2, 100), (3, 100)]
    assert time.monotonic() - start < 2.0
    cb.execute("SELECT COUNT(*) FROM acct WITH (NOLOCK)")  # a dirty read sees a's rows
    assert cb.fetchone()[0] == 3
    cb.execute("SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
    assert scalar(cb, "SELECT bal FROM acct WHERE id = 1") == 0
    a.rollback()
    cb.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
    cb.execute("SELECT id, bal FROM acct ORDER BY id")
    assert cb.fetchall() == [(1, 100), (2, 100), (3, 100)]
    cb.execute("UPDATE acct SET bal = 9 WHERE id = 1")  # a's locks are released
    b.commit()


def test_disconnect_and_kill_release_locks(accounts: TdsServer) -> None:
    a, b, c = connect(accounts), connect(accounts), connect(accounts)
    ca, cb, cc = a.cursor(), b.cursor(), c.cursor()
    ca.execute("UPDATE acct SET bal = 1 WHERE id = 1")
    b_spid = scalar(cb, "SELECT @@SPID")
    waiter = Background(lambda: cb.execute("UPDATE acct SET bal = 2 WHERE id = 1"))
    wait_until_blocked(accounts, b_spid)
    assert accounts.kill(b_spid)  # a waiting session can be killed
    waiter.join()
    assert isinstance(waiter.error, pymssql.Error)
    a.close()  # a's transaction is rolled back and its lock released
    cc.execute("SET LOCK_TIMEOUT 2000")
    cc.execute("UPDATE acct SET bal = 3 WHERE id = 1")
    c.commit()
    assert scalar(cc, "SELECT bal FROM acct WHERE id = 1") == 3
