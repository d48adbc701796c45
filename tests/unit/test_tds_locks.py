"""The TDS test server's lock manager: grants, waits, timeouts and deadlock cycles."""

from __future__ import annotations

import pytest

from mssql_pool.testing._locks import Deadlock, LockManager, LockTimeout

ROW1 = ("db", "t", 1)
ROW2 = ("db", "t", 2)
ROW3 = ("db", "t", 3)


def never(_seconds: float) -> None:
    raise AssertionError("the wait should have ended without polling")


def test_grant_reentry_conflict_and_release() -> None:
    m = LockManager()
    assert m.try_lock(51, ROW1) is None
    assert m.try_lock(51, ROW1) is None  # a session's own lock is no conflict
    assert m.try_lock(52, ROW1) == 51
    assert m.locked_tables(52, "db") == {"t": {51}}
    assert m.locked_tables(51, "db") == {}
    m.release_all(51)
    assert m.try_lock(52, ROW1) is None
    assert m.holds(52) == 1 and m.holds(51) == 0


def test_free_resource_returns_at_once_and_zero_timeout_times_out() -> None:
    m = LockManager()
    m.wait(51, ("row", ROW1), -1, never)
    m.try_lock(51, ROW1)
    with pytest.raises(LockTimeout):
        m.wait(52, ("row", ROW1), 0, never)
    assert m.snapshot()["timeouts"] == 1 and m.snapshot()["waiting"] == {}


def test_wait_ends_when_the_holder_releases() -> None:
    m = LockManager()
    m.try_lock(51, ROW1)
    polls: list[float] = []

    def poll(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3:
            m.release_all(51)

    m.wait(52, ("row", ROW1), -1, poll)
    assert len(polls) == 3 and m.snapshot()["waiting"] == {}


def test_three_session_cycle_makes_the_closing_waiter_the_victim() -> None:
    m = LockManager()
    for spid, row in ((51, ROW1), (52, ROW2), (53, ROW3)):
        m.try_lock(spid, row)
    # 51 waits for 52 and 52 for 53 (registered by hand, as two blocked sessions would be)
    m._waiting[51] = ("row", ROW2)
    m._waiting[52] = ("row", ROW3)
    with pytest.raises(Deadlock):
        m.wait(53, ("row", ROW1), -1, never)  # 53 -> 51 closes the cycle
    assert m.snapshot()["deadlocks"] == 1
    assert 53 not in m.snapshot()["waiting"]


def test_poll_exceptions_end_the_wait_and_unregister() -> None:
    m = LockManager()
    m.try_lock(51, ROW1)

    def attention(_seconds: float) -> None:
        raise KeyboardInterrupt("attention")

    with pytest.raises(KeyboardInterrupt):
        m.wait(52, ("row", ROW1), -1, attention)
    assert m.snapshot()["waiting"] == {}
