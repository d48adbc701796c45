"""Benchmarks write their results to a scratch directory unless ``--out`` names one.

``bench/recovery.py --only ...`` as the benchmarks page shows it must not replace the
project's committed results in bench/results/. The run itself is replaced by a stub here:
what is tested is where the files go.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
COMMITTED = ROOT / "bench" / "results"


@pytest.fixture(scope="module")
def recovery() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_recovery", ROOT / "bench" / "recovery.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


def test_the_default_output_is_a_scratch_directory(recovery: ModuleType) -> None:
    for argv in ([], ["--only", "restart", "partition", "--pools", "mssql_pool"]):
        out = Path(recovery.parse_args(argv).out).resolve()
        assert out != COMMITTED.resolve()
        assert COMMITTED.resolve() not in out.parents
        assert ROOT.resolve() not in out.parents     # nothing lands in the checkout


def test_out_chooses_the_directory(recovery: ModuleType, tmp_path: Path) -> None:
    assert recovery.parse_args(["--out", str(tmp_path)]).out == str(tmp_path)
    assert recovery.parse_args(["--out", "bench/results"]).out == "bench/results"


def test_a_run_writes_to_out_and_leaves_the_committed_results_alone(
        recovery: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    before = {p.name: p.stat().st_mtime_ns for p in COMMITTED.iterdir()}
    rf = recovery.rf

    def run_fault(fault: Any, pool: str, after: float, real: Any = None) -> Any:
        return rf.Outcome(fault=fault.key, pool=pool, units_ok=3, run_end=1.0)

    monkeypatch.setattr(rf, "run_fault", run_fault)
    scratch = tmp_path / "scratch"
    monkeypatch.setattr(recovery, "SCRATCH", str(scratch))
    # the default is taken when the parser is built, so patching SCRATCH changes it
    assert recovery.main(["--only", "restart", "--pools", "mssql_pool"]) == 0
    assert sorted(os.listdir(scratch)) == ["recovery.json", "recovery.md", "recovery.png"]
    assert "| 3. server restart" in (scratch / "recovery.md").read_text()
    explicit = tmp_path / "explicit"
    assert recovery.main(["--only", "restart", "--pools", "mssql_pool",
                          "--out", str(explicit)]) == 0
    assert (explicit / "recovery.md").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in COMMITTED.iterdir()} == before
