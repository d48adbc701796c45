"""``mssql-pool check`` against the TDS test server, with real pymssql over TCP.

Each check runs in a fresh interpreter: pymssql keeps login error state process-wide (module
globals it never resets), so a failed login in one test would change the numbers another sees.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

testing = pytest.importorskip("mssql_pool.testing")
TdsServer = getattr(testing, "TdsServer", None)
if TdsServer is None:  # pragma: no cover - until the test server lands
    pytest.skip("mssql_pool.testing.TdsServer is not available yet", allow_module_level=True)

PASSWORD = "Check-Secret-42"


def run_check(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mssql_pool.cli", "check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def url_of(server: Any, database: str = "master", password: str = PASSWORD) -> str:
    return f"mssql://sa:{password}@127.0.0.1:{server.port}/{database}"


@pytest.fixture
def server() -> Iterator[Any]:
    with TdsServer(users={"sa": PASSWORD}, database="master") as srv:
        yield srv


def steps_of(out: str) -> dict[str, dict[str, Any]]:
    data = json.loads(out)
    return {step["name"]: step for step in data["steps"]}


def test_healthy_server_passes_every_step(server: Any) -> None:
    code, out, err = run_check(url_of(server), "--timeout", "5")
    assert code == 0, out + err
    for name in ("dns", "tcp", "login", "version", "latency", "health", "pool"):
        assert f" {name} " in out, name
    assert "Microsoft SQL Server" in out
    assert "PRELOGIN: server version 16.0" in out
    assert "not redirected" in out
    assert "result: OK, exit 0" in out
    assert PASSWORD not in out + err
    assert "sa:***@" in out


def test_json_output_is_one_object_with_every_step(server: Any) -> None:
    code, out, _ = run_check(url_of(server), "--json", "--samples", "3")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True and data["exit_code"] == 0
    steps = steps_of(out)
    assert steps["latency"]["ms"] >= 0
    assert "x3" in steps["latency"]["detail"]
    assert PASSWORD not in out


def test_wrong_password_is_exit_5_auth(server: Any) -> None:
    code, out, _ = run_check(url_of(server, password="Wrong-Pass-99"), "--json")
    assert code == 5
    login = steps_of(out)["login"]
    assert login["ok"] is False
    assert login["error"]["number"] == 18456
    assert login["error"]["kind"] == "auth"
    assert "password" in login["error"]["meaning"]
    assert "Wrong-Pass-99" not in out


def test_unknown_database_is_exit_5_with_4060(server: Any) -> None:
    code, out, _ = run_check(url_of(server, database="no_such_db"), "--json")
    assert code == 5
    err = steps_of(out)["login"]["error"]
    assert err["number"] == 4060 or 4060 in err["numbers"]
    assert "database" in err["meaning"]


def test_login_burst_40613_is_explained_as_transient(server: Any) -> None:
    server.fail_logins(40613, times=5)
    code, out, _ = run_check(url_of(server), "--json")
    assert code == 5
    err = steps_of(out)["login"]["error"]
    assert 40613 in err["numbers"]
    assert err["retryable"] is True
    assert "not currently available" in err["meaning"]


def test_stopped_server_is_exit_4_refused(server: Any) -> None:
    url = url_of(server)
    server.stop()
    code, out, _ = run_check(url, "--json")
    assert code == 4
    tcp = steps_of(out)["tcp"]
    assert tcp["error"]["type"] == "ConnectionRefusedError"
    assert "nothing is listening" in tcp["error"]["meaning"]


def test_failing_health_query_is_exit_6(server: Any) -> None:
    code, out, _ = run_check(url_of(server), "--check-sql", "SELECT * FROM no_such_table", "--json")
    assert code == 6
    health = steps_of(out)["health"]
    assert health["error"]["number"] == 208
    assert health["error"]["kind"] == "programming"


def test_unresolvable_host_is_exit_3() -> None:
    code, out, _ = run_check("mssql://sa:x@host.invalid/master", "--json", "--timeout", "2")
    assert code == 3
    assert steps_of(out)["dns"]["ok"] is False


def test_bad_url_is_exit_2() -> None:
    code, _, err = run_check("postgres://sa:x@h/db")
    assert code == 2
    assert "scheme" in err


def test_redirect_is_detected(server: Any) -> None:
    if not hasattr(server, "redirect_to"):
        pytest.skip("the test server has no redirect_to() yet")
    with TdsServer(users={"sa": PASSWORD}, database="master") as gateway:
        gateway.redirect_to(server)
        code, out, err = run_check(url_of(gateway), "--no-pool")
        assert code == 0, out + err
        assert f"redirected: the session runs on 127.0.0.1:{server.port}" in out


def test_closed_port_probe_times_out_or_refuses_quickly() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    code, out, _ = run_check(f"mssql://sa:x@127.0.0.1:{port}/master", "--timeout", "2")
    assert code == 4
    assert "FAIL  tcp" in out


def test_hanging_server_login_times_out_with_exit_5(server: Any) -> None:
    server.blackhole()
    code, out, _ = run_check(url_of(server), "--timeout", "1", "--json")
    assert code == 5
    login = steps_of(out)["login"]
    assert 20003 in login["error"]["numbers"]
    assert "no answer" in login["error"]["meaning"]
    assert steps_of(out)["tcp"]["ok"] is True
