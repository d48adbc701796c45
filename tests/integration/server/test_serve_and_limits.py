"""`mssql-pool serve` usage and signals, the test server's bounds on silent and huge
connections, and where the demo's metrics listen."""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pymssql
import pytest

from mssql_pool import cli
from mssql_pool._dsn import parse_conninfo
from mssql_pool.testing import TdsServer
from mssql_pool.testing import _protocol as P
from mssql_pool.testing.server import serve_main

pytestmark = pytest.mark.timeout(120)


def _closed_by_server(sock: socket.socket, within: float = 15.0) -> bool:
    """True when the server closes ``sock`` within the bound (EOF or reset)."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _wait(predicate: Any, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


# ------------------------------------------------------------------ 10. serve usage
@pytest.mark.parametrize("argv", [["--port", "70000"], ["--port", "-1"], ["--latency", "-1"],
                                  ["--latency", "nan"], ["--latency", "inf"],
                                  ["--max-sessions", "-2"], ["--handshake-timeout", "0"],
                                  ["--password-file", "/nonexistent/secret"]])
def test_serve_bad_arguments_are_usage_errors(argv: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", *argv]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_serve_port_in_use_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_serve_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "for tests only" in text
    for option in ("--host", "--port", "--user", "--password", "--password-file",
                   "--database", "--max-sessions", "--latency", "--handshake-timeout",
                   "--max-pending", "--verbose"):
        assert option in text
    # every option with a value says its default
    assert text.count("(default") >= 9


def _start_serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None
                 ) -> subprocess.Popen[str]:
    environ = dict(os.environ, TMPDIR=str(tmp_path))
    environ.pop("MSSQL_POOL_PASSWORD", None)
    environ.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "mssql_pool.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("listening on"), first
    return proc


def _ready_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("url: "), line
    return line[len("url: "):].strip()


def _stop(proc: subprocess.Popen[str], sig: int) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("how", ["env", "file"])
def test_serve_password_from_env_or_file_and_ready_url(tmp_path: Path, how: str) -> None:
    password = "p@ss/w#rd ?%41 x"
    if how == "env":
        proc = _start_serve(tmp_path, env={"MSSQL_POOL_PASSWORD": password})
    else:
        secret = tmp_path / "secret.txt"
        secret.write_text(password + "\n", encoding="utf-8")
        proc = _start_serve(tmp_path, "--password-file", str(secret))
    try:
        url = _ready_url(proc)
        kwargs = parse_conninfo(url)            # ready to paste: percent-encoded
        assert kwargs["password"] == password and password not in url
        conn = pymssql.connect(**{**kwargs, "login_timeout": 10})
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
        conn.close()
    finally:
        assert _stop(proc, signal.SIGTERM) == 0


# ------------------------------------------------------------------ 11. SIGTERM cleans up
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_removes_its_data_directory_on_sigterm_and_sigint(tmp_path: Path,
                                                                sig: int) -> None:
    proc = _start_serve(tmp_path, "--password", "x")
    try:
        assert list(tmp_path.glob("mssql_pool_tds_*")), "the server keeps its data there"
    finally:
        code = _stop(proc, sig)
    assert code == 0
    assert not list(tmp_path.glob("mssql_pool_tds_*"))


# ------------------------------------------------------------------ 12. bounds
def test_silent_sockets_are_closed_after_the_handshake_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mssql_pool.testing")
    with TdsServer(handshake_timeout=0.5) as server:
        silent = [socket.create_connection((server.host, server.port), timeout=5)
                  for _ in range(20)]
        try:
            assert all(_closed_by_server(s) for s in silent)
            assert _wait(lambda: not server._sessions)
        finally:
            for s in silent:
                s.close()
        # a half-sent PRELOGIN (header only) is cut at the same deadline
        with socket.create_connection((server.host, server.port), timeout=5) as slow:
            slow.sendall(bytes([P.PKT_PRELOGIN, 1, 0, 64, 0, 0, 1, 0]))
            assert _closed_by_server(slow)
        conn = pymssql.connect(**server.connect_kwargs(login_timeout=10))
        conn.close()
    assert "no login within 0.5 s" in caplog.text
    assert "not completed within 0.5 s" in caplog.text


def test_a_partition_does_not_end_a_login_in_progress() -> None:
    with TdsServer(handshake_timeout=0.3) as server:
        with socket.create_connection((server.host, server.port), timeout=5) as s:
            s.sendall(P.frame(P.PKT_PRELOGIN, b"\xff", 4096, 0))
            P.read_message(s)
            server.blackhole()
            time.sleep(1.0)          # over the handshake timeout, but partitioned
            assert len(server._sessions) == 1
            server.heal()


def test_unauthenticated_connections_are_capped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mssql_pool.testing")
    with TdsServer(max_pending=3, handshake_timeout=30) as server:
        silent = [socket.create_connection((server.host, server.port), timeout=5)
                  for _ in range(3)]
        try:
            assert _wait(lambda: len(server._sessions) == 3)
            with socket.create_connection((server.host, server.port), timeout=5) as extra:
                assert _closed_by_server(extra)
            assert server.stats()["refused"] == 1
            assert len(server._sessions) == 3
        finally:
            for s in silent:
                s.close()
        assert _wait(lambda: not server._sessions)
        conn = pymssql.connect(**server.connect_kwargs(login_timeout=10))
        conn.close()
    assert "waiting to log in" in caplog.text


def test_an_endless_login_message_is_cut_at_the_login_size(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mssql_pool.testing")
    chunk = bytes([P.PKT_PRELOGIN, 0]) + (4096).to_bytes(2, "big") + b"\0\0\1\0" + b"x" * 4088
    with TdsServer() as server:
        with socket.create_connection((server.host, server.port), timeout=5) as s:
            try:
                for _ in range(P.MAX_LOGIN_MESSAGE // 4088 + 2):
                    s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert _closed_by_server(s)
    assert f"larger than the limit of {P.MAX_LOGIN_MESSAGE} bytes" in caplog.text


def test_a_request_over_max_message_ends_the_session() -> None:
    with TdsServer(max_message=200_000) as server:
        # no query timeout: pymssql keeps the last one process-wide, for later tests too
        conn = pymssql.connect(**server.connect_kwargs(login_timeout=10))
        cur = conn.cursor()
        cur.execute("SELECT LEN(%s)", ("a" * 50_000,))
        assert cur.fetchone() == (50_000,)
        with pytest.raises(pymssql.Error):
            cur.execute("SELECT LEN(%s)", ("a" * 300_000,))
        conn.close()


# ------------------------------------------------------------------ 13. demo metrics host
def test_demo_metrics_listen_on_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("prometheus_client")
    import prometheus_client

    from mssql_pool.demo import run_demo

    bound: list[tuple[Any, ...]] = []
    real = prometheus_client.start_http_server

    def spy(*args: Any, **kwargs: Any) -> Any:
        served = real(*args, **kwargs)
        bound.append(served[0].server_address)
        return served

    monkeypatch.setattr(prometheus_client, "start_http_server", spy)
    err = io.StringIO()
    run_demo(duration=0.3, threads=1, chaos=False, progress="off", metrics_port=0, err=err)
    assert bound and bound[0][0] == "127.0.0.1"
    assert f"metrics: http://127.0.0.1:{bound[0][1]}/metrics" in err.getvalue()


def test_demo_metrics_host_option_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--metrics-port", "70000"]) == cli.EXIT_USAGE
    assert cli.main(["demo", "--metrics-port", "9", "--metrics-host", " "]) == cli.EXIT_USAGE
