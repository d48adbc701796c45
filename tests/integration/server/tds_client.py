"""Small client-side helpers the test server's own tests share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pymssql

from mssql_pool.testing import TdsServer


def connect(server: TdsServer, **kw: Any) -> pymssql.Connection:
    """A plain pymssql connection to ``server`` (``kw`` overrides its connect kwargs)."""
    return pymssql.connect(**server.connect_kwargs(**kw))


def scalar(cur: Any, sql: str) -> Any:
    """The first column of the first row of ``sql``."""
    cur.execute(sql)
    return cur.fetchone()[0]


def wait_until(cond: Callable[[], Any], timeout: float = 5.0) -> bool:
    """Poll ``cond`` every 10 ms for at most ``timeout`` seconds; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())
