"""The workload: the bank tables, one transfer, the workers, what they saw, and the
invariant that checks the database against it."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..classify import classify
from ..errors import CommitUnknownError

ACCOUNTS_TABLE = "mssql_pool_demo_accounts"
LEDGER_TABLE = "mssql_pool_demo_transfers"
INITIAL_BALANCE = 1000
DEMO_APPNAME = "mssql-pool-demo"
DEMO_PASSWORD = "Demo-Secret-1"  # the embedded test server's sa password (not a real secret)
QUERY_TIMEOUT = 2  # seconds (pymssql timeout and login_timeout; process-wide in pymssql)


class Recorder:
    """Thread-safe counters and a timeline of what the workers saw, and of the pool's
    events: it is a listener of the pool (``__call__``), so retries, logins and the
    recovery steps in the report are the pool's own events (mssql_pool.events)."""

    def __init__(self, threads: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.t0 = clock()
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.events: list[tuple[float, str]] = []  # (t, "commit"|"retry"|"error"|"unknown")
        self.commit_times: list[list[float]] = [[] for _ in range(threads)]
        self.committed: set[int] = set()
        self.failed: set[int] = set()
        self.unknown: set[int] = set()
        self.attempted: set[int] = set()
        self.retry_kinds: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.unknown_detail: list[str] = []
        self.pool_events: Counter[str] = Counter()   # every pool event, by kind
        self.discards: Counter[str] = Counter()      # discard events, by reason

    def now(self) -> float:
        return self.clock() - self.t0

    def __call__(self, event: Any) -> None:
        """A pool listener: counts every event; retries and logins go on the timeline
        (at the event's own time, on the same monotonic clock as the workers')."""
        kind = event.kind.value
        t = event.time - self.t0
        with self.lock:
            self.pool_events[kind] += 1
            if kind == "discard":
                self.discards[event.reason or "other"] += 1
            elif kind == "connect":
                self.events.append((t, "login"))
            elif kind == "connect_failed" and event.reason != "circuit_open":
                self.events.append((t, "login_failed"))
            elif kind == "retry_attempt":
                self._retry(t, _kind_of_record(event))

    def on_retry(self, record: Any) -> None:
        t = self.now()
        kind = _kind_of_record(record)
        with self.lock:
            self._retry(t, kind)

    def commit(self, worker: int, tid: int) -> None:
        t = self.now()
        with self.lock:
            self._outcome(t, "commit", self.committed, tid)
        self.commit_times[worker].append(t)  # only this worker appends to its list

    def commit_unknown(self, tid: int, exc: BaseException) -> None:
        t = self.now()
        with self.lock:
            self._outcome(t, "unknown", self.unknown, tid)
            if len(self.unknown_detail) < 5:
                self.unknown_detail.append(_describe(exc.__cause__ or exc))

    def app_error(self, tid: int, exc: BaseException) -> None:
        t = self.now()
        with self.lock:
            self._outcome(t, "error", self.failed, tid)
            self.unexpected[_describe(exc)] += 1

    def _retry(self, t: float, kind: str) -> None:
        """A retry of ``kind``, counted and on the timeline (under the lock)."""
        self.counts["retry"] += 1
        self.retry_kinds[kind] += 1
        self.events.append((t, "retry"))

    def _outcome(self, t: float, what: str, tids: set[int], tid: int) -> None:
        """Transfer ``tid``'s outcome (``commit``, ``unknown``, ``error``), counted, kept
        in ``tids`` and on the timeline (under the lock)."""
        self.counts[what] += 1
        tids.add(tid)
        self.events.append((t, what))


def _kind_of_record(record: Any) -> str:
    """``kind number`` of a retry record (AttemptRecord, or a ``retry_attempt`` event),
    e.g. ``deadlock 1205``."""
    info = getattr(record, "error_info", None)
    kind = getattr(record, "kind", None) if info is None else info.kind
    number = getattr(record, "number", None) if info is None else info.number
    if kind is None:
        error = getattr(record, "error", None)
        try:
            info = classify(error) if isinstance(error, BaseException) else None
        except Exception:  # noqa: BLE001 - classification is for the report only
            info = None
        kind, number = (info.kind, info.number) if info else ("?", None)
    text = str(getattr(kind, "value", kind))
    return f"{text} {number}" if number is not None else text


def _describe(exc: BaseException) -> str:
    try:
        info = classify(exc)
        number = f" {info.number}" if info.number is not None else ""
        text = (info.message or str(exc)).splitlines()[0][:120]
        return f"{type(exc).__name__}{number} [{info.kind.value}]: {text}"
    except Exception:  # noqa: BLE001
        text = str(exc).splitlines()[0][:120] if str(exc) else ""
        return f"{type(exc).__name__}: {text}"


def transfer(conn: Any, tid: int, src: int, dst: int, amount: int) -> None:
    """The unit of work: two balance updates and the ledger row, in one transaction."""
    cur = conn.cursor()
    cur.execute(f"UPDATE {ACCOUNTS_TABLE} SET balance = balance - %d WHERE id = %d", (amount, src))
    cur.execute(f"UPDATE {ACCOUNTS_TABLE} SET balance = balance + %d WHERE id = %d", (amount, dst))
    cur.execute(
        f"INSERT INTO {LEDGER_TABLE} (tid, src, dst, amount) VALUES (%d, %d, %d, %d)",
        (tid, src, dst, amount),
    )


def setup_schema(pool: Any, accounts: int, real: bool) -> None:
    def create(conn: Any) -> None:
        cur = conn.cursor()
        if real:
            cur.execute(f"DROP TABLE IF EXISTS {LEDGER_TABLE}")
            cur.execute(f"DROP TABLE IF EXISTS {ACCOUNTS_TABLE}")
        cur.execute(f"CREATE TABLE {ACCOUNTS_TABLE} (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
        cur.execute(
            f"CREATE TABLE {LEDGER_TABLE} (tid BIGINT NOT NULL, src INT NOT NULL, "
            "dst INT NOT NULL, amount INT NOT NULL)"
        )
        for start in range(0, accounts, 500):
            rows = ", ".join(
                f"({i}, {INITIAL_BALANCE})" for i in range(start, min(start + 500, accounts))
            )
            cur.execute(f"INSERT INTO {ACCOUNTS_TABLE} (id, balance) VALUES {rows}")

    pool.run_transaction(create)


def drop_schema(pool: Any) -> None:
    def drop(conn: Any) -> None:
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {LEDGER_TABLE}")
        cur.execute(f"DROP TABLE IF EXISTS {ACCOUNTS_TABLE}")

    pool.run_transaction(drop)


def read_state(pool: Any) -> tuple[dict[int, int], list[tuple[int, int, int, int]]]:
    def read(conn: Any) -> tuple[dict[int, int], list[tuple[int, int, int, int]]]:
        cur = conn.cursor()
        cur.execute(f"SELECT id, balance FROM {ACCOUNTS_TABLE}")
        balances = {int(r[0]): int(r[1]) for r in cur.fetchall()}
        cur.execute(f"SELECT tid, src, dst, amount FROM {LEDGER_TABLE}")
        ledger = [(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in cur.fetchall()]
        return balances, ledger

    result: tuple[dict[int, int], list[tuple[int, int, int, int]]] = pool.run_transaction(read)
    return result


def check_invariant(
    balances: dict[int, int],
    ledger: list[tuple[int, int, int, int]],
    accounts: int,
    rec: Recorder,
) -> dict[str, Any]:
    """Compare the database with what the application was told. Pure function."""
    total = sum(balances.values())
    expected_total = accounts * INITIAL_BALANCE
    per_tid = Counter(row[0] for row in ledger)
    duplicates = sorted(tid for tid, n in per_tid.items() if n > 1)
    landed = set(per_tid)
    expected = {i: INITIAL_BALANCE for i in range(accounts)}
    for _tid, src, dst, amount in ledger:
        expected[src] = expected.get(src, 0) - amount
        expected[dst] = expected.get(dst, 0) + amount
    mismatched = sorted(a for a in expected if balances.get(a) != expected[a])
    lost = sorted(rec.committed - landed)  # acknowledged, not in the ledger
    phantom = sorted(rec.failed & landed)  # reported failed, yet applied
    unattributed = sorted(landed - rec.attempted)
    unknown_landed = sorted(rec.unknown & landed)
    checks = {
        "total_balance": (total == expected_total, f"{total} (expected {expected_total})"),
        "no_duplicates": (not duplicates, f"{len(duplicates)} transfer(s) applied twice"),
        "balances_match_ledger": (
            not mismatched and len(balances) == accounts,
            f"{len(mismatched)} account(s) differ from the ledger",
        ),
        "acknowledged_landed": (not lost, f"{len(lost)} acknowledged transfer(s) missing"),
        "failed_not_applied": (not phantom, f"{len(phantom)} failed transfer(s) applied"),
        "no_unattributed": (not unattributed, f"{len(unattributed)} unknown ledger row(s)"),
    }
    return {
        "ok": all(ok for ok, _ in checks.values()),
        "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
        "ledger_rows": len(ledger),
        "total": total,
        "expected_total": expected_total,
        "commit_unknown": len(rec.unknown),
        "commit_unknown_landed": len(unknown_landed),
        "duplicates": duplicates[:10],
        "lost": lost[:10],
        "phantom": phantom[:10],
    }


def worker(
    idx: int, pool: Any, rec: Recorder, accounts: int, seed: int, stop: threading.Event, policy: Any
) -> None:
    rng = random.Random(seed * 1_000_003 + idx)
    seq = 0
    while not stop.is_set():
        seq += 1
        tid = (idx + 1) * 10_000_000 + seq
        src = rng.randrange(accounts)
        dst = rng.randrange(accounts - 1)
        dst = dst + 1 if dst >= src else dst
        amount = rng.randint(1, 100)
        with rec.lock:
            rec.attempted.add(tid)
        try:
            pool.run_transaction(transfer, tid, src, dst, amount, policy=policy)
        except CommitUnknownError as exc:
            rec.commit_unknown(tid, exc)
        except Exception as exc:  # noqa: BLE001 - the point: count what reached the app
            rec.app_error(tid, exc)
        else:
            rec.commit(idx, tid)
