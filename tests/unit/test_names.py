"""Names that say what they are: the endpoint router is not an endpoint, and the pool's
health check is not the ``mssql-pool check`` command."""

from __future__ import annotations

from typing import Any

import pytest

from mssql_pool import endpoints, health
from mssql_pool.endpoints import Endpoint, EndpointRouter
from mssql_pool.errors import ConnectionCheckFailed


def test_the_router_is_named_apart_from_an_endpoint() -> None:
    router = EndpointRouter([Endpoint.parse("sql-a:1433"), Endpoint.parse("sql-b")],
                            breaker=None, name="orders")
    assert repr(router).startswith("<EndpointRouter 'orders'")
    assert "EndpointRouter" in endpoints.__all__ and "Endpoints" not in endpoints.__all__
    assert endpoints.Endpoints is EndpointRouter     # the old name still imports


class _Raw:
    def __init__(self) -> None:
        self.ran: list[str] = []

    def cursor(self) -> Any:
        raw = self

        class _Cursor:
            description = None

            def execute(self, sql: str) -> None:
                raw.ran.append(sql)

            def close(self) -> None:
                pass

        return _Cursor()


def test_the_pool_s_health_check_is_check_connection() -> None:
    raw = _Raw()
    health.check_connection(None, raw)
    assert raw.ran == [health.DEFAULT_CHECK]
    with pytest.raises(ConnectionCheckFailed):
        health.check_connection(lambda conn: False, raw)
    assert "check_connection" in health.__all__ and "run_check" not in health.__all__
    assert health.run_check is health.check_connection  # the old name still imports
