"""A checkout's first statement that finds its unchecked connection dead is replayed on a
validated replacement (health.may_replay), and nothing else is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fakedb import (
    FakeClock,
    FakeConnection,
    FakeDB,
    eof_error,
    not_connected_error,
    pool_factory,
    query_timeout_error,
)

from mssql_pool import ConnectionPool
from mssql_pool.errors import PoolError
from mssql_pool.health import may_replay


@pytest.fixture
def db() -> FakeDB:
    return FakeDB(pymssql_like=True)


@pytest.fixture
def make_pool(db: FakeDB, clock: FakeClock) -> Iterator[Any]:
    with pool_factory(db, clock, min_size=2, max_size=4, timeout=5.0, name="r") as make:
        yield make


def _warm(pool: ConnectionPool, clock: FakeClock) -> None:
    """Open min_size connections and return them recently: inside the bypass window."""
    pool.wait(1)
    conns = [pool.getconn() for _ in range(2)]
    for c in conns:
        pool.putconn(c)
    clock.advance(0.1)


def _restarted(make_pool: Any, db: FakeDB, clock: FakeClock) -> ConnectionPool:
    """A warm pool whose server just restarted: every idle connection is dead, unchecked."""
    pool: ConnectionPool = make_pool()
    _warm(pool, clock)
    db.shutdown()
    db.restart()
    return pool


def _statements(db: FakeDB, sql: str) -> int:
    return sum(1 for _, s in db.statements if s == sql)


def test_killed_in_window_first_statement_is_replayed(make_pool: Any, db: FakeDB,
                                                      clock: FakeClock) -> None:
    pool = _restarted(make_pool, db, clock)
    db.rows["SELECT 42"] = [(42,)]
    with pool.connection() as conn:
        dead = conn.raw
        cur = conn.cursor()
        cur.execute("SELECT 42")                 # no error reaches the caller
        assert cur.fetchone() == (42,)
        assert conn.raw is not dead and conn.raw.alive and dead.closed
        assert not conn.invalidated
        cur.execute("INSERT INTO t VALUES (1)")  # the proxy and cursor keep working
        conn.commit()
    assert _statements(db, "SELECT 42") == 1
    stats = pool.get_stats()
    assert stats["connections_replaced"] == 1
    assert stats["connections_lost"] >= 1 and stats["connections_discarded"] >= 2
    # The other stale connection was suspect: checked (and replaced) by the acquisition.
    assert stats["checks_failed"] == 1
    assert stats["pool_size"] == 1 and all(c.alive for c in db.open_connections())


def test_replay_keeps_reset_bits_of_the_statement(make_pool: Any, db: FakeDB,
                                                  clock: FakeClock) -> None:
    pool = _restarted(make_pool, db, clock)
    with pool.connection() as conn:
        conn.cursor().execute("SET NOCOUNT ON")
        raw = conn.raw
    assert raw.resets == 1 and pool.get_stats()["resets_full"] == 1


def test_cursor_arguments_survive_the_replacement(make_pool: Any, db: FakeDB,
                                                  clock: FakeClock,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pool = make_pool(min_size=1)
    _warm(pool, clock)
    conn = pool.getconn()
    db.kill(conn)
    seen: list[tuple[int, dict[str, Any]]] = []
    orig = FakeConnection.cursor

    def spy(self: FakeConnection, *args: Any, **kwargs: Any) -> Any:
        seen.append((self.id, kwargs))
        return orig(self, *args, **kwargs)
    monkeypatch.setattr(FakeConnection, "cursor", spy)
    conn.cursor(as_dict=True).execute("SELECT 1")
    assert seen[-1] == (conn.raw.id, {"as_dict": True})     # the replay's cursor
    assert seen[0][1] == {"as_dict": True} and seen[0][0] != conn.raw.id
    pool.putconn(conn)


@pytest.mark.parametrize("setup", ["second", "after_commit", "checked"])
def test_only_the_first_statement_of_an_unchecked_checkout(make_pool: Any, db: FakeDB,
                                                            clock: FakeClock, setup: str) -> None:
    pool = make_pool(validate_after=0.0 if setup == "checked" else 0.5)
    _warm(pool, clock)
    conn = pool.getconn()
    cur = conn.cursor()
    if setup == "second":
        cur.execute("SELECT 1")
    elif setup == "after_commit":
        cur.execute("SELECT 1")
        conn.commit()
    db.kill(conn)
    with pytest.raises(db.OperationalError):
        cur.execute("SELECT 2")
    assert conn.invalidated
    pool.putconn(conn)
    assert pool.get_stats()["connections_replaced"] == 0


@pytest.mark.parametrize("error", [eof_error, query_timeout_error], ids=["20017", "20003"])
def test_errors_that_may_have_run_are_never_replayed(make_pool: Any, db: FakeDB,
                                                     clock: FakeClock, error: Any) -> None:
    pool = make_pool()
    _warm(pool, clock)
    conn = pool.getconn()
    db.fail_next("execute", 1, error=error())
    with pytest.raises(db.OperationalError) as info:
        conn.cursor().execute("INSERT INTO t VALUES (1)")
    assert info.value.args[0] == error().args[0]
    assert conn.invalidated
    pool.putconn(conn)
    assert pool.get_stats()["connections_replaced"] == 0


@pytest.mark.parametrize("sql", ["INSERT INTO t VALUES (1); COMMIT", "EXEC dbo.transfer 1"])
def test_statements_that_may_commit_are_never_replayed(make_pool: Any, db: FakeDB,
                                                       clock: FakeClock, sql: str) -> None:
    pool = make_pool()
    _warm(pool, clock)
    conn = pool.getconn()
    db.kill(conn)
    with pytest.raises(db.OperationalError):
        conn.cursor().execute(sql)
    pool.putconn(conn)
    assert pool.get_stats()["connections_replaced"] == 0


def test_autocommit_20047_is_not_replayed_but_not_connected_is(db: FakeDB,
                                                               clock: FakeClock) -> None:
    """In autocommit mode a 20047 may follow a statement that ran and committed (a reset
    after the batch was sent reads the same); 'Not connected' is raised before any I/O."""
    with ConnectionPool(connect=lambda: db.connect(autocommit=True), min_size=2, max_size=4,
                        timeout=5.0, clock=clock, sleep=clock.sleep, background=False) as pool:
        _warm(pool, clock)
        conn = pool.getconn()
        assert conn.raw.autocommit_state is True
        db.fail_next("execute", 1, error=not_connected_error())
        conn.cursor().execute("INSERT INTO t VALUES (2)")
        pool.putconn(conn)
        assert pool.get_stats()["connections_replaced"] == 1
        assert _statements(db, "INSERT INTO t VALUES (2)") == 1
        conn = pool.getconn()
        db.kill(conn)
        with pytest.raises(db.OperationalError):
            conn.cursor().execute("INSERT INTO t VALUES (1)")
        pool.putconn(conn)
        assert pool.get_stats()["connections_replaced"] == 1


def test_no_replacement_in_time_raises_the_original_error(make_pool: Any, db: FakeDB,
                                                          clock: FakeClock) -> None:
    pool = make_pool(min_size=1, max_size=1)
    pool.wait(1)
    pool.putconn(pool.getconn())
    clock.advance(0.1)
    conn = pool.getconn(timeout=0)
    db.shutdown()                                # dead, and connects are refused
    with pytest.raises(db.OperationalError) as info:
        conn.cursor().execute("SELECT 1")
    assert info.value.args[0] == 20047 and info.value.__context__ is None
    assert conn.closed                           # given back (as dead) during the attempt
    conn.close()                                 # harmless
    stats = pool.get_stats()
    assert stats["pool_size"] == 0 and stats["connections_replaced"] == 0
    assert stats["requests_timeouts"] == 1
    db.restart()
    with pool.connection() as c:
        c.cursor().execute("SELECT 1")


def test_replay_error_is_the_replays_own(make_pool: Any, db: FakeDB, clock: FakeClock) -> None:
    """The statement really ran (and failed) on the replacement: that error, without the
    original 20047 in its chain (the classifier would call it a disconnect)."""
    pool = make_pool()
    _warm(pool, clock)
    conn = pool.getconn()
    db.kill(conn)
    db.rows.clear()
    with pytest.raises(db.ProgrammingError) as info:
        conn.cursor().execute("SELECT a FROM #missing")
    assert info.value.args[0] == 208
    assert info.value.__context__ is None
    assert not conn.invalidated
    pool.putconn(conn)
    assert pool.get_stats()["connections_replaced"] == 1


def test_may_replay_shapes() -> None:
    import fakedb

    class Raw:
        autocommit_state = False

    assert may_replay(fakedb.disconnect_error(), Raw(), "SELECT 1")
    assert may_replay(fakedb.disconnect_error(), Raw(), b"SELECT 1")
    assert not may_replay(fakedb.disconnect_error(), object(), "SELECT 1")   # mode unknown
    assert not may_replay(fakedb.query_timeout_error(), Raw(), "SELECT 1")
    assert not may_replay(fakedb.eof_error(), Raw(), "SELECT 1")
    assert not may_replay(fakedb.disconnect_error(), Raw(), "exec p")
    assert may_replay(fakedb.not_connected_error(), None, "EXEC p")
    assert not may_replay(fakedb.InterfaceError("Connection is closed"), Raw(), "SELECT 1")
    assert not may_replay(RuntimeError("DBPROCESS is dead"), Raw(), "SELECT 1")


def test_other_cursors_of_the_dead_connection_never_replace_again(
        make_pool: Any, db: FakeDB, clock: FakeClock) -> None:
    """A cursor opened before the replacement stays on the dead connection: its error is
    raised, and the proxy keeps the replacement (with the replayed statement's work)."""
    pool = _restarted(make_pool, db, clock)
    conn = pool.getconn()
    first, second = conn.cursor(), conn.cursor()
    first.execute("INSERT INTO t VALUES (1)")
    replacement = conn.raw
    with pytest.raises(db.Error):
        second.execute("SELECT 1")
    assert conn.raw is replacement and replacement.in_transaction
    pool.putconn(conn)
    assert replacement.rollbacks == 1 and not replacement.closed
    assert pool.get_stats()["connections_replaced"] == 1


def test_a_cursor_used_after_its_connection_was_returned_never_replaces(
        make_pool: Any, db: FakeDB, clock: FakeClock) -> None:
    pool = _restarted(make_pool, db, clock)
    conn = pool.getconn()
    cur = conn.cursor()
    pool.putconn(conn)
    with pytest.raises(PoolError, match="returned to the pool"):
        cur.execute("SELECT 1")      # the loan ended: the cursor is dead with it
    assert conn.closed and pool.get_stats()["connections_replaced"] == 0
