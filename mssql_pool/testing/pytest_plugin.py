"""pytest plugin of mssql_pool.testing: fixtures ``tds_server`` and ``tds_server_factory``.

Registered through the ``pytest11`` entry point, so installing mssql_pool is enough::

    def test_recovers_from_a_kill(tds_server):
        conn = pymssql.connect(**tds_server.connect_kwargs())
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .server import TdsServer

TdsServerFactory = Callable[..., TdsServer]


@pytest.fixture
def tds_server_factory() -> Iterator[TdsServerFactory]:
    """Call it to start servers (same arguments as TdsServer); all are closed after the test."""
    servers: list[TdsServer] = []

    def make(*args: Any, **kwargs: Any) -> TdsServer:
        server = TdsServer(*args, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in reversed(servers):
        server.close()


@pytest.fixture
def tds_server(tds_server_factory: TdsServerFactory) -> TdsServer:
    """A fresh, running TdsServer (user sa / Secret123!, database master) for one test."""
    return tds_server_factory()
