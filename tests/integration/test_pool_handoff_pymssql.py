"""The pool's handoffs where the wire matters: real pymssql against the TDS test server.

* With the server down, 8 callers hammering ``getconn`` for 2 s make a handful of logins
  per backoff pause for the whole pool (it was about 9,000), for ``conninfo`` pools and
  for pools built with ``connect=``. Run in a fresh interpreter: pymssql keeps login
  error state process-wide.
* A cursor kept past its loan raises instead of running inside the next borrower's
  transaction.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from mssql_pool import ConnectionPool
from mssql_pool.errors import PoolError
from mssql_pool.testing import TdsServer

pytestmark = pytest.mark.timeout(90)

_IN_THREADS = textwrap.dedent("""
    import threading

    def in_threads(fn, n, limit):
        threads = [threading.Thread(target=fn) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(limit)
""")


def run_script(script: str) -> Any:
    """Run ``script`` in a fresh interpreter, with ``in_threads(fn, n, limit)`` defined
    (``fn`` on ``n`` threads at once, each joined for ``limit`` s); the JSON it printed
    last."""
    proc = subprocess.run([sys.executable, "-c", _IN_THREADS + script], capture_output=True,
                          text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

_SCRIPT = textwrap.dedent("""
    import json, time
    import pymssql
    from mssql_pool import ConnectionPool
    from mssql_pool.errors import PoolTimeout
    from mssql_pool.testing import TdsServer

    server = TdsServer()
    server.start()
    kwargs = server.connect_kwargs(login_timeout=2)
    server.stop()                     # the port is closed: every login is refused
    out = {}

    def hammer(pool):
        stop = time.monotonic() + 2.0
        errors = []
        def run():
            while time.monotonic() < stop:
                try:
                    pool.getconn(timeout=0.3).close()
                except PoolTimeout:
                    pass
                except Exception as exc:
                    errors.append(repr(exc))
        in_threads(run, 8, 30)
        pool.close()
        return errors

    logins = [0]
    def conninfo():
        logins[0] += 1
        return kwargs
    pool = ConnectionPool(conninfo, min_size=0, max_size=8, background=False)
    errors = hammer(pool)
    out["conninfo"] = {"logins": logins[0], "errors": errors[:3]}

    calls = [0]
    def connect():
        calls[0] += 1
        return pymssql.connect(**kwargs)
    pool = ConnectionPool(connect=connect, min_size=0, max_size=8, background=False)
    errors = hammer(pool)
    out["connect"] = {"logins": calls[0], "errors": errors[:3]}
    print(json.dumps(out))
""")


def test_many_callers_against_a_dead_server_make_a_handful_of_logins() -> None:
    out = run_script(_SCRIPT)
    for kind in ("conninfo", "connect"):
        got = out[kind]
        assert not got["errors"], got
        # CONNECT_POLICY: 0.1 s doubling to 2 s (equal jitter): about 6 pauses in 2 s
        assert 2 <= got["logins"] <= 20, (kind, got)


def test_a_cursor_kept_past_its_loan_never_runs_in_the_next_loan(
        tds_server: TdsServer) -> None:
    pool = ConnectionPool(tds_server.connect_kwargs(), min_size=0, max_size=1,
                          background=False, timeout=10)
    try:
        with pool.connection() as setup:
            cur = setup.cursor()
            cur.execute("CREATE TABLE loan_t (a INT)")
            setup.commit()
        first = pool.getconn()
        kept = first.cursor()
        raw = first.raw
        first.close()
        second = pool.getconn()                # the same session, lent again
        assert second.raw is raw
        second.cursor().execute("INSERT INTO loan_t VALUES (1)")   # its open transaction
        with pytest.raises(PoolError, match="returned to the pool"):
            kept.execute("INSERT INTO loan_t VALUES (2)")
        with pytest.raises(PoolError):
            first.raw.cursor()
        second.rollback()
        check = second.cursor()
        check.execute("SELECT COUNT(*) FROM loan_t")
        assert check.fetchone()[0] == 0
        second.close()
    finally:
        pool.close()


_BURST_SCRIPT = textwrap.dedent("""
    import json
    from mssql_pool import ConnectionPool
    from mssql_pool.testing import TdsServer

    server = TdsServer()
    server.start()
    server.fail_logins(40613, times=7)    # a failover: the next 7 logins get 40613
    pool = ConnectionPool(server.url, min_size=0, max_size=4, timeout=30, name="burst")
    got, errors = [], []

    def caller():
        try:
            conn = pool.getconn()
            conn.cursor().execute("SELECT 1")
            conn.close()
            got.append(1)
        except Exception as exc:
            errors.append(repr(exc))

    in_threads(caller, 8, 60)
    print(json.dumps({"served": len(got), "errors": errors,
                      "logins_failed": server.stats()["logins_failed"]}))
    pool.close()
    server.stop()
""")


def test_a_burst_of_failover_logins_is_ridden_through_by_the_default_policy() -> None:
    """Seven 40613 logins in a row (a failover) under the default connect policy: every
    caller is served within its timeout; none is refused because the policy ran out of
    attempts (it once gave up after 6 and then paused 8 s, failing the demo)."""
    got = run_script(_BURST_SCRIPT)
    assert got["logins_failed"] == 7, got
    assert got["errors"] == [] and got["served"] == 8, got
