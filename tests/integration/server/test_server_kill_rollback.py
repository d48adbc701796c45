"""A KILL never leaves a session's uncommitted changes behind, not even one that lands while
the session is rolling back (replaying its undo log): as on SQL Server, a killed session's
open transaction is rolled back completely and its locks are released."""

from __future__ import annotations

import random
import threading
import time

import pymssql
import pytest
from pymssql import _mssql
from tds_client import connect

from mssql_pool.testing import TdsServer

pytestmark = pytest.mark.timeout(60)

ROWS = 300


@pytest.fixture
def server(tds_server: TdsServer) -> TdsServer:
    """A server with table t (id, v) committed: ids 0..ROWS-1, every v 0."""
    conn = connect(tds_server, autocommit=True)
    cur = conn.cursor()
    cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)")
    cur.execute("INSERT INTO t (id, v) VALUES " + ",".join(f"({i}, 0)" for i in range(ROWS)))
    conn.close()
    return tds_server


def dirty(conn: pymssql.Connection) -> int:
    """Leave a transaction open that updates every row, inserts and deletes some: its spid."""
    cur = conn.cursor()
    cur.execute("SELECT @@SPID")
    spid = int(cur.fetchone()[0])
    cur.execute("UPDATE t SET v = v + 7")
    cur.execute("INSERT INTO t (id, v) VALUES " +
                ",".join(f"({i}, 99)" for i in range(ROWS, ROWS + 10)))
    cur.execute("DELETE FROM t WHERE id < 5")
    return spid


def wait_gone(server: TdsServer, spid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while any(s["spid"] == spid for s in server.sessions()):
        assert time.monotonic() < deadline, f"killed session {spid} never ended"
        time.sleep(0.005)


def assert_untouched(server: TdsServer) -> None:
    """From a fresh connection: the raw rows (NOLOCK, so no snapshot hides anything) are the
    committed ones, and no row lock was left behind."""
    check = connect(server, autocommit=True)
    try:
        cur = check.cursor()
        cur.execute("SELECT COUNT(*), SUM(v), MIN(id), MAX(id), SUM(id) FROM t WITH (NOLOCK)")
        assert tuple(cur.fetchone()) == (ROWS, 0, 0, ROWS - 1, ROWS * (ROWS - 1) // 2)
        cur.execute("SET LOCK_TIMEOUT 2000")
        cur.execute("UPDATE t SET v = 0")  # 1222 if a killed session still held a row
        assert cur.rowcount == ROWS
    finally:
        check.close()


def assert_no_failed_undo(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if "undo step failed" in r.getMessage()]


def rollback_quietly(conn: pymssql.Connection) -> None:
    try:
        conn.rollback()
    # after a kill, rollback() raises _mssql.MSSQLDatabaseException, not a pymssql.Error
    except (pymssql.Error, _mssql.MSSQLException):
        pass  # 596: the session was killed


def kill_during_replay(server: TdsServer, spid: int, nth: int, how: str) -> threading.Event:
    """Fire a KILL from inside SQLite (a progress handler on the session's connection) at the
    nth look while the session replays its undo log: a deterministic interleaving."""
    session = server._sessions[spid]
    ex = session.executor
    assert ex is not None
    fired = threading.Event()
    calls = 0

    def hook() -> int:
        nonlocal calls
        if ex.locks._replaying and not fired.is_set():
            calls += 1
            if calls >= nth:
                fired.set()
                if how == "kill":
                    session.kill()
                else:  # a KILL that got its interrupt in just before the replay began
                    session.killed.set()
                    ex.conn.interrupt()
        return 0

    ex.conn.set_progress_handler(hook, 1)
    return fired


@pytest.mark.parametrize("how", ["kill", "pending_interrupt"])
def test_kill_landing_inside_a_rollback_still_rolls_everything_back(
        server: TdsServer, how: str, caplog: pytest.LogCaptureFixture) -> None:
    for nth in (1, 2, 7, 40, 300, 3000, 9000):  # a replay here takes ~15000 looks
        a = connect(server)
        spid = dirty(a)
        fired = kill_during_replay(server, spid, nth, how)
        rollback_quietly(a)
        wait_gone(server, spid)
        a.close()
        assert fired.is_set(), f"the KILL never fired (nth={nth})"
        assert_untouched(server)
    assert_no_failed_undo(caplog)


def test_kill_landing_inside_a_deadlock_victims_rollback(
        server: TdsServer, caplog: pytest.LogCaptureFixture) -> None:
    # 1205 rolls the transaction back within the request; the KILL lands in that replay
    for nth in (1, 10, 500):
        a = connect(server)
        spid = dirty(a)
        fired = kill_during_replay(server, spid, nth, "kill")
        server.fail_next(1205, match="UPDATE t")
        with pytest.raises(pymssql.Error):
            a.cursor().execute("UPDATE t SET v = v + 1 WHERE id = 7")
        wait_gone(server, spid)
        a.close()
        assert fired.is_set()
        assert_untouched(server)
    assert_no_failed_undo(caplog)


def test_kills_at_random_moments_never_leave_uncommitted_values(
        server: TdsServer, caplog: pytest.LogCaptureFixture) -> None:
    # Real timing: KILL or kill_all from another thread while the session rolls back, runs a
    # statement or sits idle. Bounded by iterations (about 0.1 s each) and, on a badly
    # overloaded machine, by time.
    rnd = random.Random(4)
    deadline = time.monotonic() + 15.0
    rounds = 0
    while rounds < 24 and time.monotonic() < deadline:
        rounds += 1
        a = connect(server)
        spid = dirty(a)
        what = ("rollback", "statement", "idle")[rounds % 3]

        def kill(spid: int = spid, everyone: bool = rounds % 2 == 0) -> None:
            if everyone:
                server.kill_all()
            else:
                server.kill(spid)

        killer = threading.Timer(rnd.uniform(0.0, 0.03), kill)
        killer.name = "test-kill-rollback-killer"
        killer.daemon = True
        killer.start()
        if what == "rollback":
            rollback_quietly(a)
        elif what == "statement":
            try:
                a.cursor().execute("UPDATE t SET v = v + 1 WHERE id > 10")
            except pymssql.Error:
                pass  # 596
        killer.join(5)
        assert not killer.is_alive()
        a.close()
        wait_gone(server, spid)
        assert_untouched(server)
    assert_no_failed_undo(caplog)
    assert rounds >= 6   # every kind of moment (rollback, statement, idle) met both kills


def test_kill_landing_inside_a_committed_read_leaves_others_work_alone(
        server: TdsServer) -> None:
    # A reader sees the last committed rows by undoing the writer's changes in a SQLite
    # transaction it then rolls back; a KILL interrupting that must not commit the undo.
    for nth in (1, 4, 7, 10, 13, 16, 50, 2000):
        writer = connect(server)
        dirty(writer)
        reader = connect(server, autocommit=True)
        cur = reader.cursor()
        cur.execute("SELECT @@SPID")
        spid = int(cur.fetchone()[0])
        fired = kill_during_replay(server, spid, nth, "kill")
        with pytest.raises(pymssql.Error):
            cur.execute("SELECT SUM(v) FROM t")
        wait_gone(server, spid)
        reader.close()
        assert fired.is_set()
        writer.commit()
        writer.close()
        check = connect(server, autocommit=True)
        c = check.cursor()
        c.execute("SELECT COUNT(*), SUM(v) FROM t")
        assert tuple(c.fetchone()) == (ROWS + 5, 7 * (ROWS - 5) + 99 * 10)
        c.execute(f"DELETE FROM t WHERE id >= {ROWS}")
        c.execute("INSERT INTO t (id, v) VALUES " + ",".join(f"({i}, 0)" for i in range(5)))
        c.execute("UPDATE t SET v = 0")
        check.close()
        assert_untouched(server)
