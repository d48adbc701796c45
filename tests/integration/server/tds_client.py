"""Small client-side helpers the test server's own tests share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pymssql

from mssql_pool.testing import TdsServer


def connect(server: TdsServer, **kw: Any) -> pymssql.Connection:
    """A plain pymssql connection to ``server`` (``kw`` overrides its connect kwargs)."""
    return pymssql.connect(**server.connect_kwargs(**kw))


def committed(server: TdsServer, *statements: str) -> tuple[pymssql.Connection, Any]:
    """A connection to ``server`` in pymssql's default mode (a transaction open) that ran
    ``statements`` and committed them; and its cursor."""
    conn = connect(server)
    cur = conn.cursor()
    for sql in statements:
        cur.execute(sql)
    conn.commit()
    return conn, cur


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


class Background:
    """Run one call on a named thread; keep its result or its exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, name="test-background", daemon=True)
        self.thread.start()

    def join(self, timeout: float = 10.0) -> None:
        assert self.done.wait(timeout), "the background statement never finished"
        self.thread.join(timeout)
