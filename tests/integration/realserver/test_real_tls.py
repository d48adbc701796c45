"""TLS end to end: a Babelfish instance serving TLS (``BBF_TLS=1``), the pool with
pymssql's ``encryption="require"``, and ``mssql-pool check`` saying the session is
encrypted. The instance is our own (its own data directory and ports, kept under the
temporary directory between runs so that only the first run pays for initialising it),
started through the Babelfish start script; skipped when there is none."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mssql_pool

from .conftest import BABELFISH_START, RealServer, parse_test_url, run_start_script, wait_for_login

pytestmark = [pytest.mark.realserver, pytest.mark.timeout(180)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def tls_server() -> Iterator[RealServer]:
    if not BABELFISH_START.is_file():
        pytest.skip(f"TLS test: no Babelfish start script at {BABELFISH_START}")
    base = Path(os.environ.get("MSSQL_POOL_BABELFISH_TLS_DIR")
                or Path(tempfile.gettempdir()) / "mssql-pool-babelfish-tls")
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)       # the server may run as another OS user (start.sh, as root)
    data, ports_file = base / "data", base / "ports"
    env = {"BBF_DATA": str(data), "BBF_TLS": "1"}
    ports: list[int] = []
    if ports_file.is_file() and (data / "PG_VERSION").is_file():
        ports = [int(p) for p in ports_file.read_text().split()]
        env.update(BBF_TDS_PORT=str(ports[0]), BBF_PG_PORT=str(ports[1]))
        running = subprocess.run(["bash", str(BABELFISH_START), "status"],
                                 env={**os.environ, **env}, capture_output=True).returncode == 0
        if not running and not all(_port_free(p) for p in ports):
            run_start_script("wipe", env=env)   # its ports were taken meanwhile: start afresh
            ports = []
    if not ports:
        ports = [_free_port(), _free_port()]
        env.update(BBF_TDS_PORT=str(ports[0]), BBF_PG_PORT=str(ports[1]))
        run_start_script("wipe", env=env)
        ports_file.write_text(f"{ports[0]} {ports[1]}\n")
    url = run_start_script("start", env=env, timeout=150)
    server = parse_test_url(url)
    server.backend = "babelfish"
    try:
        wait_for_login(server, 60.0)
        yield server
    finally:
        run_start_script("stop", env=env)


def encrypt_option(conn: Any) -> str:
    cur = conn.cursor()
    cur.execute("SELECT encrypt_option FROM sys.dm_exec_connections WHERE session_id = @@SPID")
    return str(cur.fetchone()[0])


def test_pool_with_encryption_require_works_end_to_end(tls_server: RealServer) -> None:
    conninfo = tls_server.connect_kwargs(encryption="require", appname="mp-tls")

    def unit(conn: Any) -> int:
        cur = conn.cursor()
        cur.execute("SELECT 40 + 2")
        return int(cur.fetchone()[0])

    with mssql_pool.ConnectionPool(conninfo, min_size=1, max_size=1, timeout=30.0,
                                   name="mp-tls") as pool:
        with pool.connection() as conn:
            assert encrypt_option(conn) == "TRUE"
        assert pool.run_transaction(unit) == 42
        with pool.connection() as conn:     # the same encrypted session, reused
            assert encrypt_option(conn) == "TRUE"
        stats = pool.get_stats()
        assert stats["connections_num"] == 1, stats
    # The same server without encryption: a plain session (the option is what did it).
    plain = tls_server.connect()
    try:
        assert encrypt_option(plain) == "FALSE"
    finally:
        plain.close()


def test_check_command_reports_the_encrypted_session(
    tls_server: RealServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from mssql_pool import cli

    assert cli.main(["check", tls_server.url + "?encryption=require"]) == 0
    out = capsys.readouterr().out
    assert "session encrypted (TLS)" in out
    assert tls_server.password not in out
    assert cli.main(["check", tls_server.url]) == 0
    assert "session not encrypted" in capsys.readouterr().out
