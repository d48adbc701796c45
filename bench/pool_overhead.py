"""Pool overhead benchmark: mssql_pool against a floor and the pools people use.

Every pool runs over the same fake DB-API driver (tests/unit/fakedb.py), so what is
measured is the pool's own cost:

* ``mssql_pool``    ConnectionPool with default options (check "SELECT 1" with the 0.5 s
                    bypass window, reset="auto", maintenance thread running);
* ``floor``         a minimal deque + Condition pool: the least any pool can cost;
* ``qp``/``qp+ping`` SQLAlchemy QueuePool (reset_on_return=rollback), pre_ping off/on;
* ``dbu``/``dbu+ping`` DBUtils PooledDB (reset=True), ping off (0) / on (1, checkout).
  The fake connection has ``ping()``, so DBUtils' ping really runs here; with pymssql
  (no ``ping()``) it silently does nothing.

Scenarios (pool of 4 connections everywhere):

1. single thread, checkout + checkin pair (ns per pair, median of rounds);
2. single thread, checkout + ``cursor().execute("SELECT 1")`` + checkin;
3. 1/4/16/64 threads, checkout + checkin pairs for a fixed time: ns per pair (wall time /
   pairs) and each thread's share of the checkouts (min and max / mean, and "starved":
   threads that got less than 10 % of the mean);
4. fairness: 16 threads, 4 connections, every checkout runs one statement with a
   simulated 200 us round trip (the fake driver sleeps, releasing the GIL);
5. validation: mssql_pool with the default check + bypass window vs ``check=None``, in
   scenario 4's setting and single-threaded.

Rounds interleave the pools in a shuffled order and ratios are computed per round (paired)
before taking the median, which cancels most of the noise of a shared machine.

Run: ``python bench/pool_overhead.py`` (about 5 minutes) or ``--quick`` (under 2 minutes).
``--before DIR`` adds ``before``: the ``ConnectionPool`` of another copy of the package
(``DIR`` is its ``mssql_pool`` directory, e.g. an older commit unpacked with ``git
archive``), measured in the same shuffled rounds, so a change is compared with what it
replaced in one run (paired ratio ``mssql_pool/before``).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "unit"))

from fakedb import FakeDB  # noqa: E402

import mssql_pool  # noqa: E402
from mssql_pool import ConnectionPool  # noqa: E402

POOL_SIZE = 4
Get = Callable[[], Any]
Put = Callable[[Any], None]


# ----------------------------------------------------------------------------- the floor
class MinimalPool:
    """The floor: a deque, a lock, a condition; no checks, no reset, no fairness."""

    def __init__(self, connect: Callable[[], Any], size: int) -> None:
        self._idle = deque(connect() for _ in range(size))
        self._cond = threading.Condition(threading.Lock())

    def getconn(self) -> Any:
        with self._cond:
            while not self._idle:
                self._cond.wait()
            return self._idle.pop()

    def putconn(self, conn: Any) -> None:
        with self._cond:
            self._idle.append(conn)
            self._cond.notify()

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- adapters
class Subject:
    """One pool under test: ``get()`` returns a connection-like object, ``put(c)`` returns it."""

    def __init__(self, name: str, get: Get, put: Put, close: Callable[[], None]) -> None:
        self.name = name
        self.get = get
        self.put = put
        self.close = close


def load_before(path: str) -> Any:
    """Import the package copy at ``path`` under the name ``mssql_pool_before``."""
    import importlib.util

    init = os.path.join(path, "__init__.py")
    spec = importlib.util.spec_from_file_location("mssql_pool_before", init,
                                                  submodule_search_locations=[path])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mssql_pool_before"] = module
    spec.loader.exec_module(module)
    return module


def make_before(db: FakeDB, package: Any) -> Subject:
    pool = package.ConnectionPool(connect=db.connect, min_size=POOL_SIZE, max_size=POOL_SIZE,
                                  name="before", timeout=60)
    pool.wait(10)
    return Subject("before", pool.getconn, pool.putconn, pool.close)


def make_mssql_pool(db: FakeDB, **opts: Any) -> Subject:
    pool = ConnectionPool(connect=db.connect, min_size=POOL_SIZE, max_size=POOL_SIZE,
                          name="bench", timeout=60, **opts)
    pool.wait(10)
    return Subject("mssql_pool", pool.getconn, pool.putconn, pool.close)


def make_floor(db: FakeDB) -> Subject:
    pool = MinimalPool(db.connect, POOL_SIZE)
    return Subject("floor", pool.getconn, pool.putconn, pool.close)


def make_queuepool(db: FakeDB, pre_ping: bool) -> Subject:
    from sqlalchemy.pool import QueuePool
    from sqlalchemy.pool.base import _ConnDialect

    class PingDialect(_ConnDialect):
        def _do_ping_w_event(self, dbapi_connection: Any) -> bool:
            cur = dbapi_connection.cursor()
            try:
                cur.execute("SELECT 1")
            finally:
                cur.close()
            return True

    pool = QueuePool(db.connect, pool_size=POOL_SIZE, max_overflow=0, timeout=60,
                     pre_ping=pre_ping, dialect=PingDialect())
    warm = [pool.connect() for _ in range(POOL_SIZE)]
    for c in warm:
        c.close()

    def put(c: Any) -> None:
        c.close()

    return Subject("qp+ping" if pre_ping else "qp", pool.connect, put, pool.dispose)


def make_dbutils(db: FakeDB, ping: bool) -> Subject:
    from dbutils.pooled_db import PooledDB

    def creator() -> Any:
        return db.connect()

    creator.threadsafety = 1  # type: ignore[attr-defined]   # like pymssql
    pool = PooledDB(creator, mincached=POOL_SIZE, maxcached=POOL_SIZE,
                    maxconnections=POOL_SIZE, blocking=True, ping=1 if ping else 0,
                    failures=(db.OperationalError, db.InterfaceError))

    def put(c: Any) -> None:
        c.close()

    return Subject("dbu+ping" if ping else "dbu", pool.connection, put, pool.close)


FACTORIES: dict[str, Callable[[FakeDB], Subject]] = {
    "mssql_pool": make_mssql_pool,
    "floor": make_floor,
    "qp": lambda db: make_queuepool(db, False),
    "qp+ping": lambda db: make_queuepool(db, True),
    "dbu": lambda db: make_dbutils(db, False),
    "dbu+ping": lambda db: make_dbutils(db, True),
}


# ----------------------------------------------------------------------------- workloads
def pair_loop(s: Subject, n: int) -> float:
    get, put = s.get, s.put
    t0 = time.perf_counter()
    for _ in range(n):
        put(get())
    return (time.perf_counter() - t0) / n * 1e9


def execute_loop(s: Subject, n: int) -> float:
    get, put = s.get, s.put
    t0 = time.perf_counter()
    for _ in range(n):
        c = get()
        c.cursor().execute("SELECT 1")
        put(c)
    return (time.perf_counter() - t0) / n * 1e9


def threaded(s: Subject, threads: int, duration: float, execute: bool) -> tuple[float, list[int]]:
    """Run ``threads`` workers for ``duration`` s; return (ns per pair, checkouts per thread)."""
    counts = [0] * threads
    stop = threading.Event()
    start = threading.Barrier(threads + 1)
    get, put = s.get, s.put

    def worker(i: int) -> None:
        start.wait()
        n = 0
        while not stop.is_set():
            c = get()
            if execute:
                c.cursor().execute("SELECT 1")
            put(c)
            n += 1
        counts[i] = n

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(duration)
    stop.set()
    for t in ts:
        t.join(60)
    elapsed = time.perf_counter() - t0
    total = sum(counts)
    return (elapsed / total * 1e9 if total else float("inf")), counts


def shares(counts: list[int]) -> tuple[float, float, int]:
    """(min share / mean, max share / mean, threads starved: below 10 % of the mean)."""
    mean = sum(counts) / len(counts)
    if mean == 0:
        return 0.0, 0.0, len(counts)
    return min(counts) / mean, max(counts) / mean, sum(1 for c in counts if c < 0.1 * mean)


# ----------------------------------------------------------------------------- main
def single(workload: Callable[[Subject, int], float], title: str, subjects: dict[str, Subject],
           names: list[str], rounds: int, n_pairs: int, rng: random.Random) -> None:
    """One single-thread workload over every pool, in shuffled order, with paired ratios
    of mssql_pool against the floor, QueuePool and (``--before``) an earlier copy."""
    per: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {"floor": [], "qp": [], "before": []}
    for name in names:               # warm-up
        workload(subjects[name], n_pairs // 5)
    for _ in range(rounds):
        order = names[:]
        rng.shuffle(order)
        got = {name: workload(subjects[name], n_pairs) for name in order}
        for name in names:
            per[name].append(got[name])
        for other, paired in ratios.items():
            if "mssql_pool" in got and other in got:
                paired.append(got["mssql_pool"] / got[other])
    print(f"\n## {title} (single thread, median of {rounds} rounds x {n_pairs})")
    print(f"{'pool':<12}{'ns/op':>10}{'x floor':>10}")
    floor = statistics.median(per["floor"]) if "floor" in per else None
    for name in names:
        med = statistics.median(per[name])
        rel = f"{med / floor:10.2f}" if floor else ""
        print(f"{name:<12}{med:10.0f}{rel}")
    for other, paired in ratios.items():
        if paired:
            print(f"paired ratio mssql_pool/{other}: {statistics.median(paired):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (under 2 minutes)")
    ap.add_argument("--only", nargs="*", choices=[*FACTORIES, "before"],
                    help="pools to include")
    ap.add_argument("--before", metavar="DIR",
                    help="also measure the mssql_pool package copy in DIR as 'before'")
    args = ap.parse_args()
    if args.before:
        package = load_before(os.path.abspath(args.before))
        FACTORIES["before"] = lambda db: make_before(db, package)
    logging.getLogger("mssql_pool").setLevel(logging.ERROR)
    quick = args.quick
    rounds = 5 if quick else 11
    n_pairs = 5000 if quick else 20000
    duration = 0.4 if quick else 1.5
    fair_duration = 1.0 if quick else 3.0
    names = args.only or [n for n in FACTORIES if n != "before" or args.before]
    rng = random.Random(1)

    print(f"# pool_overhead  python {platform.python_version()}  mssql_pool "
          f"{mssql_pool.__version__}  cpus={os.cpu_count()}  quick={quick}")
    db = FakeDB(record=False)
    subjects = {name: FACTORIES[name](db) for name in names}
    bench_start = time.perf_counter()

    for workload, title in ((pair_loop, "checkout+checkin pair"),
                            (execute_loop, "checkout + cursor().execute('SELECT 1') + checkin")):
        single(workload, title, subjects, names, rounds, n_pairs, rng)

    print(f"\n## threads on a pool of {POOL_SIZE}: checkout+checkin pairs for {duration} s each")
    print(f"{'pool':<12}{'threads':>8}{'ns/pair':>10}{'min/mean':>10}{'max/mean':>10}"
          f"{'starved':>9}")
    for nthreads in (1, 4, 16, 64):
        order = names[:]
        rng.shuffle(order)
        results = {name: threaded(subjects[name], nthreads, duration, False) for name in order}
        for name in names:
            ns, counts = results[name]
            lo, hi, starved = shares(counts)
            print(f"{name:<12}{nthreads:>8}{ns:10.0f}{lo:10.2f}{hi:10.2f}{starved:>9}")

    print(f"\n## fairness: 16 threads, {POOL_SIZE} connections, 200 us simulated round trip, "
          f"{fair_duration} s")
    db.latency = 200e-6
    print(f"{'pool':<12}{'pairs/s':>10}{'min/mean':>10}{'max/mean':>10}{'starved':>9}")
    order = names[:]
    rng.shuffle(order)
    fair = {name: threaded(subjects[name], 16, fair_duration, True) for name in order}
    for name in names:
        ns, counts = fair[name]
        lo, hi, starved = shares(counts)
        print(f"{name:<12}{1e9 / ns:10.0f}{lo:10.2f}{hi:10.2f}{starved:>9}")

    print("\n## validation: default check with the 0.5 s bypass window vs check=None")
    checked = subjects["mssql_pool"] if "mssql_pool" in subjects else make_mssql_pool(db)
    unchecked = make_mssql_pool(db, check=None)
    unchecked.name = "mssql_pool check=None"
    thr: dict[str, list[float]] = {"checked": [], "unchecked": []}
    for _ in range(3 if quick else 5):
        for label, subj in sorted((("checked", checked), ("unchecked", unchecked)),
                                  key=lambda _: rng.random()):
            ns, _counts = threaded(subj, 16, fair_duration / 2, True)
            thr[label].append(1e9 / ns)
    c_med, u_med = statistics.median(thr["checked"]), statistics.median(thr["unchecked"])
    print(f"16 threads, 200 us: checked {c_med:.0f}/s, unchecked {u_med:.0f}/s, "
          f"ratio {c_med / u_med:.3f}")
    db.latency = 0.0
    pairs = [(pair_loop(checked, n_pairs), pair_loop(unchecked, n_pairs)) for _ in range(rounds)]
    print(f"single thread, no latency: checked/unchecked pair cost ratio "
          f"{statistics.median(a / b for a, b in pairs):.3f}")
    unchecked.close()
    for subj in subjects.values():
        subj.close()
    print(f"\n# total {time.perf_counter() - bench_start:.0f} s")


if __name__ == "__main__":
    main()
