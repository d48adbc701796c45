"""Retry-wrapped transactions with real pymssql against the TDS test server.

The money-transfer workload: 8 threads move money between accounts through
``pool.run_transaction`` while the server injects deadlocks (1205), lock timeouts (1222),
failing logins (40613), killed sessions and sockets dropped right after COMMIT executed.
Every transfer writes its id to a ledger table in the same transaction, so afterwards we
can check the promise: the total is unchanged, each transfer is applied exactly once or
was reported as CommitUnknownError (then at most once), and nothing else reached callers.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from functools import partial
from typing import Any

import pymssql
import pytest
from bank import (
    ACCOUNTS,
    INITIAL,
    Book,
    assert_only_transfer,
    chaos_during,
    check_invariants,
    landed,
    moves,
    policy,
    pool_options,
    read_state,
    setup_bank,
    transfer,
)

from mssql_pool import ConnectionPool
from mssql_pool.classify import ErrorKind, classify
from mssql_pool.errors import CommitUnknownError

pytestmark = pytest.mark.timeout(60)

THREADS = 8
PER_THREAD = 40


def make_pool(server: Any, **kw: Any) -> ConnectionPool:
    return ConnectionPool(server.url, **pool_options("tx", THREADS, **kw))


def run_workload(server: Any, pool: ConnectionPool, *, verify: bool,
                 seed: int) -> tuple[dict[str, str], dict[str, tuple[int, int, int]],
                                     Counter[str], list[BaseException]]:
    book = Book()
    faults: Counter[str] = Counter()

    def worker(n: int) -> None:
        for tid, move in moves(seed * 100 + n, PER_THREAD, f"t{n}"):
            kw: dict[str, Any] = {"verify": landed(tid)} if verify else {}
            book.run(tid, move, partial(
                pool.run_transaction, transfer, tid, *move, policy=policy(), **kw))

    threads = [threading.Thread(target=worker, args=(n,), name=f"transfer-{n}", daemon=True)
               for n in range(THREADS)]
    with chaos_during(server, random.Random(seed), faults, lambda: len(book.outcomes)):
        for t in threads:
            t.start()
        for t in threads:
            t.join(45.0)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    return book.outcomes, book.planned, faults, book.unexpected


@pytest.mark.parametrize("verify,seed", [(False, 5), (True, 11)], ids=["plain", "verify"])
def test_transfers_survive_chaos(tds_server: Any, verify: bool, seed: int) -> None:
    """Without verify= each transfer is applied exactly once or reported unknown (then at
    most once); with verify= every transfer is applied exactly once."""
    with make_pool(tds_server) as pool:
        setup_bank(pool)
        outcomes, planned, faults, unexpected = run_workload(tds_server, pool, verify=verify,
                                                             seed=seed)
        assert unexpected == [], [repr(e) for e in unexpected[:5]]
        summary = check_invariants(tds_server, outcomes, planned)
    assert len(outcomes) == THREADS * PER_THREAD
    assert sum(faults.values()) > 10  # the chaos really ran
    if verify:
        assert summary == Counter({"ok": THREADS * PER_THREAD})
    else:
        assert summary["ok"] > 0


def test_dropped_commit_without_verify_is_reported_unknown(tds_server: Any) -> None:
    with make_pool(tds_server, min_size=1, max_size=2) as pool:
        setup_bank(pool)
        tds_server.drop_next(match=r"\bCOMMIT\b", after_execute=True)
        with pytest.raises(CommitUnknownError) as ei:
            pool.run_transaction(transfer, "u1", 0, 1, 5, policy=policy())
        assert classify(ei.value.original).connection_dead
        _bal, ledger = read_state(tds_server)
        assert [t for t, *_ in ledger] == ["u1"]  # it landed; it was not re-run


def test_dropped_commit_with_verify_returns_once(tds_server: Any) -> None:
    with make_pool(tds_server, min_size=1, max_size=2) as pool:
        setup_bank(pool)
        tds_server.drop_next(match=r"\bCOMMIT\b", after_execute=True)
        assert pool.run_transaction(transfer, "u2", 0, 1, 5, policy=policy(),
                                    verify=landed("u2")) == "u2"
        assert_only_transfer(tds_server, "u2", 0, 1, 5)


def test_deadlock_and_lock_timeout_rerun_the_unit(tds_server: Any) -> None:
    records: list[Any] = []
    with make_pool(tds_server, min_size=1, max_size=2) as pool:
        setup_bank(pool)
        tds_server.fail_next(1205, match=r"UPDATE acct", severity=13)
        tds_server.fail_next(1222, match=r"INSERT INTO ledger")
        pool.run_transaction(transfer, "u3", 2, 3, 7, policy=policy(on_retry=records.append))
        assert_only_transfer(tds_server, "u3", 2, 3, 7)
    assert [r.kind for r in records] == [ErrorKind.DEADLOCK, ErrorKind.LOCK_TIMEOUT]
    assert [r.number for r in records] == [1205, 1222]


def test_killed_session_reruns_on_a_fresh_connection(tds_server: Any) -> None:
    kinds: list[ErrorKind] = []
    with make_pool(tds_server, min_size=1, max_size=2) as pool:
        setup_bank(pool)
        state = {"killed": False}

        def unit(conn: Any) -> str:
            if not state["killed"]:
                state["killed"] = True
                cur = conn.cursor()
                cur.execute("SELECT @@SPID")
                tds_server.kill(int(cur.fetchone()[0]))
            return transfer(conn, "u4", 4, 5, 3)

        pool.run_transaction(unit, policy=policy(on_retry=lambda r: kinds.append(r.kind)))
        _bal, ledger = read_state(tds_server)
    assert kinds and kinds[0] is ErrorKind.DISCONNECT
    assert [t for t, *_ in ledger] == ["u4"]


def test_non_retryable_error_propagates_rolled_back(tds_server: Any) -> None:
    with make_pool(tds_server, min_size=1, max_size=2) as pool:
        setup_bank(pool)

        def bad(conn: Any) -> None:
            transfer(conn, "u5", 0, 1, 5)
            conn.cursor().execute("SELECT nope FROM no_such_table")

        start = time.monotonic()
        with pytest.raises(pymssql.ProgrammingError) as ei:
            pool.run_transaction(bad, policy=policy())
        assert time.monotonic() - start < 5.0
        assert classify(ei.value).kind is ErrorKind.PROGRAMMING
        bal, ledger = read_state(tds_server)
    assert ledger == [] and bal[0] == INITIAL


def test_run_statement_level_idempotent(tds_server: Any) -> None:
    with make_pool(tds_server, min_size=1, max_size=2) as pool:
        setup_bank(pool)
        tds_server.fail_next(1205, match=r"SELECT SUM")

        def total(conn: Any) -> int:
            cur = conn.cursor()
            cur.execute("SELECT SUM(bal) FROM acct")
            return int(cur.fetchone()[0])

        assert pool.run(total, idempotent=True, policy=policy()) == ACCOUNTS * INITIAL


def test_isolation_level_is_set_and_restored(tds_server: Any) -> None:
    with make_pool(tds_server, min_size=1, max_size=1) as pool:
        setup_bank(pool)

        def level(conn: Any) -> int:
            cur = conn.cursor()
            cur.execute("SELECT transaction_isolation_level FROM sys.dm_exec_sessions "
                        "WHERE session_id = @@SPID")
            return int(cur.fetchone()[0])

        assert pool.run_transaction(level, isolation_level="SERIALIZABLE") == 4
        assert pool.run_transaction(level) == 2  # READ COMMITTED again after the reset
