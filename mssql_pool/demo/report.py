"""The report: per-fault rows, the timeline, and the text printed at the end."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from .schedule import FaultPlan
from .workload import Recorder

BUCKET = 0.1  # seconds per timeline bucket


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


def recovery_rows(
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


def timeline_series(rec: Recorder, end: float) -> dict[str, list[int]]:
    n = int(end / BUCKET) + 1
    series = {k: [0] * n for k in ("commit", "retry", "error", "unknown")}
    for t, kind in rec.events:
        i = int(t / BUCKET)
        if 0 <= i < n and kind in series:
            series[kind][i] += 1
    return series


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
