"""asyncio: units per second and event-loop lag, the async pool against the sync pool in
threads (and SQLAlchemy's AsyncEngine on both aioodbc and this pool, where available).

The TDS test server runs in a subprocess (so its threads do not compete with the
measured process for the GIL) and answers every request after ``--latency`` seconds
(default 1 ms). Each scenario runs ``--tasks`` concurrent tasks (default 64) on a pool of
``--pool`` connections (default 8) for ``--seconds``; a unit is: check a connection out,
``SELECT @@SPID`` and fetch, give it back.

Loop lag: a probe task sleeps 1 ms at a time and records how late it wakes
(``loop.time()`` after the sleep minus the time it asked for). Its p50/p99/max tell how
long the event loop was kept from running ready callbacks: any blocking call on the loop
shows up here, and so does everything else that delays the loop's thread (the OS
scheduler on a loaded machine, the GIL held by other threads: up to
``sys.getswitchinterval()``, 5 ms, at a time). ``idle`` is the probe alone, the floor of
what this machine gives.

Loop steps: the wall time of every callback the loop ran (``Handle._run``: task steps,
future callbacks) during the measurement, p99 and max. A blocking call on the loop makes
its step as long as the call; the pool's own steps stay short.

Scenarios:

``async``       AsyncConnectionPool; ``async with pool.connection()``, ``await cur.execute``
``on_loop``     ConnectionPool called on the event loop itself (what not to do: shows
                what blocking looks like in these figures)
``to_thread``   ConnectionPool in threads: each task runs the unit with
                ``await loop.run_in_executor(executor, unit)`` (an executor of --tasks
                threads), the usual way to call blocking code from asyncio
``sa_async``    SQLAlchemy AsyncEngine from mssql_pool.sqlalchemy_async.create_async_engine
``aioodbc``     SQLAlchemy ``create_async_engine("mssql+aioodbc://...")`` with Microsoft's
                ODBC Driver 18 (``--odbc-driver``), when aioodbc and the driver load

    .venv/bin/python bench/asyncio_pool.py                 # about 60 s
    .venv/bin/python bench/asyncio_pool.py --seconds 3 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mssql_pool import AsyncConnectionPool, ConnectionPool

_SERVER = r"""
import sys, time
from mssql_pool.testing import TdsServer
srv = TdsServer(latency=float(sys.argv[1])).start()
print(srv.port, flush=True)
sys.stdin.read()
srv.close()
"""
USER, PASSWORD = "sa", "Secret123!"


def start_server(latency: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(latency)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def probe(stop: asyncio.Event, lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(0.001)
        lags.append(max(loop.time() - t - 0.001, 0.0))


async def drive(unit: Callable[[], Awaitable[None]], tasks: int,
                seconds: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    lags: list[float] = []
    done = [0]

    async def worker() -> None:
        while not stop.is_set():
            await unit()
            done[0] += 1

    steps: list[float] = []
    prober = asyncio.create_task(probe(stop, lags))
    workers = [asyncio.create_task(worker()) for _ in range(tasks)]
    await asyncio.sleep(min(0.5, seconds / 4))       # warm up
    done[0] = 0
    del lags[:]
    original = asyncio.events.Handle._run
    clock = time.perf_counter

    def timed(handle: Any) -> None:
        t = clock()
        original(handle)
        steps.append(clock() - t)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]
    try:
        t0 = loop.time()
        await asyncio.sleep(seconds)
        elapsed = loop.time() - t0
    finally:
        asyncio.events.Handle._run = original  # type: ignore[method-assign]
    count = done[0]
    lag = list(lags)
    stop.set()
    await asyncio.gather(*workers, prober)
    return {"units_s": count / elapsed, "lag_p50_ms": pct(lag, 0.5) * 1000,
            "lag_p99_ms": pct(lag, 0.99) * 1000, "lag_max_ms": max(lag, default=0) * 1000,
            "step_p99_ms": pct(steps, 0.99) * 1000, "step_max_ms": max(steps, default=0) * 1000,
            "probes": len(lag)}


async def scenario_idle(port: int, args: argparse.Namespace) -> dict[str, float]:
    async def nothing() -> None:
        await asyncio.sleep(0.01)
    return await drive(nothing, 1, args.seconds)


async def scenario_async(port: int, args: argparse.Namespace) -> dict[str, float]:
    url = f"mssql://{USER}:{PASSWORD}@127.0.0.1:{port}/master"
    async with AsyncConnectionPool(url, min_size=args.pool, max_size=args.pool,
                                   timeout=30) as pool:
        await pool.wait(30)

        async def unit() -> None:
            async with pool.connection() as conn:
                cur = conn.cursor()
                await cur.execute("SELECT @@SPID")
                await cur.fetchall()
        return await drive(unit, args.tasks, args.seconds)


async def scenario_to_thread(port: int, args: argparse.Namespace) -> dict[str, float]:
    url = f"mssql://{USER}:{PASSWORD}@127.0.0.1:{port}/master"
    executor = ThreadPoolExecutor(args.tasks, thread_name_prefix="bench")
    loop = asyncio.get_running_loop()
    with ConnectionPool(url, min_size=args.pool, max_size=args.pool, timeout=30) as pool:
        pool.wait(30)

        def sync_unit() -> None:
            with pool.connection() as conn:
                cur = conn.cursor()
                cur.execute("SELECT @@SPID")
                cur.fetchall()

        async def unit() -> None:
            await loop.run_in_executor(executor, sync_unit)
        try:
            return await drive(unit, args.tasks, args.seconds)
        finally:
            executor.shutdown(wait=True)


async def scenario_on_loop(port: int, args: argparse.Namespace) -> dict[str, float]:
    """The mistake the async pool exists to avoid: the sync pool called on the loop."""
    url = f"mssql://{USER}:{PASSWORD}@127.0.0.1:{port}/master"
    with ConnectionPool(url, min_size=args.pool, max_size=args.pool, timeout=30) as pool:
        pool.wait(30)

        async def unit() -> None:
            with pool.connection() as conn:
                cur = conn.cursor()
                cur.execute("SELECT @@SPID")
                cur.fetchall()
            await asyncio.sleep(0)
        return await drive(unit, args.tasks, args.seconds)


async def _engine_scenario(engine: Any, args: argparse.Namespace) -> dict[str, float]:
    from sqlalchemy import text

    stmt = text("SELECT @@SPID")

    async def unit() -> None:
        async with engine.connect() as conn:
            (await conn.execute(stmt)).all()
    try:
        async with engine.connect() as conn:      # first connect: dialect initialisation
            await conn.execute(stmt)
        return await drive(unit, args.tasks, args.seconds)
    finally:
        await engine.dispose()


async def scenario_sa_async(port: int, args: argparse.Namespace) -> dict[str, float]:
    from mssql_pool.sqlalchemy_async import create_async_engine

    engine = create_async_engine(f"mssql+pymssql://{USER}:{PASSWORD}@127.0.0.1:{port}/master",
                                 min_size=args.pool, max_size=args.pool, timeout=30)
    try:
        return await _engine_scenario(engine, args)
    finally:
        await engine.pool.mssql_pool.close()


async def scenario_aioodbc(port: int, args: argparse.Namespace) -> dict[str, float]:
    from urllib.parse import quote_plus

    from sqlalchemy.ext.asyncio import create_async_engine

    odbc = (f"DRIVER={{{args.odbc_driver}}};SERVER=127.0.0.1,{port};DATABASE=master;"
            f"UID={USER};PWD={PASSWORD};Encrypt=no")
    engine = create_async_engine(f"mssql+aioodbc:///?odbc_connect={quote_plus(odbc)}",
                                 pool_size=args.pool, max_overflow=0, pool_timeout=30)
    return await _engine_scenario(engine, args)


SCENARIOS: dict[str, Callable[[int, argparse.Namespace], Awaitable[dict[str, float]]]] = {
    "idle": scenario_idle,
    "async": scenario_async,
    "to_thread": scenario_to_thread,
    "on_loop": scenario_on_loop,
    "sa_async": scenario_sa_async,
    "aioodbc": scenario_aioodbc,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--pool", type=int, default=8)
    p.add_argument("--latency", type=float, default=0.001)
    p.add_argument("--odbc-driver", default="ODBC Driver 18 for SQL Server")
    p.add_argument("--only", nargs="*", choices=sorted(SCENARIOS))
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    names = args.only or list(SCENARIOS)
    if "aioodbc" in names and not args.only:
        try:
            import aioodbc  # noqa: F401
            import pyodbc
            if args.odbc_driver not in pyodbc.drivers():
                raise ImportError(f"{args.odbc_driver!r} not registered with unixODBC")
        except ImportError as exc:
            print(f"aioodbc: skipped ({exc})")
            names.remove("aioodbc")
    proc, port = start_server(args.latency)
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    try:
        for r in range(args.rounds):
            for name in names:
                res = asyncio.run(SCENARIOS[name](port, args))
                results[name].append(res)
                print(f"round {r + 1} {name:10s} {res['units_s']:8.0f} units/s  lag p50 "
                      f"{res['lag_p50_ms']:.3f} ms  p99 {res['lag_p99_ms']:.3f} ms  max "
                      f"{res['lag_max_ms']:.2f} ms  step p99 {res['step_p99_ms']:.3f} ms "
                      f"max {res['step_max_ms']:.2f} ms", flush=True)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    print(f"\nmedian of {args.rounds} rounds, {args.tasks} tasks, pool of {args.pool}, "
          f"server latency {args.latency * 1000:g} ms, {args.seconds:g} s each "
          f"(Python {platform.python_version()}, {os.cpu_count()} cores):\n")
    print("| scenario | units/s | loop lag p50 ms | p99 ms | max ms | step p99 ms | "
          "step max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    summary: dict[str, dict[str, float]] = {}
    for name in names:
        rows = results[name]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        summary[name] = med
        print(f"| {name} | {med['units_s']:.0f} | {med['lag_p50_ms']:.3f} | "
              f"{med['lag_p99_ms']:.3f} | {med['lag_max_ms']:.2f} | "
              f"{med['step_p99_ms']:.3f} | {med['step_max_ms']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rounds": results, "median": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    t0 = time.monotonic()
    rc = main()
    print(f"\n({time.monotonic() - t0:.0f} s)")
    sys.exit(rc)
