"""Protocol-level behaviour of the TDS test server: logins, hostile bytes, threads, sockets."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import pymssql
import pytest

from mssql_pool.testing import TdsServer
from mssql_pool.testing import _protocol as P

pytestmark = pytest.mark.timeout(60)


def test_login_ok_and_wrong_password(tds_server: TdsServer, login_in_subprocess) -> None:
    login = login_in_subprocess
    assert login(tds_server) == {"ok": True}
    res = login(tds_server, password="wrong")
    assert res["number"] == 18456
    assert "Login failed for user 'sa'." in res["text"]
    res = login(tds_server, user="nobody")
    assert "Login failed for user 'nobody'." in res["text"]
    st = tds_server.stats()
    assert st["logins"] == 1 and st["logins_failed"] == 2


def test_unknown_database_gives_4060(tds_server: TdsServer, login_in_subprocess) -> None:
    login = login_in_subprocess
    res = login(tds_server, database="nowhere")
    assert res["number"] == 4060
    assert 'Cannot open database "nowhere" requested by the login.' in res["text"]


def test_fail_logins_40613_with_azure_text(tds_server: TdsServer, login_in_subprocess) -> None:
    login = login_in_subprocess
    tds_server.fail_logins(40613, times=1)
    res = login(tds_server)
    assert res["number"] == 40613
    assert "is not currently available" in res["text"]
    assert login(tds_server) == {"ok": True}


def test_max_sessions_10928_number(tds_server_factory, login_in_subprocess) -> None:
    login = login_in_subprocess
    server = tds_server_factory(max_sessions=1)
    held = pymssql.connect(**server.connect_kwargs())
    res = login(server)
    assert res["number"] == 10928 and "The session limit for the database is 1" in res["text"]
    held.close()


def test_replies_are_split_at_the_negotiated_packet_size(tds_server: TdsServer) -> None:
    conn = pymssql.connect(**tds_server.connect_kwargs())
    cur = conn.cursor()
    cur.execute("SELECT CAST(%s AS NVARCHAR(max)) AS big", ("y" * 100000,))
    assert cur.fetchone()[0] == "y" * 100000
    assert 512 <= next(iter(tds_server._sessions.values())).packet_size <= 32767


def _garbage_cases() -> list[bytes]:
    pre = P.frame(P.PKT_PRELOGIN, P.build_prelogin_reply((16, 0, 1)), 4096, 0)
    return [
        b"\x00" * 3,  # a truncated header, then EOF
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # the wrong protocol
        struct.pack(">BBHHBB", 0x12, 1, 4, 0, 0, 0),  # length below the header size
        struct.pack(">BBHHBB", 0x12, 1, 200, 0, 0, 0) + b"\x01\x02",  # truncated payload
        P.frame(P.PKT_PRELOGIN, b"\x00\x00\x50\x00\x06\xff", 4096, 0),  # option out of bounds
        pre + P.frame(P.PKT_LOGIN7, b"\x01" * 40, 4096, 0),  # LOGIN7 too short
        pre + P.frame(P.PKT_LOGIN7, b"\xff" * 100, 4096, 0),  # LOGIN7 offsets out of bounds
        P.frame(P.PKT_SQL_BATCH, "SELECT 1".encode("utf-16-le"), 4096, 0),  # no login
        os.urandom(4096),
    ]


def test_malformed_packets_close_only_that_session(tds_server: TdsServer,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    good = pymssql.connect(**tds_server.connect_kwargs())
    caplog.set_level(logging.WARNING, logger="mssql_pool.testing")
    for data in _garbage_cases():
        s = socket.create_connection((tds_server.host, tds_server.port), timeout=5)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError:
            pass
        finally:
            s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(tds_server._sessions) > 1:
        time.sleep(0.01)
    assert len(tds_server._sessions) == 1
    assert any("malformed" in r.getMessage() for r in caplog.records)
    cur = good.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone()[0] == 1
    fresh = pymssql.connect(**tds_server.connect_kwargs()).cursor()
    fresh.execute("SELECT 2")
    assert fresh.fetchone()[0] == 2


def test_garbage_after_login_closes_the_session(tds_server: TdsServer, raw_tds_login) -> None:
    s = raw_tds_login(tds_server)
    s.sendall(P.frame(P.PKT_RPC, b"\x16\x00\x00\x00" + b"\x05" * 30, 4096, 0))
    s.settimeout(5)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    s.close()
    conn = pymssql.connect(**tds_server.connect_kwargs())
    conn.cursor().execute("SELECT 1")


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_threads_or_descriptors_left_after_stop() -> None:
    before_fds = _fd_count()
    server = TdsServer()
    with server:
        conns = [pymssql.connect(**server.connect_kwargs()) for _ in range(3)]
        for c in conns:
            c.cursor().execute("SELECT 1")
        names = [t.name for t in threading.enumerate() if t.name.startswith("mssql_pool-tds")]
        assert len(names) == 4
    assert not [t for t in threading.enumerate() if t.name.startswith("mssql_pool-tds")]
    for c in conns:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - the server is gone
            pass
    assert _fd_count() <= before_fds
    assert "Secret123!" not in repr(server)
    assert not os.path.exists(server._data_dir)


def test_serve_main_runs_until_interrupted() -> None:
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "mssql_pool.testing", "--port", "0", "--password", "Pw-1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.split()[2].split(":")[1])
        conn = pymssql.connect(server="127.0.0.1", port=str(port), user="sa", password="Pw-1",
                               tds_version="7.4")
        cur = conn.cursor()
        cur.execute("SELECT 40 + 2")
        assert cur.fetchone()[0] == 42
        conn.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _batch(sql: str, status: int = P.STATUS_EOM) -> bytes:
    headers = b"\x16\x00\x00\x00\x12\x00\x00\x00\x02\x00" + b"\x00" * 8 + b"\x01\x00\x00\x00"
    payload = headers + sql.encode("utf-16-le")
    return struct.pack(">BBHHBB", P.PKT_SQL_BATCH, status, len(payload) + 8, 0, 1, 0) + payload


def test_resetconnection_header_flag(tds_server: TdsServer, raw_tds_login) -> None:
    s = raw_tds_login(tds_server)
    s.sendall(_batch("CREATE TABLE #gone (v INT); SET CONTEXT_INFO 0x01; BEGIN TRAN"))
    P.read_message(s)
    assert tds_server.sessions()[0]["trancount"] == 1
    s.sendall(_batch("SELECT OBJECT_ID('tempdb..#gone')",
                     status=P.STATUS_EOM | P.STATUS_RESETCONNECTION))
    _t, _st, payload = P.read_message(s)
    # ENVCHANGE type 18 (reset acknowledged) comes first
    assert payload[:4] == bytes([P.TOK_ENVCHANGE, 3, 0, P.ENV_RESETACK])
    assert tds_server.sessions()[0]["trancount"] == 0
    assert b"\x26\x04" in payload and payload.count(bytes([P.TOK_ROW, 0])) == 1  # NULL int


def test_python_tds_parameters_and_transactions(tds_server: TdsServer) -> None:
    pytds = pytest.importorskip("pytds")
    with pytds.connect(tds_server.host, tds_server.database, tds_server.user,
                       tds_server.password, port=tds_server.port, autocommit=False) as conn:
        cur = conn.cursor()
        cur.execute("SELECT %s + 1, %s", (41, "text"))  # RPC sp_executesql with typed params
        assert cur.fetchall() == [(42, "text")]
        cur.execute("CREATE TABLE p (id INT)")
        conn.commit()  # Transaction Manager requests
        cur.execute("INSERT INTO p VALUES (%s)", (1,))
        conn.rollback()
        cur.execute("SELECT COUNT(*) FROM p")
        assert cur.fetchone()[0] == 0
    assert tds_server.stats()["transactions"] >= 2 and tds_server.stats()["rpcs"] >= 1


@pytest.mark.skipif(shutil.which("tsql") is None, reason="FreeTDS tsql is not installed")
@pytest.mark.parametrize("version", ["7.0", "7.4"])
def test_freetds_tsql_runs_batches(tds_server: TdsServer, version: str) -> None:
    script = "SELECT 40 + 2 AS answer\ngo\nSELECT * FROM missing\ngo\nexit\n"
    proc = subprocess.run(
        ["tsql", "-H", tds_server.host, "-p", str(tds_server.port), "-U", tds_server.user,
         "-P", tds_server.password],
        input=script, capture_output=True, text=True, timeout=30,
        env=dict(os.environ, TDSVER=version),
    )
    assert "answer" in proc.stdout and "42" in proc.stdout
    assert "Msg 208" in proc.stdout + proc.stderr
