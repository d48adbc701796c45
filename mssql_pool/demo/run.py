"""The run: the pool, the workers, the chaos thread and the progress line, and
``demo_main`` that prints (and optionally saves and plots) the report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from ..classify import ErrorKind, retry_if_kind, retry_if_retryable
from ..pool import ConnectionPool
from ..retry import ExponentialBackoff, RetryPolicy
from .backends import Backend, EmbeddedBackend, RealServerBackend
from .plot import write_plot
from .report import DemoReport, print_report, recovery_rows, timeline_series
from .schedule import FaultPlan, make_schedule
from .workload import Recorder, check_invariant, drop_schema, read_state, setup_schema, worker

log = logging.getLogger("mssql_pool.demo")  # one logger for the whole demo


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
    backend: Backend = RealServerBackend(url) if url else EmbeddedBackend()
    report = DemoReport(backend=backend.description, threads=threads, duration=duration, seed=seed)
    try:
        plans = _plans_for(backend, seed, duration) if chaos else []
        rec = Recorder(threads)
        policy = _demo_policy(rec)
        http_server: tuple[Any, Any] | None = None
        min_size, max_size = max(1, threads // 2), threads + 2
        pool = ConnectionPool(
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

            from ..metrics import register

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
            setup_schema(pool, accounts, real=url is not None)
            stop = threading.Event()
            chaos_runner = Chaos(backend, plans, rec, seed, stats=pool.get_stats)
            prog = Progress(rec, pool, progress, err, lambda: chaos_runner.current, duration)
            workers = [
                threading.Thread(
                    target=worker,
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
            balances, ledger = read_state(pool)
            report.invariant = check_invariant(balances, ledger, accounts, rec)
            report.pool_stats = dict(pool.get_stats())
            if url and not keep_tables:
                drop_schema(pool)
        finally:
            pool.close(timeout=10.0)
            if http_server is not None:
                http_server[0].shutdown()
                http_server[0].server_close()
                http_server[1].join(5.0)
        report.faults = recovery_rows(plans, rec, report.elapsed, start_stats, report.pool_stats)
        report.counts = dict(rec.counts)
        report.retry_kinds = dict(rec.retry_kinds)
        report.pool_events = dict(rec.pool_events)   # complete: close() delivered them
        report.discards = dict(rec.discards)
        report.unexpected = dict(rec.unexpected)
        report.unknown_detail = list(rec.unknown_detail)
        report.timeline = timeline_series(rec, report.elapsed)
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
    return RetryPolicy(
        max_attempts=40,
        deadline=60.0,
        backoff=ExponentialBackoff(base=0.05, factor=2.0, cap=1.0, jitter="full"),
        retry_on=retry_if_retryable | retry_if_kind(ErrorKind.QUERY_TIMEOUT),
        name="demo",   # its retries reach the report as the pool's retry_attempt events
    )


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
