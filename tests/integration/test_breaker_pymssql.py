"""The connect circuit breaker and connect policy with real pymssql and the TDS test server.

An outage of a few seconds (every session killed, every login answered with 40613, as
during an Azure failover): the logins the server counts stay within the breaker's bound
however many threads want a connection, and the first unit of work after the server
returns succeeds within one probe interval. Also: the connect policy's decisions on real
login failures (in a fresh interpreter, because pymssql keeps login error state
process-wide).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pymssql
import pytest

from mssql_pool import ConnectionPool
from mssql_pool.breaker import CircuitBreaker, CircuitState, guarded_connect
from mssql_pool.errors import CircuitOpenError, PoolTimeout, RetryExhausted
from mssql_pool.retry import ExponentialBackoff, RetryPolicy, connect_policy

pytestmark = pytest.mark.timeout(60)

THREADS = 40
MAX_SIZE = 8
THRESHOLD = 3
PROBE_INTERVAL = 0.5
OUTAGE = 3.0


def logins(server: Any) -> int:
    st = server.stats()
    return int(st.get("logins", 0)) + int(st.get("logins_failed", 0))


def unit(conn: Any) -> int:
    cur = conn.cursor()
    cur.execute("SELECT 1")
    return int(cur.fetchone()[0])


def outage_run(server: Any, pool: ConnectionPool, breaker: CircuitBreaker) -> dict[str, Any]:
    """Threads run units continuously; the server goes down for OUTAGE seconds."""
    stop = threading.Event()
    lock = threading.Lock()
    successes: list[float] = []
    errors: dict[str, int] = {}
    policy = RetryPolicy(max_attempts=3, deadline=2.0,
                         backoff=ExponentialBackoff(0.01, 2.0, 0.1, "full"))

    def worker() -> None:
        while not stop.is_set():
            try:
                pool.run_transaction(unit, policy=policy, idempotent=True)
            except (CircuitOpenError, PoolTimeout, RetryExhausted, pymssql.Error) as exc:
                with lock:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                time.sleep(0.01)
                continue
            with lock:
                successes.append(time.monotonic())
            time.sleep(0.005)

    threads = [threading.Thread(target=worker, name=f"unit-{i}", daemon=True)
               for i in range(THREADS)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # healthy traffic first
    assert successes, "no unit succeeded before the outage"
    down_at = time.monotonic()
    before = logins(server)
    server.fail_logins(40613, times=1_000_000)
    server.kill_all()
    time.sleep(OUTAGE)
    during = logins(server) - before
    server.clear_faults()
    up_at = time.monotonic()
    deadline = up_at + 5.0
    while time.monotonic() < deadline:
        with lock:
            after = [s for s in successes if s > up_at]
        if after:
            break
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(10.0)
    assert not any(t.is_alive() for t in threads)
    with lock:
        first_after = min((s for s in successes if s > up_at), default=None)
        during_ok = [s for s in successes if down_at + 0.2 < s < up_at]
    return {"during": during, "first_after": first_after, "up_at": up_at,
            "errors": errors, "during_ok": during_ok}


def breaker_bound() -> int:
    # THRESHOLD failures open it; logins already in flight when it opens (at most one per
    # connection slot); then one probe per interval (+1 at the boundary).
    return THRESHOLD + MAX_SIZE + int(OUTAGE / PROBE_INTERVAL) + 1


def test_outage_logins_bounded_and_quick_recovery_connect_factory(tds_server: Any) -> None:
    """The breaker composed by hand in a connect= factory (works with any pool setup)."""
    breaker = CircuitBreaker(failure_threshold=THRESHOLD, reset_timeout=PROBE_INTERVAL)
    policy = connect_policy(max_attempts=2, deadline=1.0)
    kw = tds_server.connect_kwargs(login_timeout=5)

    def connect() -> Any:
        return guarded_connect(lambda: pymssql.connect(**kw), policy=policy, breaker=breaker,
                               timeout=2.0, wait=True)

    with ConnectionPool(connect=connect, min_size=2, max_size=MAX_SIZE, timeout=1.0,
                        name="outage") as pool:
        pool.wait(timeout=10.0)
        r = outage_run(tds_server, pool, breaker)
    assert r["during"] <= breaker_bound(), r
    assert r["during"] >= THRESHOLD  # the outage was real: logins did fail
    assert breaker.stats()["opened"] >= 1
    assert r["first_after"] is not None, r["errors"]
    # the first unit after the server returns succeeds within one probe interval (plus a
    # login and a round trip)
    assert r["first_after"] - r["up_at"] <= PROBE_INTERVAL + 0.5, r
    assert breaker.state is CircuitState.CLOSED


def test_open_circuit_fails_fast_without_logins(tds_server: Any) -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=30.0)
    kw = tds_server.connect_kwargs(login_timeout=5)
    tds_server.fail_logins(40613, times=100)
    before = logins(tds_server)
    for _ in range(2):
        with pytest.raises(pymssql.OperationalError):
            guarded_connect(lambda: pymssql.connect(**kw), breaker=breaker)
    start = time.monotonic()
    for _ in range(50):
        with pytest.raises(CircuitOpenError) as ei:
            guarded_connect(lambda: pymssql.connect(**kw), breaker=breaker)
    assert time.monotonic() - start < 2.0      # 50 refusals without a socket each (generous)
    assert logins(tds_server) - before == 2
    assert isinstance(ei.value.last_error, pymssql.OperationalError)
    assert 0 < ei.value.retry_in <= 30.0


# ------------------------------------------------------------------- login classification
_LOGIN_SCRIPT = textwrap.dedent("""
    import json, sys, pymssql
    from mssql_pool.breaker import guarded_connect
    from mssql_pool.retry import connect_policy
    from mssql_pool.testing import TdsServer

    out = {}
    with TdsServer() as s:
        kw = s.connect_kwargs(login_timeout=5)
        def attempt(name, **over):
            calls = []
            def connect():
                calls.append(1)
                return pymssql.connect(**{**kw, **over})
            pol = connect_policy(max_attempts=4, deadline=10.0)
            try:
                guarded_connect(connect, policy=pol.new(sleep=lambda d: None))
                out[name] = ["ok", len(calls)]
            except Exception as exc:
                out[name] = [type(exc).__name__, len(calls)]
        attempt("wrong_password_fresh", password="nope")
        s.fail_logins(40613, times=2)
        attempt("failover_40613")
        s.fail_logins(4060, times=1)
        attempt("4060_once")
        s.fail_logins(10928, times=1)
        attempt("throttled_10928")
        attempt("wrong_password_after_severe", password="nope")
    print(json.dumps(out))
""")


def test_connect_policy_on_real_login_failures_fresh_interpreter() -> None:
    proc = subprocess.run([sys.executable, "-c", _LOGIN_SCRIPT], capture_output=True,
                          text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["wrong_password_fresh"] == ["OperationalError", 1]  # 18456: at once
    assert out["failover_40613"] == ["ok", 3]  # two 40613s retried, third login works
    assert out["4060_once"] == ["ok", 2]
    assert out["throttled_10928"] == ["ok", 2]
    # pymssql dropped the 18456 message after the severe 40613, but its class (14) on the
    # 20018 line still makes it fail at once
    assert out["wrong_password_after_severe"] == ["OperationalError", 1]
