"""The behaviour probes against the real server and the TDS test server side by side.
On Babelfish the differences from SQL Server must be exactly the documented ones
(BABELFISH_DEPARTURES, the table in docs/testing.md): a new one fails here."""

from __future__ import annotations

import behaviour_probes as bp
import pytest

from mssql_pool.testing import TdsServer

from .conftest import RealServer

pytestmark = [pytest.mark.realserver, pytest.mark.timeout(180)]


def test_probes_real_server_against_test_server(real_server: RealServer) -> None:
    real = bp.ProbeTarget(real_server.backend, real_server.connect_kwargs(),
                          restart=real_server.restart)
    with TdsServer() as server:
        def restart() -> None:
            server.stop()
            server.start()

        fake = bp.ProbeTarget("test server", server.connect_kwargs(), restart=restart)
        results = {"test server": bp.run_probes(fake), real.name: bp.run_probes(real)}
    print("\n" + bp.markdown(results))     # the table for docs/testing.md (pytest -s)
    seen = results[real.name]
    differing = {k for k, v in seen.items() if v != bp.SQLSERVER[k]}
    if not real_server.is_babelfish:
        if real_server.restart is None:
            differing.discard("restarted")
        assert differing <= {"version"}, {k: seen[k] for k in differing}
        return
    assert differing == set(bp.BABELFISH_DEPARTURES), {k: seen[k] for k in differing}
    # What the pool relies on is the same on both: transaction counts, the deadlock
    # victim, killed and restarted sessions, a failed login.
    for key in ("trancount_default", "trancount_nested", "deadlock", "killed", "restarted",
                "wrong_password", "implicit_transactions"):
        assert seen[key] == results["test server"][key] == bp.SQLSERVER[key], key
