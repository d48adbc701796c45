"""The pool's connect guard with real pymssql and the TDS test server.

A wrong password (18456) ends ``getconn`` at once with a clear error and one login counted
by the server (it used to retry logins for the whole acquire timeout); two 40613 logins
(a failover) are ridden through within the acquire timeout; a 40501 "retry after 10 s"
hint keeps the pool from sending another login within a short timeout.

pymssql keeps login error state process-wide (the highest severity of a failed login is never
reset): after one severe login failure a later 18456 loses its number. These checks therefore
run in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)

WRONG = "Wr0ng-Pa55word!"

_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from mssql_pool import ConnectionPool
    from mssql_pool.errors import PoolTimeout
    from mssql_pool.testing import TdsServer

    WRONG = sys.argv[1]
    out = {}

    def failed(s):
        return int(s.stats().get("logins_failed", 0))

    with TdsServer() as s:
        # 1. wrong password: fails at once, however long the caller would wait
        before = failed(s)
        pool = ConnectionPool({**s.connect_kwargs(), "password": WRONG}, min_size=0,
                              background=False, timeout=5.0)
        t0 = time.monotonic()
        try:
            pool.getconn()
            out["wrong"] = {"error": None}
        except Exception as exc:
            out["wrong"] = {
                "error": type(exc).__name__, "message": str(exc), "repr": repr(exc),
                "last_error": type(getattr(exc, "last_error", None)).__name__,
                "last_text": str(getattr(exc, "last_error", "")),
            }
        out["wrong"]["elapsed"] = time.monotonic() - t0
        out["wrong"]["logins_failed"] = failed(s) - before
        out["wrong"]["stats"] = pool.get_stats()
        pool.close()

        # 2. a failover: two 40613 logins, then the database is back
        pool = ConnectionPool(s.connect_kwargs(), min_size=0, background=False, timeout=10.0)
        before = failed(s)
        s.fail_logins(40613, times=2)
        t0 = time.monotonic()
        with pool.connection() as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            out["failover"] = {"row": cur.fetchone()[0]}
        out["failover"]["elapsed"] = time.monotonic() - t0
        out["failover"]["logins_failed"] = failed(s) - before
        out["failover"]["errors"] = pool.get_stats()["connections_errors"]
        pool.close()

        # 3. 40501 asks for 10 s: no second login within a 1 s acquire timeout
        pool = ConnectionPool(s.connect_kwargs(), min_size=0, background=False, timeout=1.0)
        before = failed(s)
        s.fail_logins(40501, times=100)
        try:
            pool.getconn()
            out["busy"] = {"error": None}
        except PoolTimeout as exc:
            out["busy"] = {"error": "PoolTimeout", "last_text": str(exc.last_error)}
        out["busy"]["logins_failed"] = failed(s) - before
        pool.close()
    print(json.dumps(out))
""")


def test_pool_connect_guard_on_real_logins_fresh_interpreter() -> None:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, WRONG], capture_output=True,
                          text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    wrong = out["wrong"]
    assert wrong["error"] == "PoolTimeout", wrong
    assert wrong["elapsed"] < 2.0, wrong                 # not the whole 5 s timeout
    assert 1 <= wrong["logins_failed"] <= 2, wrong       # was 7 before the guard
    assert "refused the login" in wrong["message"] and "password" in wrong["message"]
    assert "18456" in wrong["last_text"] or "Login failed" in wrong["last_text"], wrong
    assert WRONG not in wrong["message"] and WRONG not in wrong["repr"]
    assert wrong["stats"]["requests_errors"] == 1 and wrong["stats"]["requests_timeouts"] == 0

    failover = out["failover"]
    assert failover["row"] == 1
    assert failover["logins_failed"] == 2 and failover["errors"] == 2, failover
    assert failover["elapsed"] < 5.0, failover

    busy = out["busy"]
    assert busy["error"] == "PoolTimeout", busy
    assert "40501" in busy["last_text"], busy
    assert busy["logins_failed"] == 1, busy
