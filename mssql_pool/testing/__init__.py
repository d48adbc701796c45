"""mssql_pool.testing: a TDS test server (SQL Server stand-in) for recovery tests.

``TdsServer`` speaks TDS 7.0-7.4 on a real TCP port, runs SQL on SQLite and injects
SQL Server's and Azure SQL's faults on demand. See docs/testing.md.
"""

from __future__ import annotations

from .server import TdsServer, serve_main

__all__ = ["TdsServer", "serve_main"]
