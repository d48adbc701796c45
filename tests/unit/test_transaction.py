"""run_transaction / transactional / run with a fake pool whose server applies work on COMMIT.

The fake server keeps a ledger of applied unit ids so every test can check the promise:
no unit of work is ever applied twice.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from typing import Any

import pymssql
import pytest
from fakedb import FakeClock
from pymssql_shapes import err

from mssql_pool.errors import (
    CommitUnknownError,
    ConfigError,
    RetryExhausted,
    UnbalancedTransactionError,
)
from mssql_pool.retry import FixedBackoff, RetryPolicy
from mssql_pool.transaction import (
    COMMIT_BATCH,
    COMMIT_REOPEN_BATCH,
    TRANSACTION_POLICY,
    run,
    run_transaction,
    transactional,
)


def dead() -> pymssql.OperationalError:
    return err(20047, "DB-Lib error message 20047, severity 9:\nDBPROCESS is dead or not enabled\n")


class FakeServer:
    """Applies a connection's pending work on COMMIT; faults fire at named points."""

    def __init__(self) -> None:
        self.ledger: list[str] = []
        self.faults: dict[str, list[BaseException]] = {}
        self.statements: list[str] = []

    def fault(self, point: str, *errors: BaseException) -> None:
        self.faults.setdefault(point, []).extend(errors)

    def fire(self, point: str) -> None:
        queue = self.faults.get(point)
        if queue:
            raise queue.pop(0)


class FakeCursor:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Any = None) -> None:
        self.conn.execute(sql, params)

    def fetchone(self) -> Any:
        return self.conn.last_row

    def fetchall(self) -> list[Any]:
        return [] if self.conn.last_row is None else [self.conn.last_row]

    def close(self) -> None:
        pass


class FakeConn:
    """Raw driver connection. ``pymssql_like``: commit goes through COMMIT TRAN/BEGIN TRAN."""

    def __init__(self, server: FakeServer, pymssql_like: bool, autocommit: bool = False) -> None:
        self.server = server
        self.pending: list[str] = []
        self.dead = False
        self.last_row: Any = None
        self.isolation: str | None = None
        self._split_commit = pymssql_like
        self.autocommit_state = autocommit
        self.rollbacks = 0
        self.trancount = 0 if autocommit else 1

    def _check(self) -> None:
        if self.dead:
            raise pymssql.InterfaceError("Not connected to any MS SQL server")

    def cursor(self) -> FakeCursor:
        self._check()
        return FakeCursor(self)

    def execute(self, sql: str, params: Any) -> None:
        self._check()
        self.server.statements.append(sql)
        if sql == "COMMIT TRAN":
            self._commit()
        elif sql in (COMMIT_BATCH, COMMIT_REOPEN_BATCH):
            found = self.trancount
            if found == 1:
                self._commit()
            if sql == COMMIT_REOPEN_BATCH and self.trancount == 0:
                self.trancount = 1       # IF @@TRANCOUNT = 0 BEGIN TRAN
            self.last_row = (found,)
        elif sql == "BEGIN TRAN":
            self.trancount += 1
        elif sql.startswith("SET TRANSACTION ISOLATION LEVEL"):
            self.isolation = sql.rsplit("LEVEL ", 1)[1]
        elif sql == "IF @@TRANCOUNT > 0 ROLLBACK TRAN":
            self.rollback()
        elif sql == "VERIFY":
            self._die_on("verify")
            self.last_row = (params in self.server.ledger,)
        else:  # "WORK", unit id
            self._die_on("execute")
            self.pending.append(params)

    def _die_on(self, point: str) -> None:
        try:
            self.server.fire(point)
        except BaseException as exc:
            if _is_dead(exc):
                self.dead = True
            raise

    def _commit(self) -> None:
        self._die_on("commit_before")  # lost before the server applied it
        self.server.ledger.extend(self.pending)
        self.pending = []
        self.trancount = 0
        self._die_on("commit_after")  # applied, then the socket died

    def commit(self) -> None:
        self._check()
        self._commit()

    def rollback(self) -> None:
        self._check()
        self.rollbacks += 1
        self.server.fire("rollback")
        self.pending = []
        self.trancount = 0 if self.autocommit_state else 1


def _is_dead(exc: BaseException) -> bool:
    from mssql_pool.classify import is_disconnect

    return is_disconnect(exc)


class Proxy:
    def __init__(self, raw: FakeConn) -> None:
        self.raw = raw
        self.invalidated: str | None = None

    def cursor(self) -> FakeCursor:
        return self.raw.cursor()

    def commit(self) -> None:
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def invalidate(self, reason: str | None = None) -> None:
        self.invalidated = reason or "x"


class FakePool:
    def __init__(self, server: FakeServer, *, pymssql_like: bool = True,
                 autocommit: bool = False) -> None:
        self.server = server
        self.pymssql_like = pymssql_like
        self.autocommit = autocommit
        self.handed_out: list[Proxy] = []
        self.timeouts: list[float | None] = []
        self.returned_pending: list[list[str]] = []

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Proxy]:
        self.timeouts.append(timeout)
        self.server.fire("acquire")
        proxy = Proxy(FakeConn(self.server, self.pymssql_like, self.autocommit))
        self.handed_out.append(proxy)
        try:
            yield proxy
        finally:
            # the real pool rolls back leftover work on return
            self.returned_pending.append(list(proxy.raw.pending))
            proxy.raw.pending = []

    @property
    def invalidated(self) -> list[str | None]:
        return [p.invalidated for p in self.handed_out if p.invalidated]


def fast_policy(**kw: Any) -> RetryPolicy:
    clock = FakeClock(0.0)
    kw.setdefault("backoff", FixedBackoff(0.01))
    return RetryPolicy(clock=clock, sleep=clock.sleep, random=lambda: 0.5, **kw)


def work(conn: Any, uid: str, *, extra: str = "") -> str:
    conn.cursor().execute("WORK", uid)
    return f"done {uid}{extra}"


@pytest.fixture(params=[True, False], ids=["pymssql", "dbapi"])
def pool(request: pytest.FixtureRequest) -> FakePool:
    return FakePool(FakeServer(), pymssql_like=request.param)


# --------------------------------------------------------------------------- happy path
def test_commits_once_and_returns(pool: FakePool) -> None:
    assert run_transaction(pool, work, "u1", extra="!", policy=fast_policy()) == "done u1!"
    assert pool.server.ledger == ["u1"]
    assert pool.invalidated == []


def test_pymssql_commit_reopens_its_transaction_in_the_same_batch() -> None:
    pool = FakePool(FakeServer(), pymssql_like=True)
    run_transaction(pool, work, "u1", policy=fast_policy())
    assert pool.server.statements == ["WORK", COMMIT_REOPEN_BATCH]   # no trip after it
    raw = pool.handed_out[0].raw
    assert raw.rollbacks == 0 and raw.trancount == 1   # pymssql's BEGIN TRAN re-opened
    assert pool.server.ledger == ["u1"]


def test_pymssql_autocommit_mode_opens_its_own_transaction() -> None:
    pool = FakePool(FakeServer(), pymssql_like=True, autocommit=True)
    run_transaction(pool, work, "u1", policy=fast_policy())
    assert pool.server.statements == ["BEGIN TRAN", "WORK", COMMIT_BATCH]


def test_isolation_level(pool: FakePool) -> None:
    run_transaction(pool, work, "u1", isolation_level="repeatable_read", policy=fast_policy())
    assert pool.handed_out[0].raw.isolation == "REPEATABLE READ"
    with pytest.raises(ConfigError) as ei:
        run_transaction(pool, work, "u2", isolation_level="chaos")
    assert ei.value.parameter == "isolation_level"


def test_acquire_timeout_bounded_by_deadline(pool: FakePool) -> None:
    run_transaction(pool, work, "u1", policy=fast_policy(deadline=7.0))
    assert pool.timeouts == [pytest.approx(7.0)]


# --------------------------------------------------------------------------- retries
@pytest.mark.parametrize("number", [1205, 1222, 40613, 40501, 10928])
def test_retryable_errors_rerun_whole_unit(pool: FakePool, number: int) -> None:
    pool.server.fault("execute", err(number))
    policy = fast_policy(deadline=None, max_attempts=3)
    assert run_transaction(pool, work, "u1", policy=policy) == "done u1"
    assert pool.server.ledger == ["u1"]
    assert len(pool.handed_out) == 2
    # the failed attempt was rolled back on a live connection
    assert pool.handed_out[0].raw.rollbacks + (pool.handed_out[0].raw.autocommit_state) >= 1
    assert pool.invalidated == []


def test_lock_timeout_rolls_back_then_retries(pool: FakePool) -> None:
    pool.server.fault("execute", err(1222))
    run_transaction(pool, work, "u1", policy=fast_policy())
    first = pool.handed_out[0].raw
    assert first.rollbacks == 1 and not first.dead
    assert pool.server.ledger == ["u1"]


def test_dead_connection_is_invalidated_not_rolled_back(pool: FakePool) -> None:
    pool.server.fault("execute", dead())
    run_transaction(pool, work, "u1", policy=fast_policy())
    first = pool.handed_out[0]
    assert first.invalidated and first.raw.rollbacks == 0
    assert pool.server.ledger == ["u1"]


def test_non_retryable_propagates_at_once_rolled_back(pool: FakePool) -> None:
    e = err(2627, "Violation of PRIMARY KEY constraint")
    pool.server.fault("execute", e)
    with pytest.raises(pymssql.OperationalError) as ei:
        run_transaction(pool, work, "u1", policy=fast_policy())
    assert ei.value is e
    assert len(pool.handed_out) == 1 and pool.handed_out[0].raw.rollbacks == 1
    assert pool.server.ledger == []


def test_user_exception_propagates_unchanged(pool: FakePool) -> None:
    def bad(conn: Any) -> None:
        conn.cursor().execute("WORK", "u1")
        raise KeyError("nope")

    with pytest.raises(KeyError):
        run_transaction(pool, bad, policy=fast_policy())
    assert pool.server.ledger == [] and len(pool.handed_out) == 1


def test_exhausted(pool: FakePool) -> None:
    pool.server.fault("execute", *[err(1205) for _ in range(3)])
    with pytest.raises(RetryExhausted) as ei:
        run_transaction(pool, work, "u1", policy=fast_policy(max_attempts=3))
    assert len(ei.value.attempts) == 3 and pool.server.ledger == []


def test_failed_rollback_invalidates() -> None:
    pool = FakePool(FakeServer(), pymssql_like=False)
    pool.server.fault("execute", err(1222))
    pool.server.fault("rollback", err(50000, "rollback broke"))
    run_transaction(pool, work, "u1", policy=fast_policy())
    assert pool.handed_out[0].invalidated == "rollback failed"
    assert pool.server.ledger == ["u1"]


def test_policy_history_does_not_leak_between_calls(pool: FakePool) -> None:
    pool.server.fault("execute", err(1205))
    p = fast_policy(max_attempts=2)
    run_transaction(pool, work, "u1", policy=p)
    pool.server.fault("execute", err(1205))
    run_transaction(pool, work, "u2", policy=p)  # would be exhausted if history leaked
    assert pool.server.ledger == ["u1", "u2"]


def test_commit_error_on_live_connection_is_an_ordinary_error(pool: FakePool) -> None:
    pool.server.fault("commit_before", err(1205))
    run_transaction(pool, work, "u1", policy=fast_policy())
    assert pool.server.ledger == ["u1"] and pool.invalidated == []


# --------------------------------------------------------------------------- ambiguous commit
def test_connection_lost_during_commit_raises_commit_unknown(pool: FakePool) -> None:
    e = dead()
    pool.server.fault("commit_after", e)
    with pytest.raises(CommitUnknownError) as ei:
        run_transaction(pool, work, "u1", policy=fast_policy())
    assert ei.value.original is e and ei.value.__cause__ is e
    assert len(ei.value.attempts) == 1
    assert pool.server.ledger == ["u1"]  # it did land, and was not re-run
    assert len(pool.handed_out) == 1 and pool.handed_out[0].invalidated


def test_lost_before_apply_also_unknown_never_rerun_blindly(pool: FakePool) -> None:
    pool.server.fault("commit_before", dead())
    with pytest.raises(CommitUnknownError):
        run_transaction(pool, work, "u1", policy=fast_policy())
    assert pool.server.ledger == []
    assert len(pool.handed_out) == 1


def test_query_timeout_during_commit_is_unknown(pool: FakePool) -> None:
    pool.server.fault("commit_after", err(
        20047, "DB-Lib error message 20003, severity 6:\nAdaptive Server connection timed out\n"))
    with pytest.raises(CommitUnknownError):
        run_transaction(pool, work, "u1", policy=fast_policy())


def test_idempotent_reruns_after_unknown_commit(pool: FakePool) -> None:
    pool.server.fault("commit_before", dead())
    assert run_transaction(pool, work, "u1", idempotent=True, policy=fast_policy()) == "done u1"
    assert pool.server.ledger == ["u1"]
    assert len(pool.handed_out) == 2


def verify_landed(uid: str) -> Any:
    def verify(conn: Any) -> bool:
        cur = conn.cursor()
        cur.execute("VERIFY", uid)
        return bool(cur.fetchone()[0])

    return verify


def test_verify_true_returns_first_result_without_rerun(pool: FakePool) -> None:
    pool.server.fault("commit_after", dead())
    result = run_transaction(pool, work, "u1", verify=verify_landed("u1"), policy=fast_policy())
    assert result == "done u1"
    assert pool.server.ledger == ["u1"]  # applied exactly once
    assert len(pool.handed_out) == 2  # the unit's connection, then verify's fresh one
    assert pool.server.statements.count("WORK") == 1


def test_verify_false_reruns(pool: FakePool) -> None:
    pool.server.fault("commit_before", dead())
    result = run_transaction(pool, work, "u1", verify=verify_landed("u1"), policy=fast_policy())
    assert result == "done u1"
    assert pool.server.ledger == ["u1"]
    assert pool.server.statements.count("WORK") == 2


def test_verify_retried_on_retryable_error_then_unknown(pool: FakePool) -> None:
    pool.server.fault("commit_after", dead())
    pool.server.fault("verify", err(40613))
    assert run_transaction(pool, work, "u1", verify=verify_landed("u1"),
                           policy=fast_policy()) == "done u1"
    assert pool.server.ledger == ["u1"]
    pool2 = FakePool(FakeServer(), pymssql_like=pool.pymssql_like)
    pool2.server.fault("commit_after", dead())
    pool2.server.fault("verify", err(102, "syntax"))
    with pytest.raises(CommitUnknownError) as ei:
        run_transaction(pool2, work, "u1", verify=verify_landed("u1"), policy=fast_policy())
    assert "verify" in str(ei.value)


def test_a_connection_lost_after_the_commit_applied_is_an_unknown_outcome() -> None:
    # COMMIT and the BEGIN TRAN that re-opens pymssql's transaction are one batch: a
    # connection lost before its reply cannot tell "committed" from "not committed".
    pool = FakePool(FakeServer(), pymssql_like=True)
    pool.server.fault("commit_after", dead())
    with pytest.raises(CommitUnknownError):
        run_transaction(pool, work, "u1", policy=fast_policy())
    assert pool.server.ledger == ["u1"]
    assert pool.handed_out[0].invalidated


# --------------------------------------------------------------------------- decorator, run
def test_transactional_decorator(pool: FakePool) -> None:
    pool.server.fault("execute", err(1205))

    @transactional(pool, policy=fast_policy())
    def transfer(conn: Any, uid: str) -> str:
        """Move money."""
        return work(conn, uid)

    assert transfer("t1") == "done t1"
    assert transfer.__doc__ == "Move money." and transfer.__name__ == "transfer"
    assert pool.server.ledger == ["t1"]
    with pytest.raises(ConfigError):
        transactional(pool, isolation_level="bogus")


def test_run_refuses_without_idempotent(pool: FakePool) -> None:
    with pytest.raises(ConfigError) as ei:
        run(pool, work, "u1")
    assert ei.value.parameter == "idempotent"
    assert pool.handed_out == []


def test_run_idempotent_retries_including_lost_commit(pool: FakePool) -> None:
    pool.server.fault("execute", dead())
    pool.server.fault("commit_before", dead())
    assert run(pool, work, "u1", idempotent=True, policy=fast_policy()) == "done u1"
    assert pool.server.ledger == ["u1"]
    assert len(pool.handed_out) == 3


def test_bad_arguments() -> None:
    pool = FakePool(FakeServer())
    with pytest.raises(ConfigError):
        run_transaction(pool, "not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        run_transaction(pool, work, "u", verify=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        run_transaction(pool, work, "u", policy="fast")  # type: ignore[arg-type]
    assert TRANSACTION_POLICY.max_attempts == 5


# --------------------------------------------------------------------------- with the real pool
class TestWithRealPool:
    """run_transaction through ConnectionPool's own proxy on the fake driver (fakedb)."""

    def make(self) -> tuple[Any, Any, Any]:
        from fakedb import FakeDB, pool_factory

        db = FakeDB()
        clock = FakeClock()
        cm = pool_factory(db, clock, min_size=1, max_size=2, check=None)
        return db, clock, cm

    def test_deadlock_retried_and_connection_kept(self) -> None:
        db, _clock, cm = self.make()
        with cm as make:
            pool = make()
            db.fail_next("execute", 1, error=err(1205, "deadlocked"))

            def unit(conn: Any) -> str:
                conn.cursor().execute("UPDATE acct SET bal = 1")
                return "ok"

            assert pool.run_transaction(unit, policy=fast_policy()) == "ok"
            st = pool.get_stats()
            assert st["connections_discarded"] == 0 and st["pool_size"] == 1
            assert db.connections[0].commits == 1

    def test_lost_commit_is_unknown_and_the_connection_discarded(self) -> None:
        db, _clock, cm = self.make()
        with cm as make:
            pool = make()
            db.fail_next("commit", 1, error=dead())

            def unit(conn: Any) -> None:
                conn.cursor().execute("UPDATE acct SET bal = 1")

            with pytest.raises(CommitUnknownError):
                pool.run_transaction(unit, policy=fast_policy())
            assert pool.get_stats()["connections_discarded"] + pool.get_stats()[
                "connections_lost"] >= 1
            assert all(c.closed for c in db.connections[:1])
            # the next unit gets a fresh connection and works
            assert pool.run_transaction(lambda conn: 7, policy=fast_policy()) == 7

    def test_delegates_on_the_pool(self) -> None:
        _db, _clock, cm = self.make()
        with cm as make:
            pool = make()

            @pool.transactional(policy=fast_policy())
            def unit(conn: Any, x: int) -> int:
                conn.cursor().execute("SELECT 1")
                return x + 1

            assert unit(1) == 2
            assert pool.run(lambda conn: 5, idempotent=True, policy=fast_policy()) == 5
            with pytest.raises(ConfigError):
                pool.run(lambda conn: 5)


# --------------------------------------------------------------------------- unbalanced units
def test_a_unit_leaving_its_own_transaction_open_is_rolled_back_and_reported() -> None:
    pool = FakePool(FakeServer(), pymssql_like=True)

    def nested(conn: Any) -> None:
        conn.cursor().execute("BEGIN TRAN")
        conn.cursor().execute("WORK", "u1")

    with pytest.raises(UnbalancedTransactionError) as ei:
        run_transaction(pool, nested, policy=fast_policy())
    assert ei.value.trancount == 2
    assert pool.server.ledger == []                      # nothing committed
    assert len(pool.handed_out) == 1                     # never run again
    assert pool.handed_out[0].raw.rollbacks == 1
    again = pickle.loads(pickle.dumps(ei.value))
    assert again.trancount == 2 and str(again) == str(ei.value)
