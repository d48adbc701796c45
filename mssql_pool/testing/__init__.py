"""mssql_pool.testing: a TDS test server (SQL Server stand-in) for recovery tests.

``TdsServer`` speaks TDS 7.0-7.4 on a real TCP port, runs SQL on SQLite and injects
SQL Server's and Azure SQL's faults on demand. See docs/testing.md.

The server is imported on first use of ``TdsServer`` or ``serve_main``, so that the
library can use the pure codec (``mssql_pool.testing._protocol``, e.g. the PRELOGIN
probe of ``mssql-pool check``) without loading the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import TdsServer, serve_main

__all__ = ["TdsServer", "serve_main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
