"""mssql_pool: a validating, self-healing connection pool for SQL Server and Azure SQL."""

from __future__ import annotations

import logging

from .config import PoolConfig
from .connection import PooledConnection, PooledCursor
from .errors import (
    CircuitOpenError,
    CommitUnknownError,
    ConfigError,
    ConnectionCheckFailed,
    MssqlPoolError,
    PoolClosed,
    PoolError,
    PoolTimeout,
    RedirectError,
    RetryExhausted,
    TooManyRequests,
)
from .pool import ConnectionPool

__version__ = "0.1.0"

logging.getLogger("mssql_pool").addHandler(logging.NullHandler())

__all__ = [
    "CircuitOpenError",
    "CommitUnknownError",
    "ConfigError",
    "ConnectionPool",
    "ConnectionCheckFailed",
    "MssqlPoolError",
    "PoolClosed",
    "PoolConfig",
    "PooledConnection",
    "PooledCursor",
    "PoolError",
    "PoolTimeout",
    "RedirectError",
    "RetryExhausted",
    "TooManyRequests",
    "__version__",
]
