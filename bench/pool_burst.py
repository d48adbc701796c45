"""Burst on a cold pool with slow logins: connections opened vs callers.

``N`` callers arrive at once at an empty pool (``min_size=0``, ``max_size=N``); logins take
``--login-ms`` (the fake driver sleeps); each caller runs one short unit (``--unit-ms``)
and returns its connection. A pool that gives each caller the connection it caused to be
opened opens one per caller; a pool whose callers take the first connection that comes
(new or returned) opens a handful and lets the rest of the logins join the idle set.

Run: ``python bench/pool_burst.py`` (a few seconds); ``--before DIR`` adds the
``ConnectionPool`` of another copy of the package (see pool_overhead.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "unit"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fakedb import FakeDB  # noqa: E402
from pool_overhead import load_before  # noqa: E402

import mssql_pool  # noqa: E402


def burst(package: Any, callers: int, login: float, unit: float) -> tuple[int, int, float]:
    """(logins finished during the burst, logins in all, burst seconds)."""
    db = FakeDB(record=False)

    def connect() -> Any:
        time.sleep(login)
        return db.connect()

    pool = package.ConnectionPool(connect=connect, min_size=0, max_size=callers,
                                  background=False, timeout=30, name="burst")
    start = threading.Barrier(callers + 1)

    def caller() -> None:
        start.wait()
        with pool.connection() as conn:
            conn.cursor().execute("SELECT 1")
            time.sleep(unit)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(60)
    elapsed = time.perf_counter() - t0
    during = db.connects
    time.sleep(login * 2)          # logins still in flight finish and go idle
    pool.close()
    return during, db.connects, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--login-ms", type=float, default=100.0)
    ap.add_argument("--unit-ms", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--before", metavar="DIR")
    args = ap.parse_args()
    logging.getLogger("mssql_pool").setLevel(logging.ERROR)
    logging.getLogger("mssql_pool_before").setLevel(logging.ERROR)
    subjects = {"mssql_pool": mssql_pool}
    if args.before:
        subjects["before"] = load_before(os.path.abspath(args.before))
    print(f"# pool_burst  callers={args.callers}  login={args.login_ms} ms  "
          f"unit={args.unit_ms} ms  rounds={args.rounds}")
    print(f"{'pool':<12}{'opened':>8}{'total':>8}{'burst ms':>10}")
    for name, package in subjects.items():
        runs = [burst(package, args.callers, args.login_ms / 1000, args.unit_ms / 1000)
                for _ in range(args.rounds)]
        during = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        ms = statistics.median(r[2] for r in runs) * 1000
        print(f"{name:<12}{during:>8.0f}{total:>8.0f}{ms:>10.0f}")


if __name__ == "__main__":
    main()
