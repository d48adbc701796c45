"""mssql_pool: a validating, self-healing connection pool for SQL Server and Azure SQL."""

from __future__ import annotations

import logging

from .aio import AsyncConnection, AsyncConnectionPool, AsyncCursor
from .breaker import CircuitBreaker, CircuitState
from .classify import (
    Classifier,
    ErrorInfo,
    ErrorKind,
    is_disconnect,
    retry_if_exception_type,
    retry_if_kind,
    retry_if_number,
    retry_if_retryable,
)
from .config import PoolConfig
from .connection import PooledConnection, PooledCursor
from .endpoints import Endpoint, Landing
from .errors import (
    CircuitOpenError,
    CommitUnknownError,
    ConfigError,
    ConnectionCheckFailed,
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
from .events import EventKind, PoolEvent
from .pool import ConnectionPool
from .retry import (
    CONNECT_POLICY,
    AttemptRecord,
    ExponentialBackoff,
    FixedBackoff,
    LinearBackoff,
    PhasedBackoff,
    RetryPolicy,
    connect_policy,
    set_testing,
)
from .transaction import run_transaction, transactional

__version__ = "0.1.0"

logging.getLogger("mssql_pool").addHandler(logging.NullHandler())

__all__ = [
    "CONNECT_POLICY",
    "AttemptRecord",
    "CircuitBreaker",
    "CircuitState",
    "Classifier",
    "ErrorInfo",
    "ErrorKind",
    "EventKind",
    "PoolEvent",
    "ExponentialBackoff",
    "FixedBackoff",
    "LinearBackoff",
    "PhasedBackoff",
    "RetryPolicy",
    "connect_policy",
    "is_disconnect",
    "retry_if_exception_type",
    "retry_if_kind",
    "retry_if_number",
    "retry_if_retryable",
    "run_transaction",
    "set_testing",
    "transactional",
    "CircuitOpenError",
    "CommitUnknownError",
    "UnbalancedTransactionError",
    "ConfigError",
    "ConnectionPool",
    "Endpoint",
    "Landing",
    "ConnectionCheckFailed",
    "MssqlPoolError",
    "PoolClosed",
    "PoolConfig",
    "PooledConnection",
    "PooledCursor",
    "PoolError",
    "PoolCircuitOpen",
    "PoolTimeout",
    "RedirectError",
    "RetryExhausted",
    "TooManyRequests",
    "__version__",
    "AsyncConnection", "AsyncConnectionPool", "AsyncCursor",
]
