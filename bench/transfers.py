"""Money transfers through ``run_transaction`` on a real server: transfers per second.

Eight threads (``--threads``) move money between ten accounts (``--accounts``; the fewer,
the more often two units lock the same rows in opposite orders and one is a deadlock
victim, re-run by ``run_transaction``) for ``--seconds`` through
one ``ConnectionPool`` with default options, then the same with ``?autocommit=true``.
Each unit: two UPDATEs and a ledger INSERT, committed by ``run_transaction``. Prints the
committed units, the logins the pool made (a login per unit means every commit cost the
connection) and checks the money is all there.

Run: ``python bench/transfers.py --url mssql://user:pass@127.0.0.1:1433/master``
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from typing import Any

import pymssql

import mssql_pool
from mssql_pool._dsn import parse_conninfo

INITIAL = 1000


def run(url: str, threads: int, seconds: float, autocommit: bool,
        accounts: int = 10) -> dict[str, Any]:
    table = f"bench_xfer_{uuid.uuid4().hex[:8]}"
    kw = parse_conninfo(url)
    admin = pymssql.connect(**{**kw, "autocommit": True})
    cur = admin.cursor()
    cur.execute(f"CREATE TABLE dbo.{table} (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
    cur.execute(f"CREATE TABLE dbo.{table}_ledger (tid BIGINT NOT NULL, amount INT NOT NULL)")
    for i in range(accounts):
        cur.execute(f"INSERT INTO dbo.{table} VALUES (%d, %d)", (i, INITIAL))
    counts = [0] * threads
    stop = threading.Event()

    def transfer(conn: Any, tid: int, src: int, dst: int, amount: int) -> None:
        c = conn.cursor()
        c.execute(f"UPDATE dbo.{table} SET balance = balance - %d WHERE id = %d", (amount, src))
        c.execute(f"UPDATE dbo.{table} SET balance = balance + %d WHERE id = %d", (amount, dst))
        c.execute(f"INSERT INTO dbo.{table}_ledger VALUES (%d, %d)", (tid, amount))

    def worker(w: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            src, dst = (n + w) % accounts, (n * 7 + w + 1) % accounts
            if src != dst:
                pool.run_transaction(transfer, w * 10_000_000 + n, src, dst, 1 + n % 50)
                counts[w] += 1

    target = url + ("&" if "?" in url else "?") + "autocommit=true" if autocommit else url
    try:
        with mssql_pool.ConnectionPool(target, min_size=threads, max_size=threads,
                                       timeout=30.0) as pool:
            pool.wait(timeout=60.0)
            before = pool.get_stats()["connections_num"]
            workers = [threading.Thread(target=worker, args=(w,), name=f"xfer-{w}", daemon=True)
                       for w in range(threads)]
            started = time.monotonic()
            for t in workers:
                t.start()
            time.sleep(seconds)
            stop.set()
            for t in workers:
                t.join(60)
            elapsed = time.monotonic() - started
            logins = pool.get_stats()["connections_num"] - before
        cur.execute(f"SELECT SUM(balance) FROM dbo.{table}")
        total = cur.fetchone()[0]
        return {"units": sum(counts), "seconds": elapsed, "logins": logins,
                "money_ok": total == accounts * INITIAL}
    finally:
        cur.execute(f"DROP TABLE IF EXISTS dbo.{table}")
        cur.execute(f"DROP TABLE IF EXISTS dbo.{table}_ledger")
        admin.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--accounts", type=int, default=10)
    args = ap.parse_args()
    print(f"| pool | units in {args.seconds:g} s | units/s | logins during the run | money ok |")
    print("| --- | ---: | ---: | ---: | --- |")
    for autocommit in (False, True):
        r = run(args.url, args.threads, args.seconds, autocommit, args.accounts)
        name = "autocommit=true" if autocommit else "default"
        print(f"| {name} | {r['units']} | {r['units'] / r['seconds']:.0f} | {r['logins']} "
              f"| {r['money_ok']} |")


if __name__ == "__main__":
    main()
