"""Shared helpers for the integration tests of the TDS test server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pymssql
import pytest

from mssql_pool.testing import TdsServer
from mssql_pool.testing import _protocol as P


@pytest.fixture
def raw_tds_login() -> Iterator[Callable[[TdsServer], socket.socket]]:
    """Log into a TdsServer over a raw socket (TDS 7.4) and return the socket."""
    opened: list[socket.socket] = []

    def login(server: TdsServer) -> socket.socket:
        s = socket.create_connection((server.host, server.port), timeout=5)
        opened.append(s)
        s.sendall(P.frame(P.PKT_PRELOGIN, b"\xff", 4096, 0))
        P.read_message(s)
        s.sendall(P.frame(P.PKT_LOGIN7, P.build_login7(server.user, server.password,
                                                       server.database), 4096, 0))
        _ptype, _status, payload = P.read_message(s)
        assert bytes([P.TOK_LOGINACK]) in payload
        return s

    yield login
    for s in opened:
        s.close()


@pytest.fixture
def run_sql() -> Callable[..., None]:
    """Run statements on a TdsServer through a short-lived autocommit pymssql connection
    (setup the test itself does not observe)."""

    def run(server: TdsServer, *statements: str) -> None:
        with pymssql.connect(**server.connect_kwargs(autocommit=True)) as conn:
            cur = conn.cursor()
            for sql in statements:
                cur.execute(sql)

    return run


# pymssql keeps the number and severity of failed logins in module globals it never resets
# (docs/retries.md, "pymssql's shapes and quirks"): a failed login in the test process would
# change what later tests see. Logins meant to fail run in a fresh interpreter.
_LOGIN_SCRIPT = r"""
import json, sys, pymssql
kw = json.loads(sys.argv[1])
try:
    pymssql.connect(**kw).close()
    print(json.dumps({"ok": True}))
except pymssql.OperationalError as exc:
    number, text = exc.args[0]
    print(json.dumps({"ok": False, "number": number, "text": text.decode("utf-8", "replace")}))
"""


@pytest.fixture
def login_in_subprocess() -> Callable[..., dict[str, Any]]:
    """Log into a TdsServer from a fresh interpreter: {"ok": True} or the error seen."""

    def login(server: TdsServer, **kw: Any) -> dict[str, Any]:
        args = json.dumps(server.connect_kwargs(**kw))
        proc = subprocess.run([sys.executable, "-c", _LOGIN_SCRIPT, args], capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    return login
