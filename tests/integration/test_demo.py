"""``mssql-pool demo`` end to end: a short run on the embedded TDS test server.

Runs in a fresh interpreter (as a user would run it, and because pymssql keeps some
login state process-wide). About 6 s of workload plus start-up and the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

testing = pytest.importorskip("mssql_pool.testing")
if getattr(testing, "TdsServer", None) is None:  # pragma: no cover - until it lands
    pytest.skip("mssql_pool.testing.TdsServer is not available yet", allow_module_level=True)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_short_demo_recovers_and_keeps_the_invariant(tmp_path: Path) -> None:
    plot = tmp_path / "timeline.png"
    report_json = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mssql_pool.cli",
            "demo",
            "--duration",
            "6",
            "--threads",
            "4",
            "--seed",
            "3",
            "--plot",
            str(plot),
            "--json",
            str(report_json),
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "invariant: PASS" in out
    assert "result: PASS (exit 0)" in out
    # every fault of the schedule is either reported with its numbers or skipped with a reason
    for label in (
        "sessions killed",
        "deadlock victims",
        "login burst",
        "server restart",
        "network partition",
        "COMMIT reply lost",
        "gateway redirect",
    ):
        assert label in out, label
    # progress went to stderr (plain lines: not a TTY), the report to stdout
    assert "tx/s" in proc.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(report_json.read_text())
    assert data["invariant"]["ok"] is True
    # Work was done (how much is the machine's speed, a figure for bench/: 208 commits on
    # an idle machine, 50 seen under load, where "> 50" failed).
    assert data["counts"]["commit"] > 0
    assert data["invariant"]["ledger_rows"] >= data["counts"]["commit"]
    assert data["unexpected"] == {}
    injected = [f for f in data["faults"][1:] if not f["skipped"]]
    assert len(injected) >= 5
    assert sum(f["retries"] for f in injected) > 0  # the faults were felt, and retried


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_against_a_server_url_kills_sessions_with_tsql() -> None:
    """``--url``: only T-SQL faults (KILL from an admin session); the rest are skipped."""
    import pymssql

    with testing.TdsServer(users={"sa": "Url-Secret-7"}) as server:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mssql_pool.cli",
                "demo",
                "--url",
                server.url,
                "--duration",
                "3",
                "--threads",
                "3",
                "--seed",
                "5",
                "--progress",
                "off",
            ],
            capture_output=True,
            text=True,
            timeout=110,
        )
        conn = pymssql.connect(**server.connect_kwargs())
        cur = conn.cursor()
        cur.execute(
            "SELECT OBJECT_ID('mssql_pool_demo_accounts'), OBJECT_ID('mssql_pool_demo_transfers')"
        )
        assert cur.fetchone() == (None, None)  # the demo cleaned up after itself
        conn.close()
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "Url-Secret-7" not in out + proc.stderr
    assert "KILLed" in out
    assert "skipped: needs the TDS test server's fault API" in out
    assert "invariant: PASS" in out
