"""200 concurrent pymssql sessions hold: all logged in at once, all working, all cleaned up."""

from __future__ import annotations

import threading
import time
from typing import Any

import pymssql
import pytest

from mssql_pool.testing import TdsServer

pytestmark = pytest.mark.timeout(120)

SESSIONS = 200


def test_200_concurrent_sessions(tds_server: TdsServer) -> None:
    setup = pymssql.connect(**tds_server.connect_kwargs(autocommit=True))
    setup.cursor().execute("CREATE TABLE hits (spid INT PRIMARY KEY, n INT)")
    setup.close()
    threads_before = threading.active_count()
    all_in = threading.Barrier(SESSIONS + 1, timeout=60)
    may_leave = threading.Event()
    errors: list[BaseException] = []
    spids: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            conn = pymssql.connect(**tds_server.connect_kwargs(login_timeout=30))
            cur = conn.cursor()
            cur.execute("SELECT @@SPID")
            spid = int(cur.fetchone()[0])
            cur.execute("INSERT INTO hits VALUES (%d, 1)", (spid,))  # each its own row
            conn.commit()
            with lock:
                spids.append(spid)
            all_in.wait()
            may_leave.wait(60)
            cur.execute("UPDATE hits SET n = n + 1 WHERE spid = %d", (spid,))
            cur.execute("SELECT n FROM hits WHERE spid = %d", (spid,))
            assert cur.fetchone()[0] == 2
            conn.commit()
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            with lock:
                errors.append(exc)
            all_in.abort()

    workers = [threading.Thread(target=client, name=f"test-session-{i}", daemon=True)
               for i in range(SESSIONS)]
    start = time.monotonic()
    for w in workers:
        w.start()
    try:
        all_in.wait()
        sessions: list[dict[str, Any]] = tds_server.sessions()
        assert len(sessions) == SESSIONS
        assert tds_server.stats()["sessions_open"] == SESSIONS
    finally:
        may_leave.set()
        for w in workers:
            w.join(60)
    assert not errors, errors[:3]
    assert len(set(spids)) == SESSIONS
    check = pymssql.connect(**tds_server.connect_kwargs(autocommit=True))
    cur = check.cursor()
    cur.execute("SELECT COUNT(*), SUM(n) FROM hits")
    assert cur.fetchone() == (SESSIONS, 2 * SESSIONS)
    check.close()
    deadline = time.monotonic() + 10
    while (tds_server.sessions() or threading.active_count() > threads_before) and (
            time.monotonic() < deadline):
        time.sleep(0.05)
    assert tds_server.sessions() == []
    assert threading.active_count() <= threads_before
    assert time.monotonic() - start < 90
