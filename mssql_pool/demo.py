"""``mssql-pool demo``: money transfers under chaos, and an honest account of recovery.

What it does, in order:

1. Starts the TDS test server in-process (two of them: the data node, and a second
   node that the redirect step routes logins to), or uses ``--url`` for a real
   server. Creates ``mssql_pool_demo_accounts`` (every account starts with the same
   balance) and ``mssql_pool_demo_transfers`` (the ledger: one row per applied
   transfer, written in the same transaction as the two balance updates).
2. Opens a :class:`~mssql_pool.ConnectionPool` and runs ``--threads`` workers. Each
   worker moves money between random accounts through ``pool.run_transaction``,
   which re-runs a unit that failed with a transient error on a fresh connection.
3. Meanwhile a chaos thread follows a schedule derived from ``--seed`` (same seed,
   same schedule): sessions killed, deadlock victims, a 40613 login burst, a server
   restart, a gateway redirect, a network partition, a lost COMMIT acknowledgement.
4. Reports per fault: errors the application saw, retries, time until every worker
   committed again; then checks the invariant (total balance unchanged, no transfer
   applied twice, every acknowledged transfer in the ledger and no failed one,
   commit-unknown outcomes reconciled with the ledger), and shows the pool's stats.

Exit status: 0 when the invariant holds and no error other than
``CommitUnknownError`` reached the workers; 1 otherwise.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import random
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .errors import CommitUnknownError

__all__ = ["demo_main", "make_schedule", "FaultPlan", "DemoReport", "run_demo"]

log = logging.getLogger("mssql_pool.demo")

ACCOUNTS_TABLE = "mssql_pool_demo_accounts"
LEDGER_TABLE = "mssql_pool_demo_transfers"
INITIAL_BALANCE = 1000
DEMO_APPNAME = "mssql-pool-demo"
DEMO_PASSWORD = "Demo-Secret-1"  # the embedded test server's sa password (not a real secret)
QUERY_TIMEOUT = 2  # seconds (pymssql timeout and login_timeout; process-wide in pymssql)
BUCKET = 0.1  # seconds per timeline bucket


# ---------------------------------------------------------------------- schedule
@dataclass
class FaultPlan:
    """One scheduled fault. ``at`` and ``window`` are seconds from the workload start."""

    key: str
    label: str
    at: float
    window: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    # Filled in while running:
    started: float | None = None
    ended: float | None = None
    skipped: str = ""
    detail: str = ""
    stats_at_start: dict[str, int] = field(default_factory=dict)


FAULT_KEYS = (
    "kill",
    "deadlock",
    "login_burst",
    "restart",
    "redirect",
    "partition",
    "commit_lost",
)


def make_schedule(
    seed: int, duration: float, keys: tuple[str, ...] = FAULT_KEYS
) -> list[FaultPlan]:
    """A deterministic chaos schedule: the same seed and duration give the same plan.

    Faults are spread over the run, leaving a warm-up before the first and time to
    recover after the last; their order, exact times and sizes come from ``seed``.
    """
    rng = random.Random(seed)
    order = list(keys)
    rng.shuffle(order)
    warmup = min(2.0, duration * 0.12)
    cooldown = min(3.0, duration * 0.2)
    span = max(duration - warmup - cooldown, 0.1)
    slot = span / max(len(order), 1)
    plans: list[FaultPlan] = []
    for i, key in enumerate(order):
        at = round(warmup + i * slot + rng.uniform(0.0, slot * 0.25), 2)
        room = slot * 0.6
        if key == "kill":
            frac = rng.choice((0.5, 0.75, 1.0))
            plans.append(
                FaultPlan(
                    key, f"sessions killed ({int(frac * 100)}%)", at, params={"fraction": frac}
                )
            )
        elif key == "deadlock":
            n = rng.randint(3, 6)
            plans.append(FaultPlan(key, f"deadlock victims (1205 x{n})", at, params={"times": n}))
        elif key == "login_burst":
            n = rng.randint(4, 8)
            plans.append(FaultPlan(key, f"login burst (40613 x{n})", at, params={"times": n}))
        elif key == "restart":
            down = round(min(rng.uniform(0.8, 1.5), room), 2)
            plans.append(FaultPlan(key, f"server restart ({down:.1f} s down)", at, down))
        elif key == "redirect":
            plans.append(FaultPlan(key, "gateway redirect to node 2", at))
        elif key == "partition":
            secs = round(min(rng.uniform(1.5, 2.5), room), 2)
            plans.append(FaultPlan(key, f"network partition ({secs:.1f} s)", at, secs))
        elif key == "commit_lost":
            plans.append(FaultPlan(key, "COMMIT reply lost", at))
    return plans


# ---------------------------------------------------------------------- recording
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

    def on_retry(self, record: Any) -> None:
        t = self.now()
        kind = _kind_of_record(record)
        with self.lock:
            self.counts["retry"] += 1
            self.retry_kinds[kind] += 1
            self.events.append((t, "retry"))

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
                self.counts["retry"] += 1
                self.retry_kinds[_kind_of_record(event)] += 1
                self.events.append((t, "retry"))

    def commit(self, worker: int, tid: int) -> None:
        t = self.now()
        with self.lock:
            self.counts["commit"] += 1
            self.committed.add(tid)
            self.events.append((t, "commit"))
        self.commit_times[worker].append(t)  # only this worker appends to its list

    def commit_unknown(self, tid: int, exc: BaseException) -> None:
        t = self.now()
        with self.lock:
            self.counts["unknown"] += 1
            self.unknown.add(tid)
            self.events.append((t, "unknown"))
            if len(self.unknown_detail) < 5:
                self.unknown_detail.append(_describe(exc.__cause__ or exc))

    def app_error(self, tid: int, exc: BaseException) -> None:
        t = self.now()
        with self.lock:
            self.counts["error"] += 1
            self.failed.add(tid)
            self.events.append((t, "error"))
            self.unexpected[_describe(exc)] += 1


def _kind_of_record(record: Any) -> str:
    """``kind number`` of a retry record (AttemptRecord, or a ``retry_attempt`` event),
    e.g. ``deadlock 1205``."""
    info = getattr(record, "error_info", None)
    kind = getattr(record, "kind", None) if info is None else info.kind
    number = getattr(record, "number", None) if info is None else info.number
    if kind is None:
        error = getattr(record, "error", None)
        try:
            from .classify import classify

            info = classify(error) if isinstance(error, BaseException) else None
        except Exception:  # noqa: BLE001 - classification is for the report only
            info = None
        kind, number = (info.kind, info.number) if info else ("?", None)
    text = str(getattr(kind, "value", kind))
    return f"{text} {number}" if number is not None else text


def _describe(exc: BaseException) -> str:
    try:
        from .classify import classify

        info = classify(exc)
        number = f" {info.number}" if info.number is not None else ""
        text = (info.message or str(exc)).splitlines()[0][:120]
        return f"{type(exc).__name__}{number} [{info.kind.value}]: {text}"
    except Exception:  # noqa: BLE001
        text = str(exc).splitlines()[0][:120] if str(exc) else ""
        return f"{type(exc).__name__}: {text}"


# ---------------------------------------------------------------------- backends
class Backend:
    """Where the demo runs, and which faults it can inject there."""

    description = ""

    def conninfo(self) -> dict[str, Any]:
        raise NotImplementedError

    def supports(self, key: str) -> str:
        """Empty string when the fault can be injected, else why not."""
        return "not supported here"

    def inject(self, plan: FaultPlan, rng: random.Random, stop: threading.Event) -> None:
        raise NotImplementedError

    def heal_all(self) -> None:
        """Undo anything still in effect (end of run, or after an error)."""

    def close(self) -> None:
        pass


class EmbeddedBackend(Backend):
    """Two in-process TDS test servers in front of one storage.

    ``node1`` is what the pool dials. ``node2`` shares node1's storage (a replica
    that sees the same data, as after an Azure failover). The redirect step turns
    node1 into a gateway: its logins are answered with a routing token to node2, and
    its sessions are dropped, so the pool reconnects through node1 and ends up on
    node2. From then on the faults that hit sessions, logins and the process hit the
    active node, node2.
    """

    def __init__(self) -> None:
        from .testing import TdsServer

        self.node1 = TdsServer(users={"sa": DEMO_PASSWORD}, database="master", server_name="NODE1")
        self.node1.start()
        self.node2: Any = None
        self.share_problem = ""
        try:
            # a replica: node1's databases on disk, its own sessions and name
            self.node2 = TdsServer(
                users={"sa": DEMO_PASSWORD}, database="master", server_name="NODE2",
                share_data_with=self.node1,
            )
            self.node2.start()
        except Exception as exc:  # noqa: BLE001 - the step is skipped, with the reason
            self.share_problem = f"second node could not start: {exc}"
        self.active = self.node1
        self.description = f"embedded TDS test server at {self.node1.host}:{self.node1.port}" + (
            f", node 2 at {self.node2.host}:{self.node2.port}" if not self.share_problem else ""
        )

    def conninfo(self) -> dict[str, Any]:
        kwargs = dict(self.node1.connect_kwargs())
        kwargs.update(
            port=int(kwargs["port"]),
            tds_version="7.4",
            login_timeout=QUERY_TIMEOUT,
            timeout=QUERY_TIMEOUT,
            appname=DEMO_APPNAME,
        )
        return kwargs

    def supports(self, key: str) -> str:
        if key == "redirect" and self.share_problem:
            return self.share_problem
        return ""

    def inject(self, plan: FaultPlan, rng: random.Random, stop: threading.Event) -> None:
        server = self.active
        where = "node 2" if server is self.node2 else "node 1"
        if plan.key == "kill":
            # The pool may still be reconnecting after the previous fault: give it a
            # moment (bounded) so the kill meets real sessions rather than none.
            wait_until = time.monotonic() + 3.0
            while not server.sessions() and time.monotonic() < wait_until and not stop.is_set():
                stop.wait(0.05)
            spids = sorted(int(info["spid"]) for info in server.sessions())
            victims = (
                rng.sample(spids, max(1, round(len(spids) * plan.params["fraction"])))
                if spids
                else []
            )
            for spid in victims:
                server.kill(spid)
            plan.detail = f"killed {len(victims)} of {len(spids)} sessions on {where}"
        elif plan.key == "deadlock":
            server.fail_next(1205, match=r"(?i)^\s*UPDATE", times=plan.params["times"])
            plan.detail = f"the next {plan.params['times']} UPDATEs on {where} are deadlock victims"
        elif plan.key == "login_burst":
            server.fail_logins(40613, times=plan.params["times"])
            killed = server.kill_all()
            plan.detail = (
                f"{killed} sessions on {where} killed; the next "
                f"{plan.params['times']} logins fail with 40613"
            )
        elif plan.key == "restart":
            server.stop()
            stop.wait(plan.window)
            server.start()
            plan.detail = f"{where} stopped (sessions gone, port closed), started on the same port"
        elif plan.key == "partition":
            server.blackhole()
            stop.wait(plan.window)
            server.heal()
            plan.detail = f"{where} stopped answering without closing sockets, then healed"
        elif plan.key == "commit_lost":
            server.drop_next(match=r"(?i)^\s*COMMIT", after_execute=True)
            plan.detail = (
                f"next COMMIT on {where} executed, then its socket closed before the reply"
            )
        elif plan.key == "redirect":
            self.node1.redirect_to(self.node2)
            self.active = self.node2
            killed = self.node1.kill_all()
            plan.detail = (
                f"node 1 now routes logins to node 2 ({self.node2.host}:"
                f"{self.node2.port}); its {killed} sessions dropped"
            )

    def heal_all(self) -> None:
        for server in (self.node1, self.node2):
            if server is None:
                continue
            try:
                server.heal()
                server.clear_faults()
                if not server.running:
                    server.start()
            except Exception:  # noqa: BLE001 - best effort at the end of the run
                log.debug("healing a demo server failed", exc_info=True)

    def close(self) -> None:
        for server in (self.node2, self.node1):
            if server is not None:
                try:
                    server.close()  # node2's own (unused) data dir goes; node1's last
                except Exception:  # noqa: BLE001
                    log.debug("closing a demo server failed", exc_info=True)


class RealServerBackend(Backend):
    """A real server (``--url``): only what T-SQL can do, i.e. KILL our own sessions."""

    def __init__(self, url: str) -> None:
        from ._dsn import parse_conninfo, redact

        self.kwargs = parse_conninfo(url)
        self.description = f"real server {redact(url)}"

    def conninfo(self) -> dict[str, Any]:
        kwargs = dict(self.kwargs)
        kwargs.setdefault("tds_version", "7.4")
        kwargs.setdefault("login_timeout", 10)
        kwargs.setdefault("timeout", 30)
        kwargs["appname"] = DEMO_APPNAME
        return kwargs

    def supports(self, key: str) -> str:
        if key == "kill":
            return ""
        if key == "deadlock":
            return (
                "not injected on a real server: real deadlocks happen by themselves when "
                "transfers lock accounts in opposite orders, and show up as retries"
            )
        return "needs the TDS test server's fault API (run without --url)"

    def inject(self, plan: FaultPlan, rng: random.Random, stop: threading.Event) -> None:
        import pymssql

        kwargs = dict(self.conninfo(), appname="mssql-pool-demo-admin", autocommit=True)
        admin = pymssql.connect(**kwargs)
        try:
            cur = admin.cursor()
            cur.execute(
                "SELECT session_id FROM sys.dm_exec_sessions WHERE program_name = %s "
                "AND session_id <> @@SPID ORDER BY session_id",
                (DEMO_APPNAME,),
            )
            spids = [int(r[0]) for r in cur.fetchall()]
            victims = (
                rng.sample(spids, max(1, round(len(spids) * plan.params["fraction"])))
                if spids
                else []
            )
            for spid in victims:
                try:
                    cur.execute(f"KILL {spid}")
                except pymssql.Error:
                    pass  # the session ended meanwhile
            plan.detail = f"KILLed {len(victims)} of {len(spids)} sessions from an admin session"
        finally:
            admin.close()


# ---------------------------------------------------------------------- the run
@dataclass
class DemoReport:
    """Everything the final report prints (also written as JSON with ``--json``)."""

    backend: str
    threads: int
    duration: float
    seed: int
    elapsed: float = 0.0
    setup: str = ""
    faults: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    retry_kinds: dict[str, int] = field(default_factory=dict)
    pool_events: dict[str, int] = field(default_factory=dict)
    discards: dict[str, int] = field(default_factory=dict)
    unexpected: dict[str, int] = field(default_factory=dict)
    unknown_detail: list[str] = field(default_factory=list)
    invariant: dict[str, Any] = field(default_factory=dict)
    pool_stats: dict[str, Any] = field(default_factory=dict)
    timeline: dict[str, list[int]] = field(default_factory=dict)
    ok: bool = False


def transfer(conn: Any, tid: int, src: int, dst: int, amount: int) -> None:
    """The unit of work: two balance updates and the ledger row, in one transaction."""
    cur = conn.cursor()
    cur.execute(f"UPDATE {ACCOUNTS_TABLE} SET balance = balance - %d WHERE id = %d", (amount, src))
    cur.execute(f"UPDATE {ACCOUNTS_TABLE} SET balance = balance + %d WHERE id = %d", (amount, dst))
    cur.execute(
        f"INSERT INTO {LEDGER_TABLE} (tid, src, dst, amount) VALUES (%d, %d, %d, %d)",
        (tid, src, dst, amount),
    )


def _setup_schema(pool: Any, accounts: int, real: bool) -> None:
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


def _drop_schema(pool: Any) -> None:
    def drop(conn: Any) -> None:
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {LEDGER_TABLE}")
        cur.execute(f"DROP TABLE IF EXISTS {ACCOUNTS_TABLE}")

    pool.run_transaction(drop)


def _read_state(pool: Any) -> tuple[dict[int, int], list[tuple[int, int, int, int]]]:
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


class Progress:
    """The live progress line on stderr (redrawn on a TTY, plain lines otherwise)."""

    def __init__(
        self,
        rec: Recorder,
        pool: Any,
        mode: str,
        out: TextIO,
        current: Callable[[], str],
        duration: float,
    ) -> None:
        if mode == "auto":
            mode = "line" if out.isatty() else "plain"
        self.mode = mode
        self.rec = rec
        self.pool = pool
        self.out = out
        self.current = current
        self.duration = duration
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name="mssql_pool-demo-progress", daemon=True
        )
        self._last: tuple[float, int] = (0.0, 0)

    def start(self) -> None:
        if self.mode != "off":
            self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(5.0)
        if self.mode == "line":
            width = max(40, shutil.get_terminal_size((120, 24)).columns - 1)
            self.out.write("\r" + " " * width + "\r")
            self.out.flush()

    def line(self) -> str:
        t = self.rec.now()
        with self.rec.lock:
            counts = dict(self.rec.counts)
        commits = counts.get("commit", 0)
        last_t, last_commits = self._last
        rate = (commits - last_commits) / (t - last_t) if t > last_t else 0.0
        self._last = (t, commits)
        try:
            s = self.pool.get_stats()
            pool = (
                f"pool {s.get('pool_size', '?')}/{s.get('pool_max', '?')} "
                f"idle {s.get('pool_available', '?')} waiting {s.get('requests_waiting', '?')}"
            )
        except Exception:  # noqa: BLE001 - a closing pool
            pool = "pool ?"
        return (
            f"{min(t, self.duration):5.1f}s/{self.duration:.0f}s {rate:5.0f} tx/s | "
            f"commits {commits} retries {counts.get('retry', 0)} "
            f"app errors {counts.get('error', 0)} unknown {counts.get('unknown', 0)} | "
            f"{pool} | {self.current() or '-'}"
        )

    def _run(self) -> None:
        interval = 0.25 if self.mode == "line" else 2.0
        width = max(40, shutil.get_terminal_size((120, 24)).columns - 1)
        while not self.stop_event.wait(interval):
            text = self.line()
            if self.mode == "line":
                self.out.write("\r" + text[:width].ljust(width))
            else:
                self.out.write(text + "\n")
            self.out.flush()


class Chaos:
    """The chaos thread: runs the schedule against the backend."""

    def __init__(
        self,
        backend: Backend,
        plans: list[FaultPlan],
        rec: Recorder,
        seed: int,
        stats: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.stats = stats
        self.backend = backend
        self.plans = plans
        self.rec = rec
        self.rng = random.Random(seed * 7919 + 1)
        self.stop_event = threading.Event()
        self.current = ""
        self.thread = threading.Thread(target=self._run, name="mssql_pool-demo-chaos", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.ident is not None:
            self.thread.join(30.0)

    def _run(self) -> None:
        for plan in self.plans:
            if plan.skipped:
                continue
            delay = plan.at - self.rec.now()
            if delay > 0 and self.stop_event.wait(delay):
                return
            self.current = f"FAULT: {plan.label}"
            plan.stats_at_start = dict(self.stats())
            plan.started = self.rec.now()
            try:
                self.backend.inject(plan, self.rng, self.stop_event)
            except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                plan.detail = f"injection failed: {type(exc).__name__}: {exc}"
                log.warning("demo fault %s failed to inject", plan.key, exc_info=True)
                self.backend.heal_all()
            plan.ended = self.rec.now()
            self.current = f"after: {plan.label}"


def _worker(
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


def _row(fault: str, at: float, window: float = 0.0, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "fault": fault,
        "at": at,
        "window": window,
        "app_errors": 0,
        "commit_unknown": 0,
        "retries": 0,
        "logins": 0,
        "logins_failed": 0,
        "recovered_in": None,
        "detail": "",
        "skipped": "",
    }
    row.update(values)
    return row


def _recovery(
    plans: list[FaultPlan],
    rec: Recorder,
    run_end: float,
    start_stats: dict[str, int] | None = None,
    end_stats: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Per fault: errors, retries and logins until the next fault, and the time until
    every worker committed again after the fault cleared."""
    active = [p for p in plans if p.started is not None]
    bounds = [0.0] + [p.started or 0.0 for p in active] + [run_end + 1e9]
    snapshots = [start_stats or {}] + [p.stats_at_start for p in active] + [end_stats or {}]
    events = sorted(rec.events)
    times = [t for t, _ in events]

    from_events = any(kind == "login" for _, kind in events)

    def span(n: int) -> dict[str, int]:
        i, j = bisect.bisect_left(times, bounds[n]), bisect.bisect_left(times, bounds[n + 1])
        counts = Counter(kind for _, kind in events[i:j])
        lo, hi = snapshots[n], snapshots[n + 1]

        def delta(key: str) -> int:
            return max(0, hi.get(key, 0) - lo.get(key, 0)) if lo and hi else 0

        return {
            "app_errors": counts["error"],
            "commit_unknown": counts["unknown"],
            "retries": counts["retry"],
            # the pool's connect / connect_failed events (stats deltas without them)
            "logins": counts["login"] if from_events else delta("connections_num"),
            "logins_failed": counts["login_failed"] if from_events
            else delta("connections_errors"),
        }

    rows = [_row("(before the first fault)", 0.0, **span(0))]
    for n, plan in enumerate(active, start=1):
        cleared = plan.ended if plan.ended is not None else plan.started or 0.0
        worst: float | None = 0.0
        for times_w in rec.commit_times:
            k = bisect.bisect_right(times_w, cleared)
            if k >= len(times_w):
                worst = None
                break
            worst = max(worst or 0.0, times_w[k] - cleared)
        window = (plan.ended or 0.0) - (plan.started or 0.0)
        rows.append(
            _row(
                plan.label,
                plan.started or 0.0,
                window,
                recovered_in=worst,
                detail=plan.detail,
                **span(n),
            )
        )
    rows.extend(_row(p.label, p.at, skipped=p.skipped) for p in plans if p.skipped)
    return rows


def _timeline(rec: Recorder, end: float) -> dict[str, list[int]]:
    n = int(end / BUCKET) + 1
    series = {k: [0] * n for k in ("commit", "retry", "error", "unknown")}
    for t, kind in rec.events:
        i = int(t / BUCKET)
        if 0 <= i < n and kind in series:
            series[kind][i] += 1
    return series


def run_demo(
    *,
    duration: float = 20.0,
    threads: int = 8,
    seed: int = 1,
    accounts: int = 50,
    url: str | None = None,
    chaos: bool = True,
    progress: str = "auto",
    err: TextIO = sys.stderr,
    keep_tables: bool = False,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> DemoReport:
    """Run the demo and return its report (``demo_main`` prints it).

    With ``url`` the demo tables are dropped at the end unless ``keep_tables``;
    ``metrics_port`` serves the pool's Prometheus metrics on that port of
    ``metrics_host`` (loopback unless told otherwise) while it runs.
    """
    import mssql_pool

    backend: Backend = RealServerBackend(url) if url else EmbeddedBackend()
    report = DemoReport(backend=backend.description, threads=threads, duration=duration, seed=seed)
    try:
        plans = _plans_for(backend, seed, duration) if chaos else []
        rec = Recorder(threads)
        policy = _demo_policy(rec)
        http_server: tuple[Any, Any] | None = None
        min_size, max_size = max(1, threads // 2), threads + 2
        pool = mssql_pool.ConnectionPool(
            backend.conninfo(),
            min_size=min_size,
            max_size=max_size,
            timeout=30.0,
            name="demo",
            identify=True,  # ask each new connection which node it reached: counts redirects
            listeners=[rec],  # the report reads the pool's events
        )
        if metrics_port is not None:
            from prometheus_client import CollectorRegistry, start_http_server

            from .metrics import register

            registry = CollectorRegistry()
            register(pool, registry)
            served = start_http_server(metrics_port, addr=metrics_host, registry=registry)
            port = metrics_port
            if isinstance(served, tuple):  # prometheus-client >= 0.17: (server, thread)
                http_server = served
                port = int(served[0].server_address[1])
            shown = f"[{metrics_host}]" if ":" in metrics_host else metrics_host
            err.write(f"metrics: http://{shown}:{port}/metrics\n")
        report.setup = (
            f"pool min_size={min_size} max_size={max_size} timeout=30s; run_transaction "
            f"policy: up to {policy.max_attempts} attempts within {policy.deadline:.0f} s, "
            "exponential backoff 50 ms..1 s (full jitter), retrying the retryable kinds and "
            "statement timeouts; CommitUnknownError is never retried"
        )
        try:
            pool.wait(timeout=30.0)
            _setup_schema(pool, accounts, real=url is not None)
            stop = threading.Event()
            chaos_runner = Chaos(backend, plans, rec, seed, stats=pool.get_stats)
            prog = Progress(rec, pool, progress, err, lambda: chaos_runner.current, duration)
            workers = [
                threading.Thread(
                    target=_worker,
                    args=(i, pool, rec, accounts, seed, stop, policy),
                    name=f"mssql_pool-demo-worker-{i}",
                    daemon=True,
                )
                for i in range(threads)
            ]
            start_stats = dict(pool.get_stats())
            rec.t0 = rec.clock()
            try:
                for w in workers:
                    w.start()
                chaos_runner.start()
                prog.start()
                time.sleep(duration)
            finally:  # also on Ctrl-C: stop the chaos, heal, let the workers finish
                stop.set()
                chaos_runner.stop()
                backend.heal_all()
                for w in workers:
                    if w.is_alive() or w.ident is not None:
                        w.join(60.0)
                prog.stop()
            report.elapsed = rec.now()
            stuck = [w.name for w in workers if w.is_alive()]
            if stuck:
                rec.unexpected[f"workers still running after 60 s: {', '.join(stuck)}"] += 1
            balances, ledger = _read_state(pool)
            report.invariant = check_invariant(balances, ledger, accounts, rec)
            report.pool_stats = dict(pool.get_stats())
            if url and not keep_tables:
                _drop_schema(pool)
        finally:
            pool.close(timeout=10.0)
            if http_server is not None:
                http_server[0].shutdown()
                http_server[0].server_close()
                http_server[1].join(5.0)
        report.faults = _recovery(plans, rec, report.elapsed, start_stats, report.pool_stats)
        report.counts = dict(rec.counts)
        report.retry_kinds = dict(rec.retry_kinds)
        report.pool_events = dict(rec.pool_events)   # complete: close() delivered them
        report.discards = dict(rec.discards)
        report.unexpected = dict(rec.unexpected)
        report.unknown_detail = list(rec.unknown_detail)
        report.timeline = _timeline(rec, report.elapsed)
        report.ok = bool(report.invariant.get("ok")) and not rec.unexpected
        return report
    finally:
        backend.close()


def _plans_for(backend: Backend, seed: int, duration: float) -> list[FaultPlan]:
    """The seeded schedule, with what the backend cannot do marked skipped (and, when
    most faults are out of reach, the ones it can do repeated in their place)."""
    full = make_schedule(seed, duration)
    for plan in full:
        plan.skipped = backend.supports(plan.key)
    doable = tuple(dict.fromkeys(p.key for p in full if not p.skipped))
    if len(doable) * 2 >= len(full):
        return full
    repeated = make_schedule(seed, duration, keys=doable * 3)
    return repeated + [p for p in full if p.skipped]


def _demo_policy(rec: Recorder) -> Any:
    """Generous retries with short backoff: every fault in the schedule is survivable.

    Statement timeouts are retried too (the partition step causes them): a unit whose
    statement timed out never committed, and a timeout during COMMIT itself is
    reported by run_transaction as CommitUnknownError, never re-run blindly.
    """
    from .classify import ErrorKind, retry_if_kind, retry_if_retryable
    from .retry import ExponentialBackoff, RetryPolicy

    return RetryPolicy(
        max_attempts=40,
        deadline=60.0,
        backoff=ExponentialBackoff(base=0.05, factor=2.0, cap=1.0, jitter="full"),
        retry_on=retry_if_retryable | retry_if_kind(ErrorKind.QUERY_TIMEOUT),
        name="demo",   # its retries reach the report as the pool's retry_attempt events
    )


# ---------------------------------------------------------------------- output
def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def print_report(report: DemoReport, out: TextIO) -> None:
    w = out.write
    w(
        f"\nmssql-pool demo: {report.threads} threads, {report.elapsed:.1f} s, seed {report.seed}, "
        f"{report.backend}\n"
    )
    if report.setup:
        w(f"{report.setup}\n")
    w("\n")
    w(
        f"{'fault':<34} {'at':>6} {'window':>7} {'app errors':>10} {'unknown':>8} "
        f"{'retries':>8} {'logins ok/failed':>17} {'recovered in':>13}\n"
    )
    for row in report.faults:
        if row["skipped"]:
            w(f"{row['fault']:<34} {'':>6} skipped: {row['skipped']}\n")
            continue
        recovered = _fmt_s(row["recovered_in"]) if row["at"] else ""
        if row["at"] and row["recovered_in"] is None:
            recovered = "not before end"
        w(
            f"{row['fault']:<34} {row['at']:>5.1f}s {row['window']:>6.2f}s {row['app_errors']:>10} "
            f"{row['commit_unknown']:>8} {row['retries']:>8} "
            f"{str(row['logins']) + '/' + str(row['logins_failed']):>17} {recovered:>13}\n"
        )
        if row["detail"]:
            w(f"{'':<36}{row['detail']}\n")
    c = report.counts
    commits = c.get("commit", 0)
    rate = commits / report.elapsed if report.elapsed else 0.0
    w(
        f"\nworkload: {commits} transfers committed ({rate:.0f}/s), {c.get('retry', 0)} retries "
        f"({', '.join(f'{k} x{v}' for k, v in sorted(report.retry_kinds.items())) or 'none'}), "
        f"{c.get('error', 0)} error(s) reached the application, "
        f"{c.get('unknown', 0)} commit outcome(s) unknown\n"
    )
    for text, n in sorted(report.unexpected.items(), key=lambda kv: -kv[1]):
        w(f"  unexpected x{n}: {text}\n")
    inv = report.invariant
    if inv:
        for name, res in inv["checks"].items():
            w(f"  {'ok  ' if res['ok'] else 'FAIL'} {name.replace('_', ' ')}: {res['detail']}\n")
        w(
            f"  commit outcome unknown: {inv['commit_unknown']} reported as CommitUnknownError, "
            f"{inv['commit_unknown_landed']} of them landed (found in the ledger), "
            f"{inv['commit_unknown'] - inv['commit_unknown_landed']} did not\n"
        )
        for text in report.unknown_detail:
            w(f"    cause: {text}\n")
        w(
            f"invariant: {'PASS' if inv['ok'] else 'FAIL'} (total balance {inv['total']}, "
            f"{inv['ledger_rows']} ledger rows, no transfer applied twice: "
            f"{'yes' if not inv['duplicates'] else 'NO'})\n"
        )
    s = report.pool_stats
    if s:
        w(
            f"pool: size {s.get('pool_size')}/{s.get('pool_max')}, idle {s.get('pool_available')}, "
            f"waiting {s.get('requests_waiting')}; requests {s.get('requests_num')} "
            f"(timeouts {s.get('requests_timeouts')}, wait {s.get('requests_wait_ms')} ms); "
            f"connections opened {s.get('connections_num')}, failed {s.get('connections_errors')}, "
            f"lost {s.get('connections_lost')}, discarded {s.get('connections_discarded')}; "
            f"checks {s.get('checks_run')} (skipped {s.get('checks_skipped')}, failed "
            f"{s.get('checks_failed')}); resets rollback {s.get('resets_rollback')}, full "
            f"{s.get('resets_full')}"
            + (
                f"; redirects {s['redirects']}, failovers {s.get('failovers', 0)}"
                if "redirects" in s
                else ""
            )
            + "\n"
        )
    ev = report.pool_events
    if ev:
        order = ("connect", "connect_failed", "check_failed", "discard", "reconnect_started",
                 "reconnect_attempt", "reconnect_succeeded", "reconnect_failed", "failover",
                 "redirect", "circuit_opened", "circuit_closed", "retry_attempt",
                 "commit_unknown")
        parts = [f"{k} {ev[k]}" for k in order if ev.get(k)]
        if report.discards:
            why = ", ".join(f"{k} {v}" for k, v in sorted(report.discards.items()))
            parts = [p + f" ({why})" if p.startswith("discard ") else p for p in parts]
        w(f"pool events: {'; '.join(parts)}\n")
    w(f"result: {'PASS' if report.ok else 'FAIL'} (exit {0 if report.ok else 1})\n")


def write_plot(report: DemoReport, path: str) -> None:
    """The timeline: transfers/s and errors/retries per 100 ms, faults shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'mssql_pool[plot]'") from exc
    tl = report.timeline
    xs = [i * BUCKET for i in range(len(tl.get("commit", [])))]
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(11, 6), gridspec_kw={"height_ratios": [2, 1]}
    )
    mids = [x + BUCKET / 2 for x in xs]
    top.plot(mids, [v / BUCKET for v in tl.get("commit", [])], color="tab:blue", lw=1.2)
    top.set_ylabel("transfers committed / s")
    bottom.bar(
        xs, tl.get("retry", []), width=BUCKET, align="edge", color="tab:orange", label="retries"
    )
    bottom.bar(
        xs, tl.get("error", []), width=BUCKET, align="edge", color="tab:red", label="app errors"
    )
    bottom.bar(
        xs,
        tl.get("unknown", []),
        width=BUCKET,
        align="edge",
        color="tab:purple",
        label="commit unknown",
    )
    bottom.set_ylabel("per 100 ms")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right", fontsize=8)
    for row in report.faults:
        if row["skipped"] or not row["at"]:
            continue
        start, width = row["at"], max(row["window"], 0.05)
        for ax in (top, bottom):
            ax.axvspan(start, start + width, color="grey", alpha=0.25)
        top.annotate(
            row["fault"],
            (start, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
        )
    verdict = "invariant PASS" if report.invariant.get("ok") else "invariant FAIL"
    top.set_title(f"mssql-pool demo: {report.threads} threads, seed {report.seed} ({verdict})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def demo_main(args: argparse.Namespace) -> int:
    """``mssql-pool demo``: run, print the report, optionally plot; returns the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("MSSQL_POOL_LOG", "ERROR").upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    report = run_demo(
        duration=args.duration,
        threads=args.threads,
        seed=args.seed,
        accounts=args.accounts,
        url=args.url,
        chaos=not args.no_chaos,
        progress=args.progress,
        keep_tables=args.keep_tables,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )
    print_report(report, sys.stdout)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report.__dict__, fh, indent=1, default=str)
    if args.plot:
        write_plot(report, args.plot)
        sys.stdout.write(f"timeline written to {args.plot}\n")
    return 0 if report.ok else 1
