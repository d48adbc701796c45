"""Shared helpers for the integration tests of the TDS test server."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

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
