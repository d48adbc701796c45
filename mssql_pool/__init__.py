"""mssql_pool: a validating, self-healing connection pool for SQL Server and Azure SQL.

The names in ``__all__`` are the stable surface application code needs: the two pools, their
configuration, the retry policy and the transaction runner, and the errors an application
catches. Everything else lives in its module (``mssql_pool.classify``, ``mssql_pool.retry``,
``mssql_pool.breaker``, ``mssql_pool.endpoints``, ...); docs/api.md lists where each name is.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from .aio import AsyncConnectionPool
from .config import PoolConfig
from .errors import (
    CircuitOpenError,
    CommitUnknownError,
    ConfigError,
    MssqlPoolError,
    PoolCircuitOpen,
    PoolClosed,
    PoolError,
    PoolTimeout,
    RedirectError,
    RetryExhausted,
    TooManyRequests,
    UnbalancedTransactionError,
)
from .pool import ConnectionPool
from .retry import RetryPolicy
from .transaction import run_transaction, transactional

__version__ = "0.1.0"

logging.getLogger("mssql_pool").addHandler(logging.NullHandler())

__all__ = [
    # the pools and their configuration
    "ConnectionPool",
    "AsyncConnectionPool",
    "PoolConfig",
    # retrying and transactions
    "RetryPolicy",
    "run_transaction",
    "transactional",
    # the errors an application catches
    "MssqlPoolError",
    "ConfigError",
    "PoolError",
    "PoolTimeout",
    "PoolClosed",
    "TooManyRequests",
    "CircuitOpenError",
    "PoolCircuitOpen",
    "RetryExhausted",
    "CommitUnknownError",
    "UnbalancedTransactionError",
    "RedirectError",
    "__version__",
]

# Names this package exported at the top before its surface was narrowed. They still resolve
# (so old imports keep working) but are not part of the stable list: import them from the
# module named here.
_MOVED = {
    "AsyncConnection": "aio",
    "AsyncCursor": "aio",
    "PooledConnection": "connection",
    "PooledCursor": "connection",
    "CircuitBreaker": "breaker",
    "CircuitState": "breaker",
    "Classifier": "classify",
    "ErrorInfo": "classify",
    "ErrorKind": "classify",
    "is_disconnect": "classify",
    "retry_if_exception_type": "classify",
    "retry_if_kind": "classify",
    "retry_if_number": "classify",
    "retry_if_retryable": "classify",
    "ConnectionCheckFailed": "errors",
    "Endpoint": "endpoints",
    "EventKind": "events",
    "PoolEvent": "events",
    "Landing": "endpoints",
    "CONNECT_POLICY": "retry",
    "AttemptRecord": "retry",
    "ExponentialBackoff": "retry",
    "FixedBackoff": "retry",
    "LinearBackoff": "retry",
    "PhasedBackoff": "retry",
    "connect_policy": "retry",
    "set_testing": "retry",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'mssql_pool' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
