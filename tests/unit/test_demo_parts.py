"""``mssql-pool demo``'s pure parts: the schedule, the invariant, the report and the plot."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mssql_pool import demo
from mssql_pool.demo.plot import write_plot
from mssql_pool.demo.report import recovery_rows, timeline_series
from mssql_pool.errors import CommitUnknownError


def test_demo_schedule_is_deterministic_and_fits_the_run() -> None:
    a = demo.make_schedule(7, 20.0)
    b = demo.make_schedule(7, 20.0)
    assert [(p.key, p.at, p.window, p.params) for p in a] == [
        (p.key, p.at, p.window, p.params) for p in b
    ]
    assert sorted(p.key for p in a) == sorted(demo.FAULT_KEYS)
    assert all(0 < p.at and p.at + p.window < 20.0 for p in a)
    assert [p.at for p in a] == sorted(p.at for p in a)
    other = demo.make_schedule(8, 20.0)
    assert [p.key for p in other] != [p.key for p in a] or [p.at for p in other] != [
        p.at for p in a
    ]
    short = demo.make_schedule(1, 6.0)
    assert all(p.at + p.window < 6.0 for p in short)


def _recorder(threads: int = 2) -> demo.Recorder:
    clock = iter([0.0] + [i * 0.1 for i in range(1, 1000)])
    return demo.Recorder(threads, clock=lambda: next(clock))


def test_invariant_passes_on_a_consistent_ledger() -> None:
    rec = _recorder()
    rec.attempted.update({1, 2, 3, 4})
    rec.commit(0, 1)
    rec.commit(1, 2)
    rec.app_error(3, RuntimeError("gave up"))
    rec.commit_unknown(4, CommitUnknownError("lost"))
    ledger = [(1, 0, 1, 10), (2, 1, 2, 5), (4, 2, 0, 1)]  # 4 landed despite unknown
    balances = {0: 1000 - 10 + 1, 1: 1000 + 10 - 5, 2: 1000 + 5 - 1}
    result = demo.check_invariant(balances, ledger, 3, rec)
    assert result["ok"], result
    assert result["commit_unknown"] == 1 and result["commit_unknown_landed"] == 1


@pytest.mark.parametrize(
    ("ledger", "balances", "failing"),
    [
        # transfer 1 applied twice
        ([(1, 0, 1, 10), (1, 0, 1, 10)], {0: 980, 1: 1020}, "no_duplicates"),
        # acknowledged transfer 1 missing from the ledger (and the balances)
        ([], {0: 1000, 1: 1000}, "acknowledged_landed"),
        # half a transfer: balances do not match the ledger, total off
        ([(1, 0, 1, 10)], {0: 990, 1: 1000}, "total_balance"),
        # failed transfer 3 applied
        ([(1, 0, 1, 10), (3, 1, 0, 5)], {0: 995, 1: 1005}, "failed_not_applied"),
        # a ledger row nobody attempted
        ([(1, 0, 1, 10), (99, 1, 0, 5)], {0: 995, 1: 1005}, "no_unattributed"),
    ],
)
def test_invariant_catches_each_violation(
    ledger: list[tuple[int, int, int, int]], balances: dict[int, int], failing: str
) -> None:
    rec = _recorder()
    rec.attempted.update({1, 3})
    rec.commit(0, 1)
    rec.app_error(3, RuntimeError("x"))
    result = demo.check_invariant(balances, ledger, 2, rec)
    assert not result["ok"]
    assert not result["checks"][failing]["ok"]


def test_recovery_rows_and_report_text() -> None:
    rec = demo.Recorder(2, clock=lambda: 0.0)
    plan = demo.FaultPlan("partition", "network partition (1.0 s)", 1.0, 1.0)
    plan.started, plan.ended = 1.0, 2.0
    skipped = demo.FaultPlan("redirect", "gateway redirect", 1.5, skipped="not here")
    rec.events = [(0.5, "commit"), (1.2, "retry"), (1.5, "error"), (2.3, "commit"), (2.6, "commit")]
    rec.commit_times = [[0.5, 2.3], [2.6]]
    rec.counts.update({"commit": 3, "retry": 1, "error": 1})
    rows = recovery_rows([plan, skipped], rec, 3.0)
    assert rows[0]["fault"].startswith("(before")
    assert rows[1]["retries"] == 1 and rows[1]["app_errors"] == 1
    assert rows[1]["recovered_in"] == pytest.approx(0.6)  # the slower worker, 2.6 - 2.0
    assert rows[2]["skipped"] == "not here"
    report = demo.DemoReport("embedded", 2, 3.0, 1, elapsed=3.0, faults=rows)
    report.counts = dict(rec.counts)
    report.invariant = demo.check_invariant({0: 1000, 1: 1000}, [], 2, demo.Recorder(1))
    report.ok = False
    out = io.StringIO()
    demo.print_report(report, out)
    text = out.getvalue()
    assert "network partition" in text and "0.60s" in text
    assert "skipped: not here" in text
    assert "invariant: PASS" in text
    assert text.rstrip().endswith("result: FAIL (exit 1)")


def test_timeline_buckets_events_per_100ms() -> None:
    rec = demo.Recorder(1, clock=lambda: 0.0)
    rec.events = [(0.05, "commit"), (0.07, "commit"), (0.15, "retry"), (0.31, "error")]
    tl = timeline_series(rec, 0.35)
    assert tl["commit"][:4] == [2, 0, 0, 0]
    assert tl["retry"][1] == 1 and tl["error"][3] == 1


def test_plot_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rec = demo.Recorder(1, clock=lambda: 0.0)
    rec.events = [(0.05 * i, "commit") for i in range(40)]
    report = demo.DemoReport("embedded", 1, 2.0, 1, elapsed=2.0)
    report.timeline = timeline_series(rec, 2.0)
    report.faults = [
        {"fault": "restart", "at": 0.5, "window": 0.4, "skipped": "", "recovered_in": 0.1}
    ]
    path = tmp_path / "t.png"
    write_plot(report, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_demo_recorder_reads_the_pools_events() -> None:
    """Retries and logins in the demo's report are the pool's own events."""
    import pymssql

    from mssql_pool.classify import classify
    from mssql_pool.events import EventKind, PoolEvent

    rec = demo.Recorder(1, clock=lambda: 100.0)
    info = classify(pymssql.OperationalError(1205, b"deadlock victim"))

    def ev(kind: EventKind, t: float, **kw: object) -> PoolEvent:
        return PoolEvent(kind, 100.0 + t, 0.0, "demo", **kw)  # type: ignore[arg-type]

    for event in (ev(EventKind.CONNECT, 0.5, conn_id=1),
                  ev(EventKind.RETRY_ATTEMPT, 1.2, attempt=1, error_info=info),
                  ev(EventKind.CONNECT_FAILED, 1.3),
                  ev(EventKind.CONNECT_FAILED, 1.4, reason="circuit_open"),
                  ev(EventKind.DISCARD, 1.5, conn_id=1, reason="dead"),
                  ev(EventKind.CONNECT, 2.2, conn_id=2)):
        rec(event)
    assert rec.retry_kinds == {"deadlock 1205": 1} and rec.counts["retry"] == 1
    assert rec.pool_events["connect_failed"] == 2 and rec.discards == {"dead": 1}
    plan = demo.FaultPlan("restart", "server restart", 1.0, 1.0)
    plan.started, plan.ended = 1.0, 2.0
    rows = recovery_rows([plan], rec, 3.0)
    # the circuit's refusal is no login; the stats deltas are not consulted
    assert (rows[0]["logins"], rows[0]["logins_failed"]) == (1, 0)
    assert (rows[1]["logins"], rows[1]["logins_failed"], rows[1]["retries"]) == (1, 1, 1)
    report = demo.DemoReport("embedded", 1, 3.0, 1, elapsed=3.0, faults=rows)
    report.pool_events, report.discards = dict(rec.pool_events), dict(rec.discards)
    out = io.StringIO()
    demo.print_report(report, out)
    assert "pool events: connect 2; connect_failed 2; discard 1 (dead 1); retry_attempt 1" \
        in out.getvalue()
