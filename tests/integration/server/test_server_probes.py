"""The behaviour probes (behaviour_probes.py) against the TDS test server: it behaves as
SQL Server documents, except where listed (and explained) in TEST_SERVER_DEPARTURES."""

from __future__ import annotations

from typing import Any

import behaviour_probes as bp
import pytest

pytestmark = pytest.mark.timeout(120)


def test_test_server_behaves_like_sql_server(tds_server: Any) -> None:
    def restart() -> None:
        tds_server.stop()
        tds_server.start()

    target = bp.ProbeTarget("test server", tds_server.connect_kwargs(), restart=restart)
    seen = bp.run_probes(target)
    differing = {k for k, v in seen.items() if v != bp.SQLSERVER[k]}
    assert differing == set(bp.TEST_SERVER_DEPARTURES), {k: seen[k] for k in differing}
