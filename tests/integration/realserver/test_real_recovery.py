"""Rows of the recovery matrix on a real server (bench/recovery.py --url runs them all,
side by side with SQLAlchemy's QueuePool): COMMIT replies lost in the network and real
deadlock victims (KILLs: test_real_faults.py), with money-transfer-style units whose
ledger proves each acknowledged unit landed exactly once."""

from __future__ import annotations

import pytest
import recovery_faults as rf

from mssql_pool._dsn import parse_conninfo

from .conftest import RealServer

pytestmark = [pytest.mark.realserver, pytest.mark.timeout(120)]


@pytest.mark.parametrize("key", ["lost_commit", "deadlocks"])
def test_real_fault_row_exactly_once(real_server: RealServer, key: str) -> None:
    target = rf.RealTarget(parse_conninfo(real_server.url), appname=f"mp-recovery-{key}")
    out = rf.run_fault(rf.REAL_BY_KEY[key], "mssql_pool", real=target, after=1.0, threads=4)
    assert out.extra["alive_workers"] == 0
    assert out.lost == [] and out.doubled == []           # exactly once
    assert out.failed_but_landed == [] and out.totals_consistent
    assert not out.errors, [repr(e) for e in out.error_samples[:3]]   # nothing reached the app
    assert out.units_ok > 0 and out.first_ok_after_clear is not None
    if key == "lost_commit":
        assert out.extra["replies_dropped"] >= 1          # the fault really happened
        assert out.extra["stats"]["connections_lost"] >= 1
    else:
        kinds = {getattr(r.kind, "value", r.kind) for r in out.extra["retries"]}
        assert "deadlock" in kinds                       # real 1205s, re-run
