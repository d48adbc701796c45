"""Exactly once, under a seeded fault schedule: threads move money through
``run_transaction`` (real pymssql, through a TCP proxy, to the TDS test server) while a
chaos thread kills sessions, drops COMMIT replies, cuts the proxied exchange at random
points and byte offsets, makes transactions deadlock victims (1205), makes logins fail
(40613) and restarts the server.

The units vary: half the threads use a pool in pymssql's default mode, half one with
autocommit on; some units nest a balanced transaction of their own; half the threads use
a classifier that retries every OperationalError (it must not make a lost COMMIT run
twice).

Afterwards the books must balance and every transfer must be applied exactly once, or
have been reported as :class:`CommitUnknownError` (then applied at most once). Nothing
else may reach a caller.

Reproducible: ``MSSQL_POOL_SEED`` picks the seed (default 1; the fault schedule and the
transfers follow from it; thread timing still varies). Soak mode: ``MSSQL_POOL_SOAK=N``
runs N times as many transfers.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import pymssql
import pytest
from bank import Book, check_invariants, create_bank, kill_a_session, paced, transfer
from tcp_proxy import TcpProxy

from mssql_pool import ConnectionPool
from mssql_pool.classify import Classifier
from mssql_pool.retry import ExponentialBackoff, RetryPolicy
from mssql_pool.testing.server import TdsServer

SEED = int(os.environ.get("MSSQL_POOL_SEED", "1") or 1)
SOAK = max(1, int(os.environ.get("MSSQL_POOL_SOAK", "1") or 1))

pytestmark = pytest.mark.timeout(90 * SOAK)

ACCOUNTS = 8
THREADS = 6
PER_THREAD = 30 * SOAK
FAULT_EVERY = 3          # finished transfers between two faults
FAULTS = ["kill", "lost_commit_reply", "proxy_cut_exchange", "proxy_cut_all", "1205",
          "40613_logins", "restart", "none"]


#: A user's classifier that retries every pymssql OperationalError: it must not turn a
#: lost COMMIT into a second run.
LOOSE = Classifier().with_exception(pymssql.OperationalError, retryable=True)


def _policy(loose: bool) -> RetryPolicy:
    extra: dict[str, Any] = {}
    if loose:
        extra = {"classifier": LOOSE, "retry_on": lambda e: LOOSE.classify(e).retryable}
    return RetryPolicy(max_attempts=40, deadline=40.0,
                       backoff=ExponentialBackoff(0.01, 2.0, 0.25, "full"), name="once",
                       **extra)


def _nested_transfer(conn: Any, tid: str, src: int, dst: int, amount: int) -> str:
    """The same unit with a balanced transaction of its own inside."""
    cur = conn.cursor()
    cur.execute("BEGIN TRAN")
    transfer(conn, tid, src, dst, amount)
    cur.execute("COMMIT TRAN")
    return tid


def _chaos(server: TdsServer, proxy: TcpProxy, stop: threading.Event, rnd: random.Random,
           counts: Counter[str], progress: Callable[[], int]) -> None:
    """One fault per FAULT_EVERY finished transfers (paced by progress, not time, so faults
    nobody consumes cannot pile up on a slow machine)."""
    armed_logins = 0
    for _ in paced(stop, progress, FAULT_EVERY):
        what = rnd.choice(FAULTS)
        counts[what] += 1
        if what == "kill":
            kill_a_session(server, rnd)
        elif what == "lost_commit_reply":
            server.drop_next(match=r"COMMIT TRAN", after_execute=True)
        elif what == "proxy_cut_exchange":
            proxy.arm(rnd.choice(["request", "after_send", "reply", "after_reply"]),
                      match=rnd.choice(["UPDATE acct", "INSERT INTO ledger", "COMMIT TRAN"]),
                      offset=rnd.randint(1, 80))
        elif what == "proxy_cut_all":
            proxy.cut()
        elif what == "1205":
            server.fail_next(1205, match=r"UPDATE acct", severity=13)
        elif what == "40613_logins":
            if server.stats()["logins_failed"] >= armed_logins:
                armed_logins += 2
                server.fail_logins(40613, times=2)
        elif what == "restart":
            server.stop()
            stop.wait(rnd.uniform(0.0, 0.1))
            server.start()


def test_every_transfer_applied_exactly_once_or_reported_unknown(
        tds_server: TdsServer) -> None:
    server = tds_server
    setup = pymssql.connect(**server.connect_kwargs(), autocommit=True)
    create_bank(setup, ACCOUNTS)
    setup.close()

    proxy = TcpProxy((server.host, server.port)).start()
    url = f"mssql://{server.user}:{server.password}@127.0.0.1:{proxy.port}/master"
    book = Book()
    outcomes, planned, unexpected = book.outcomes, book.planned, book.unexpected
    faults: Counter[str] = Counter()
    stop = threading.Event()

    def worker(n: int, pool: ConnectionPool) -> None:
        rnd = random.Random(SEED * 1000 + n)
        for i in range(PER_THREAD):
            src, dst = rnd.sample(range(ACCOUNTS), 2)
            amount = rnd.randint(1, 40)
            tid = f"t{n}-{i}"
            unit = rnd.choice([transfer, _nested_transfer])
            book.run(tid, (src, dst, amount), partial(
                pool.run_transaction, unit, tid, src, dst, amount,
                policy=_policy(loose=n % 2 == 0)))

    try:
        # Half the threads borrow from a pool in pymssql's default mode, half from one
        # with autocommit on (run_transaction opens the transaction itself there).
        with ConnectionPool(url, min_size=1, max_size=THREADS // 2, timeout=20.0,
                            name="once") as pool, \
                ConnectionPool(url + "?autocommit=true", min_size=1, max_size=THREADS // 2,
                               timeout=20.0, name="once-autocommit") as auto_pool:
            threads = [threading.Thread(target=worker, args=(n, (pool, auto_pool)[n // 3 % 2]),
                                        daemon=True, name=f"once-{n}")
                       for n in range(THREADS)]
            chaos = threading.Thread(target=_chaos, name="once-chaos", daemon=True,
                                     args=(server, proxy, stop, random.Random(SEED), faults,
                                           lambda: len(outcomes)))
            chaos.start()
            for t in threads:
                t.start()
            for t in threads:
                t.join(80.0 * SOAK)
            stop.set()
            chaos.join(10.0)
            assert not any(t.is_alive() for t in threads), "a worker hung"
    finally:
        stop.set()
        proxy.disarm()
        server.clear_faults()
        proxy.close()

    assert unexpected == [], [repr(e) for e in unexpected[:5]]
    check_invariants(server, outcomes, planned, ACCOUNTS)
    assert len(outcomes) == THREADS * PER_THREAD
    assert sum(faults[f] for f in FAULTS if f != "none") >= 20, faults   # the chaos ran
