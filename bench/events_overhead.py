"""What pool events cost a checkout + checkin pair (fake driver, one thread).

Three pools take turns, each round in a shuffled order; the median ns/pair of each over
the rounds is printed, and its ratio to the pool without listeners within the same round:

* ``none``: no listener (the pool only asks whether anyone wants ``checkout``/``checkin``);
* ``recovery``: a listener of the recovery kinds only (reconnect_*, failover, circuit_*),
  as an alerting hook would be: no event is built on the hot path;
* ``every``: a no-op listener of every kind: two events per pair, each queued for the
  listener's thread;
* ``collector``: the Prometheus collector's listener (``mssql_pool.metrics``, counting
  every kind into its counters), as ``register(pool)`` adds it.

    .venv/bin/python bench/events_overhead.py [--rounds 7] [--pairs 20000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

from fakedb import FakeDB  # noqa: E402

from mssql_pool import ConnectionPool  # noqa: E402

RECOVERY = ["reconnect_started", "reconnect_attempt", "reconnect_succeeded",
            "reconnect_failed", "reconnect_aborted", "failover", "circuit_opened",
            "circuit_half_open", "circuit_closed"]


def _nop(event: Any) -> None:
    pass


def _pool(listeners: list[Any]) -> ConnectionPool:
    pool = ConnectionPool(connect=FakeDB(record=False).connect, min_size=1, max_size=1,
                          validate_after=3600, background=False, listeners=listeners)
    pool.wait(5)
    return pool


def _pairs(pool: ConnectionPool, n: int) -> float:
    getconn, putconn = pool.getconn, pool.putconn
    start = time.perf_counter()
    for _ in range(n):
        putconn(getconn())
    elapsed = time.perf_counter() - start
    pool.events.flush(60)       # the listener's backlog is not the next round's cost
    return elapsed / n * 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--pairs", type=int, default=20000)
    args = p.parse_args(argv)
    from mssql_pool.metrics import EventCounts

    pools = {"none": _pool([]), "recovery": _pool([(_nop, RECOVERY)]),
             "every": _pool([_nop]), "collector": _pool([EventCounts()])}
    times: dict[str, list[float]] = {name: [] for name in pools}
    ratios: dict[str, list[float]] = {name: [] for name in pools}
    try:
        for _ in range(args.rounds):
            order = list(pools)
            random.shuffle(order)
            this = {name: _pairs(pools[name], args.pairs) for name in order}
            for name, ns in this.items():
                times[name].append(ns)
                ratios[name].append(ns / this["none"])
    finally:
        for pool in pools.values():
            pool.close()
    print(f"{'listeners':<10} {'ns/pair':>8} {'x none':>7}")
    for name in pools:
        print(f"{name:<10} {statistics.median(times[name]):>8.0f} "
              f"{statistics.median(ratios[name]):>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
