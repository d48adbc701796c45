"""``mssql-pool check``'s parts without a server: the PRELOGIN probe on a socket pair,
the advice, the /proc/net/tcp decoding, the report and its scrubbing."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading

from mssql_pool._advice import explain, first_line
from mssql_pool._check import EXIT_TCP, CheckResult, Step, prelogin_probe, print_check, scrubber
from mssql_pool._proc_net import hex_ip
from mssql_pool.testing import _protocol as tds


def test_scrubber_hides_raw_and_quoted_password_in_secret_positions() -> None:
    # the contract since the structural redaction: the known password is masked where a
    # password stands (URL userinfo, after a secret key), raw or percent-encoded, at any
    # length; the same letters elsewhere are ordinary words and stay
    scrub = scrubber("p@ss word!")
    assert scrub("a mssql://u:p@ss word!@h b PWD=p%40ss%20word%21") == (
        "a mssql://u:***@h b PWD=***")
    short = scrubber("the")
    assert short("mssql://u:the@h: check the user and password=the") == (
        "mssql://u:***@h: check the user and password=***")
    assert scrubber("a")("password='a', try a new one") == "password='***', try a new one"


def test_first_line_handles_pymssql_arg_shapes() -> None:
    connect_shape = Exception((18456, b"Login failed for user 'sa'.DB-Lib error message 20018"))
    assert first_line(connect_shape).startswith("Login failed for user 'sa'")
    execute_shape = Exception(208, b"Invalid object name 'nope'.\nDB-Lib error message 20018")
    assert first_line(execute_shape) == "Invalid object name 'nope'."
    assert first_line(RuntimeError("plain\nsecond")) == "plain"
    assert first_line(RuntimeError()) == "RuntimeError"


def test_explain_gives_meaning_and_remedy() -> None:
    info = explain(Exception((18456, b"Login failed for user 'sa'.")))
    assert info["meaning"] and info["try"]
    assert info["type"] == "Exception"


def test_hex_ip_decodes_proc_net_addresses() -> None:
    assert hex_ip("0100007F", 8) == "127.0.0.1"
    v4_mapped = "0000000000000000FFFF00000100007F"
    assert hex_ip(v4_mapped, 32) == "127.0.0.1"


def test_print_check_text_and_exit_line() -> None:
    result = CheckResult(target="mssql://sa:***@h:1/db")
    result.steps.append(Step("dns", True, 1.0, "h -> 10.0.0.1"))
    result.steps.append(
        Step(
            "tcp",
            False,
            2.0,
            "cannot connect to h:1",
            {"type": "ConnectionRefusedError", "message": "refused", "meaning": "m", "try": "t"},
        )
    )
    result.exit_code = EXIT_TCP
    out = io.StringIO()
    print_check(result, out, lambda s: s)
    text = out.getvalue()
    assert "  ok    dns" in text and "  FAIL  tcp" in text
    assert "meaning: m" in text and "try:     t" in text
    assert text.rstrip().endswith("exit 4")
    data = result.as_dict()
    assert data["ok"] is False and data["exit_meaning"] == "TCP connect failed"
    json.dumps(data)


def test_prelogin_probe_reads_version_and_encryption() -> None:
    """Against a socket pair: our PRELOGIN goes out, a canned SQL Server answer comes back."""
    client, server = socket.socketpair()
    # Reply: VERSION 16.0.1000.6, ENCRYPTION required (3), terminator.
    body_opts = bytes([0x00, 0x00, 0x0B, 0x00, 0x06, 0x01, 0x00, 0x11, 0x00, 0x01, 0xFF])
    body = body_opts + bytes([16, 0, 0x03, 0xE8, 0, 6]) + bytes([3])
    reply = bytes([0x04, 0x01]) + (8 + len(body)).to_bytes(2, "big") + b"\x00\x00\x01\x00" + body
    seen: list[bytes] = []

    def answer() -> None:
        seen.append(server.recv(4096))
        server.sendall(reply)

    t = threading.Thread(target=answer)
    t.start()
    text = prelogin_probe(client)
    t.join(5)
    client.close()
    server.close()
    assert seen and seen[0][0] == 0x12  # a PRELOGIN packet
    assert text == "PRELOGIN: server version 16.0.1000, encryption required"


def test_prelogin_probe_on_a_non_tds_service() -> None:
    client, server = socket.socketpair()
    server.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    server.close()
    text = prelogin_probe(client)
    client.close()
    assert "is this a SQL Server port?" in text


def test_the_probe_sends_the_codecs_prelogin_request() -> None:
    """One PRELOGIN encoder: the probe's request is the codec's, and it parses back."""
    request = tds.build_prelogin_request()
    assert tds.parse_prelogin(request) == {
        tds.PRELOGIN_VERSION: b"\x00" * 6,
        tds.PRELOGIN_ENCRYPTION: bytes([tds.ENCRYPT_OFF]),
        tds.PRELOGIN_INSTOPT: b"\x00",
        tds.PRELOGIN_THREADID: b"\x00" * 4,
        tds.PRELOGIN_MARS: b"\x00",
    }
    client, server = socket.socketpair()
    server.settimeout(5)
    client.settimeout(1)
    try:
        thread = threading.Thread(target=prelogin_probe, args=(client,), daemon=True)
        thread.start()
        sent = server.recv(4096)
    finally:
        server.close()  # the probe sees the peer close and answers "not TDS"
        thread.join(5)
        client.close()
    assert sent == tds.frame(tds.PKT_PRELOGIN, request, 4096, 0)


def test_prelogin_probe_on_a_malformed_reply() -> None:
    """A reply packet whose option table points past its end is not a SQL Server's."""
    client, server = socket.socketpair()
    server.sendall(tds.frame(tds.PKT_REPLY, b"\x00\x00\x50\x00\x06\xff", 4096, 0))
    text = prelogin_probe(client)
    client.close()
    server.close()
    assert text == "the service did not answer a TDS PRELOGIN: is this a SQL Server port?"


def test_the_check_loads_the_codec_without_the_test_server() -> None:
    """The diagnosis reuses the test server's codec, not the server (nor sqlglot)."""
    code = (
        "import sys, mssql_pool._check; "
        "print(sorted(m for m in sys.modules if m.startswith(('mssql_pool.testing', 'sqlglot'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['mssql_pool.testing', 'mssql_pool.testing._protocol']"
