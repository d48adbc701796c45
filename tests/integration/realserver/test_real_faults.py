"""Real faults on a real SQL Server: deadlocks between two sessions, KILL mid-transaction,
a money-transfer workload under KILLs, a container restart, error classification.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import mssql_pool
from mssql_pool import CommitUnknownError

from .conftest import RealServer, kill_session, sessions_of

pytestmark = pytest.mark.realserver

ACCOUNTS = 10
INITIAL = 1000


def make_pool(server: RealServer, appname: str, **options: Any) -> Any:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", 8)
    options.setdefault("timeout", 30.0)
    options.setdefault("name", appname)
    return mssql_pool.ConnectionPool(server.connect_kwargs(appname=appname, timeout=30), **options)


def create_accounts(server: RealServer, table: str) -> None:
    admin = server.connect()
    cur = admin.cursor()
    cur.execute(f"CREATE TABLE dbo.{table} (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
    cur.execute(f"CREATE TABLE dbo.{table}_ledger (tid BIGINT NOT NULL, amount INT NOT NULL)")
    for i in range(ACCOUNTS):
        cur.execute(f"INSERT INTO dbo.{table} VALUES (%d, %d)", (i, INITIAL))
    admin.close()


def drop_ledger(server: RealServer, table: str) -> None:
    admin = server.connect()
    admin.cursor().execute(f"DROP TABLE IF EXISTS dbo.{table}_ledger")
    admin.close()


def deadlock_pair(server: RealServer, table: str) -> list[BaseException]:
    """Two raw sessions lock rows 0 and 1 in opposite orders: SQL Server kills one (1205)."""
    a = server.connect(autocommit=False)
    b = server.connect(autocommit=False)
    errors: list[BaseException] = []
    both_locked = threading.Barrier(2, timeout=30)

    def run(conn: Any, first: int, second: int) -> None:
        cur = conn.cursor()
        try:
            cur.execute(f"UPDATE dbo.{table} SET balance = balance + 1 WHERE id = %d", (first,))
            both_locked.wait()
            cur.execute(f"UPDATE dbo.{table} SET balance = balance - 1 WHERE id = %d", (second,))
            conn.commit()
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            errors.append(exc)
            try:
                conn.rollback()
            except Exception:  # noqa: BLE001
                pass

    threads = [
        threading.Thread(target=run, args=(a, 0, 1), name="deadlock-a"),
        threading.Thread(target=run, args=(b, 1, 0), name="deadlock-b"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    a.close()
    b.close()
    return errors


def test_real_deadlock_is_classified_as_deadlock(real_server: RealServer, table_name: str) -> None:
    from mssql_pool.classify import classify

    create_accounts(real_server, table_name)
    try:
        errors = deadlock_pair(real_server, table_name)
    finally:
        drop_ledger(real_server, table_name)
    assert len(errors) == 1, errors  # exactly one victim; the other committed
    info = classify(errors[0])
    assert info.number == 1205 or 1205 in info.numbers
    assert info.retryable and not info.connection_dead
    assert "deadlock" in str(getattr(info.kind, "value", info.kind)).lower()


def test_run_transaction_retries_a_real_deadlock(real_server: RealServer, table_name: str) -> None:
    """Both units run to completion; the deadlock victim is re-run, applied once."""
    create_accounts(real_server, table_name)
    barrier = threading.Barrier(2, timeout=30)
    attempts = {0: 0, 1: 0}
    errors: list[BaseException] = []

    def unit(conn: Any, who: int, first: int, second: int) -> None:
        attempts[who] += 1
        cur = conn.cursor()
        cur.execute(f"UPDATE dbo.{table_name} SET balance = balance - 5 WHERE id = %d", (first,))
        if attempts[who] == 1:
            barrier.wait()  # both hold their first lock: a guaranteed deadlock
        cur.execute(f"UPDATE dbo.{table_name} SET balance = balance + 5 WHERE id = %d", (second,))
        cur.execute(f"INSERT INTO dbo.{table_name}_ledger VALUES (%d, 5)", (who,))

    def run(who: int, first: int, second: int) -> None:
        try:
            pool.run_transaction(unit, who, first, second)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    try:
        with make_pool(real_server, "mp-deadlock", min_size=2, max_size=2) as pool:
            threads = [
                threading.Thread(target=run, args=(0, 0, 1), name="unit-0"),
                threading.Thread(target=run, args=(1, 1, 0), name="unit-1"),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
            assert errors == []
            assert sorted(attempts.values()) == [1, 2]  # one victim, re-run once
            # The victim's rollback finds no transaction (3903 on Babelfish, in words
            # pymssql does not recognise): a no-op, not a reason to drop the connection.
            assert pool.get_stats()["connections_discarded"] == 0
            with pool.connection() as conn:
                cur = conn.cursor()
                cur.execute(f"SELECT tid, COUNT(*) FROM dbo.{table_name}_ledger GROUP BY tid")
                assert sorted(cur.fetchall()) == [(0, 1), (1, 1)]
                cur.execute(f"SELECT SUM(balance) FROM dbo.{table_name}")
                assert cur.fetchone()[0] == ACCOUNTS * INITIAL
    finally:
        drop_ledger(real_server, table_name)


def test_kill_mid_transaction_reruns_the_whole_unit(
    real_server: RealServer, table_name: str
) -> None:
    create_accounts(real_server, table_name)
    calls = 0

    def unit(conn: Any) -> None:
        nonlocal calls
        calls += 1
        cur = conn.cursor()
        cur.execute(f"UPDATE dbo.{table_name} SET balance = balance - 7 WHERE id = 0")
        if calls == 1:
            cur.execute("SELECT @@SPID")
            kill_session(real_server, cur.fetchone()[0])
        cur.execute(f"UPDATE dbo.{table_name} SET balance = balance + 7 WHERE id = 1")
        cur.execute(f"INSERT INTO dbo.{table_name}_ledger VALUES (42, 7)")

    try:
        with make_pool(real_server, "mp-kill-tx", validate_after=0.0) as pool:
            pool.run_transaction(unit)
            assert calls == 2
            with pool.connection() as conn:
                cur = conn.cursor()
                cur.execute(f"SELECT COUNT(*) FROM dbo.{table_name}_ledger WHERE tid = 42")
                assert cur.fetchone()[0] == 1
                cur.execute(f"SELECT balance FROM dbo.{table_name} WHERE id IN (0, 1) ORDER BY id")
                assert [r[0] for r in cur.fetchall()] == [INITIAL - 7, INITIAL + 7]
    finally:
        drop_ledger(real_server, table_name)


def test_transfers_under_repeated_kills_keep_the_invariant(
    real_server: RealServer, table_name: str
) -> None:
    """Four workers move money while an admin KILLs the pool's sessions every 300 ms.

    Real deadlocks happen too (opposite lock orders). Every transfer is either
    committed exactly once, rolled back, or reported as CommitUnknownError.
    """
    appname = "mp-transfers"
    create_accounts(real_server, table_name)
    committed: set[int] = set()
    unknown: set[int] = set()
    failures: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def transfer(conn: Any, tid: int, src: int, dst: int, amount: int) -> None:
        cur = conn.cursor()
        cur.execute(
            f"UPDATE dbo.{table_name} SET balance = balance - %d WHERE id = %d", (amount, src)
        )
        cur.execute(
            f"UPDATE dbo.{table_name} SET balance = balance + %d WHERE id = %d", (amount, dst)
        )
        cur.execute(f"INSERT INTO dbo.{table_name}_ledger VALUES (%d, %d)", (tid, amount))

    def worker(w: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            tid = w * 1_000_000 + n
            src, dst = (n + w) % ACCOUNTS, (n * 7 + w + 1) % ACCOUNTS
            if src == dst:
                continue
            try:
                pool.run_transaction(transfer, tid, src, dst, 1 + n % 50)
                with lock:
                    committed.add(tid)
            except CommitUnknownError:
                with lock:
                    unknown.add(tid)
            except Exception as exc:  # noqa: BLE001
                with lock:
                    failures.append(exc)

    def killer() -> None:
        while not stop.wait(0.3):
            for spid in sessions_of(real_server, appname)[:2]:
                try:
                    kill_session(real_server, spid)
                except Exception:  # noqa: BLE001 - the session may be gone already
                    pass

    try:
        with make_pool(real_server, appname, min_size=2, max_size=6, validate_after=0.0) as pool:
            threads = [
                threading.Thread(target=worker, args=(w,), name=f"xfer-{w}") for w in range(4)
            ]
            threads.append(threading.Thread(target=killer, name="killer"))
            for t in threads:
                t.start()
            time.sleep(6.0)
            stop.set()
            for t in threads:
                t.join(90)
            assert failures == []
            assert len(committed) > 20
            with pool.connection() as conn:
                cur = conn.cursor()
                cur.execute(f"SELECT SUM(balance) FROM dbo.{table_name}")
                assert cur.fetchone()[0] == ACCOUNTS * INITIAL
                cur.execute(f"SELECT tid, COUNT(*) FROM dbo.{table_name}_ledger GROUP BY tid")
                ledger = dict(cur.fetchall())
        assert all(count == 1 for count in ledger.values())  # nothing applied twice
        assert committed <= set(ledger)  # every acknowledged commit landed
        assert set(ledger) <= committed | unknown  # nothing landed that was reported failed
    finally:
        drop_ledger(real_server, table_name)


def test_container_restart_pool_recovers(real_server: RealServer) -> None:
    if real_server.restart is None:
        pytest.skip("the server is not ours to restart (MSSQL_POOL_TEST_URL)")
    import pymssql

    def connect() -> Any:
        return pymssql.connect(**real_server.connect_kwargs(appname="mp-restart", timeout=30))

    with mssql_pool.ConnectionPool(connect=connect, min_size=2, max_size=4, timeout=10.0) as pool:
        with pool.connection() as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.fetchall()
        real_server.restart()
        deadline = time.monotonic() + 180
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                with pool.connection(timeout=10.0) as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT 1")
                    assert cur.fetchall() == [(1,)]
                break
            except Exception as exc:  # noqa: BLE001 - the server is still starting
                last = exc
                time.sleep(1.0)
        else:
            pytest.fail(f"pool did not recover within 180 s after restart: {last!r}")
        assert pool.get_stats()["connections_lost"] + pool.get_stats()["checks_failed"] >= 1


def test_programming_errors_are_classified_not_retryable(
    real_server: RealServer, table_name: str
) -> None:
    from mssql_pool.classify import classify

    with make_pool(real_server, "mp-classify", max_size=1) as pool:
        for sql, number in (
            ("SELECT * FROM dbo.no_such_table_xyz", 208),
            ("SELECT 1 +", 102),
            ("SELECT no_such_column FROM sys.objects", 207),
        ):
            with pytest.raises(Exception) as info:  # noqa: PT011
                with pool.connection() as conn:
                    conn.cursor().execute(sql)
            ci = classify(info.value)
            # Babelfish: 33557097 with a PostgreSQL-style text, read as the same number.
            assert ci.number == number, (sql, ci)
            assert not ci.retryable and not ci.connection_dead


def test_login_failure_is_auth_and_not_retried(real_server: RealServer) -> None:
    """In a fresh interpreter: pymssql keeps login error state process-wide (module
    globals it never resets), so an earlier failed login would change what this sees."""
    code = (
        "import sys, pymssql\n"
        "from mssql_pool.classify import classify\n"
        "kw = dict(server=sys.argv[1], port=int(sys.argv[2]), user=sys.argv[3],\n"
        "          password='definitely-Wrong-9', database='master', tds_version='7.4',\n"
        "          login_timeout=10)\n"
        "try:\n"
        "    pymssql.connect(**kw)\n"
        "except Exception as exc:\n"
        "    ci = classify(exc)\n"
        "    print(ci.number, str(getattr(ci.kind, 'value', ci.kind)).lower(), ci.retryable)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, real_server.host, str(real_server.port), real_server.user],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    number, kind, retryable = out.stdout.split()
    assert number == "18456" and "auth" in kind and retryable == "False", out


def test_check_command_against_the_real_server(
    real_server: RealServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from mssql_pool import cli

    assert cli.main(["check", real_server.url, "--json"]) == 0
    out = capsys.readouterr().out
    assert real_server.password not in out
    assert "Microsoft" in out or "SQL" in out
