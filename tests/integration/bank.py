"""The money-transfer workload the pool's integration tests share: the bank's tables
(``acct``, ``ledger``), one transfer, the retry policy, reading the state back, the
invariant (money neither created nor destroyed, no transfer applied twice, every
acknowledged one landed) and a chaos thread paced by the workload's progress."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import pymssql
import pytest

from mssql_pool import ConnectionPool
from mssql_pool.errors import CommitUnknownError
from mssql_pool.retry import ExponentialBackoff, RetryPolicy

ACCOUNTS = 10
INITIAL = 1000
CREATE_TABLES = (
    "CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL)",
    "CREATE TABLE ledger (tid VARCHAR(40) PRIMARY KEY, src INT NOT NULL, "
    "dst INT NOT NULL, amount INT NOT NULL)",
)


class Book:
    """What the workers planned and were told, per transfer id, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.planned: dict[str, tuple[int, int, int]] = {}
        self.outcomes: dict[str, str] = {}
        self.unexpected: list[BaseException] = []

    def run(self, tid: str, move: tuple[int, int, int], unit: Callable[[], object]) -> None:
        """Plan transfer ``tid`` (src, dst, amount), run ``unit`` (which must return the
        tid) and record "ok", "unknown" (CommitUnknownError) or the unexpected error."""
        with self.lock:
            self.planned[tid] = move
        try:
            self._record(tid, unit())
        except BaseException as exc:  # noqa: BLE001 - recorded and asserted on
            self._record(tid, exc)

    async def run_async(self, tid: str, move: tuple[int, int, int],
                        unit: Callable[[], Awaitable[object]]) -> None:
        """:meth:`run` for a coroutine function; a cancellation is no outcome: it
        propagates."""
        with self.lock:
            self.planned[tid] = move
        try:
            self._record(tid, await unit())
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on
            self._record(tid, exc)

    def _record(self, tid: str, result: object) -> None:
        """``result`` is what the unit returned (its tid, when all went well) or raised."""
        if result != tid and not isinstance(result, BaseException):
            result = AssertionError(f"{tid}: the unit returned {result!r}")
        if isinstance(result, CommitUnknownError):
            outcome = "unknown"
        elif isinstance(result, BaseException):
            outcome = f"error {type(result).__name__}"
            with self.lock:
                self.unexpected.append(result)
        else:
            outcome = "ok"
        with self.lock:
            self.outcomes[tid] = outcome


def moves(seed: int, count: int, prefix: str) -> Iterator[tuple[str, tuple[int, int, int]]]:
    """``count`` transfers drawn from ``random.Random(seed)``, each as its tid
    (``{prefix}-{i}``) and its (src, dst, amount)."""
    rnd = random.Random(seed)
    for i in range(count):
        src, dst = rnd.sample(range(ACCOUNTS), 2)
        yield f"{prefix}-{i}", (src, dst, rnd.randint(1, 50))


def paced(stop: threading.Event, progress: Callable[[], int], every: int) -> Iterator[None]:
    """Yield once per ``every`` finished units until ``stop``: faults paced by progress,
    not by time, so that faults nobody consumes cannot pile up on a slow machine."""
    mark = 0
    while not stop.wait(0.005):
        if progress() < mark + every:
            continue
        mark = progress()
        yield


def pool_options(name: str, size: int, **kw: Any) -> dict[str, Any]:
    """The workload pools' options: 2 connections kept open, ``size`` at most, a 10 s
    checkout timeout; ``kw`` overrides any of them."""
    return {"min_size": 2, "max_size": size, "timeout": 10.0, "name": name, **kw}


def policy(**kw: Any) -> RetryPolicy:
    kw.setdefault("max_attempts", 30)
    kw.setdefault("deadline", 20.0)
    return RetryPolicy(backoff=ExponentialBackoff(0.01, 2.0, 0.2, "full"), name="test", **kw)


def create_bank(conn: Any, accounts: int = ACCOUNTS) -> None:
    """The two tables and ``accounts`` accounts of INITIAL each, on a DB-API connection."""
    cur = conn.cursor()
    for sql in CREATE_TABLES:
        cur.execute(sql)
    for i in range(accounts):
        cur.execute("INSERT INTO acct (id, bal) VALUES (%s, %s)", (i, INITIAL))


def setup_bank(pool: ConnectionPool) -> None:
    pool.run_transaction(create_bank, policy=policy())


def transfer(conn: Any, tid: str, src: int, dst: int, amount: int) -> str:
    cur = conn.cursor()
    cur.execute("UPDATE acct SET bal = bal - %s WHERE id = %s", (amount, src))
    cur.execute("UPDATE acct SET bal = bal + %s WHERE id = %s", (amount, dst))
    cur.execute("INSERT INTO ledger (tid, src, dst, amount) VALUES (%s, %s, %s, %s)",
                (tid, src, dst, amount))
    return tid


def landed(tid: str) -> Any:
    def verify(conn: Any) -> bool:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM ledger WHERE tid = %s", (tid,))
        return int(cur.fetchone()[0]) == 1

    return verify


def read_state(server: Any) -> tuple[dict[int, int], list[tuple[str, int, int, int]]]:
    conn = pymssql.connect(**server.connect_kwargs())
    try:
        cur = conn.cursor()
        cur.execute("SELECT id, bal FROM acct")
        bal = {int(i): int(b) for i, b in cur.fetchall()}
        cur.execute("SELECT tid, src, dst, amount FROM ledger")
        ledger = [(str(t), int(s), int(d), int(a)) for t, s, d, a in cur.fetchall()]
        return bal, ledger
    finally:
        conn.close()


def assert_only_transfer(server: Any, tid: str, src: int, dst: int, amount: int) -> None:
    bal, ledger = read_state(server)
    assert ledger == [(tid, src, dst, amount)]
    assert bal[src] == INITIAL - amount and bal[dst] == INITIAL + amount


def check_invariants(
    server: Any,
    outcomes: dict[str, str],
    planned: dict[str, tuple[int, int, int]],
    accounts: int = ACCOUNTS,
) -> Counter[str]:
    bal, ledger = read_state(server)
    assert sum(bal.values()) == accounts * INITIAL, "money was created or destroyed"
    applied = Counter(t for t, *_ in ledger)
    assert all(n == 1 for n in applied.values()), "a transfer was applied twice"
    # balances are exactly what the applied transfers say
    expected = dict.fromkeys(range(accounts), INITIAL)
    for tid, src, dst, amount in ledger:
        assert planned[tid] == (src, dst, amount)
        expected[src] -= amount
        expected[dst] += amount
    assert bal == expected, "the balances do not match the ledger"
    for tid, outcome in outcomes.items():
        if outcome == "ok":
            assert applied[tid] == 1, f"{tid} reported committed but not applied"
        else:
            assert outcome == "unknown", f"{tid}: unexpected outcome {outcome}"
            assert applied[tid] <= 1
    assert set(applied) <= set(outcomes)
    return Counter(outcomes.values())


FAULT_EVERY = 4  # completed transfers between two injected faults


def kill_a_session(server: Any, rnd: random.Random) -> None:
    """KILL one of the server's sessions, picked by ``rnd`` (nothing when there is none)."""
    busy = [s["spid"] for s in server.sessions()]
    if busy:
        server.kill(rnd.choice(busy))


def chaos(server: Any, stop: threading.Event, rnd: random.Random, counts: Counter[str],
          progress: Callable[[], int]) -> None:
    """Inject one fault per FAULT_EVERY finished transfers until stopped.

    Paced by progress, not by time: faults that nobody consumes (a login fault while no
    one logs in) must not pile up faster than the workload can drain them.
    """
    armed_logins = 0
    for _ in paced(stop, progress, FAULT_EVERY):
        what = rnd.choice(["1205", "1222", "login", "kill", "drop_commit", "none"])
        counts[what] += 1
        if what == "1205":
            server.fail_next(1205, match=r"UPDATE acct", severity=13)
        elif what == "1222":
            server.fail_next(1222, match=r"UPDATE acct")
        elif what == "login":
            # only when the previous ones were consumed: logins are rare in a warm pool
            if server.stats()["logins_failed"] >= armed_logins:
                armed_logins += 2
                server.fail_logins(40613, times=2)
        elif what == "kill":
            kill_a_session(server, rnd)
        elif what == "drop_commit":
            server.drop_next(match=r"\bCOMMIT\b", after_execute=True)


Chaos = Callable[[Any, threading.Event, random.Random, Counter[str], Callable[[], int]], None]


@contextmanager
def chaos_during(server: Any, rnd: random.Random, counts: Counter[str],
                 progress: Callable[[], int], inject: Chaos = chaos) -> Iterator[None]:
    """Run ``inject(server, stop, rnd, counts, progress)`` (:func:`chaos` unless told) on
    a daemon thread while the block runs; then stop it, wait for it (5 s at most) and clear
    the faults left armed on ``server``."""
    stop = threading.Event()
    thread = threading.Thread(target=inject, args=(server, stop, rnd, counts, progress),
                              name="chaos", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5.0)
        server.clear_faults()


async def transfers_under_chaos(server: Any, seed: int, tasks: int, per_task: int,
                                prefix: str, unit: Callable[..., Awaitable[object]],
                                limit: float) -> tuple[Book, Counter[str]]:
    """``tasks`` asyncio tasks each await ``unit(tid, src, dst, amount)`` (which must
    return the tid) for ``per_task`` seeded transfers (tids ``{prefix}{task}-{i}``), all
    within ``limit`` seconds, while :func:`chaos` injects faults; the book of what they
    were told, and the faults injected."""
    book = Book()
    faults: Counter[str] = Counter()

    async def worker(n: int) -> None:
        for tid, move in moves(seed * 100 + n, per_task, f"{prefix}{n}"):
            await book.run_async(tid, move, partial(unit, tid, *move))

    with chaos_during(server, random.Random(seed), faults, lambda: len(book.outcomes)):
        await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(tasks))), limit)
    return book, faults


async def verify_retried_then_given_up(
        server: Any, run: Callable[..., Awaitable[object]], landed_v1: Any,
        unreadable: Any) -> tuple[list[Any], CommitUnknownError]:
    """Two units whose COMMIT reply is lost, run as ``run(tid, verify=..., policy=...)``:
    v1's ``verify=landed_v1`` fails once with 40613, is retried under the policy and says
    v1 landed; v2's ``verify=unreadable`` (a missing table) cannot tell, so v2 raises
    CommitUnknownError naming that 208, with the COMMIT as its only attempt. The retries
    recorded, and v2's error."""
    records: list[Any] = []
    server.drop_next(match=r"\bCOMMIT\b", after_execute=True)
    server.fail_next(40613, match=r"FROM ledger")     # verify's first try
    assert await run("v1", verify=landed_v1, policy=policy(on_retry=records.append)) == "v1"
    server.drop_next(match=r"\bCOMMIT\b", after_execute=True)
    with pytest.raises(CommitUnknownError, match=r"verify\(\) could not tell") as ei:
        await run("v2", verify=unreadable, policy=policy())
    assert "208" in str(ei.value)                 # what verify() ran into
    assert [a.error for a in ei.value.attempts] == [ei.value.original]  # the COMMIT
    return records, ei.value
