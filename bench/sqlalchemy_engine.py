"""SQLAlchemy engines on the TDS test server: stock QueuePool, QueuePool with pre_ping, and
mssql_pool's engine (mssql_pool.sqlalchemy.create_engine), all in one run.

Real pymssql over TCP to a TdsServer answering every request after ``--latency`` seconds
(default 1 ms, a same-region network). Engines (pool of 4 each):

* ``qp``           ``sqlalchemy.create_engine(url, pool_size=4)``: QueuePool, rollback on return;
* ``qp+ping``      the same with ``pool_pre_ping=True`` (a ``SELECT 1`` on every checkout);
* ``mssql_pool``   ``mssql_pool.sqlalchemy.create_engine(url, max_size=4)``: defaults
                   (checked on checkout unless used within 0.5 s, reset only as needed).

Units:

* ``select``  ``with engine.connect() as c: c.execute(text("SELECT ...")).all()``;
* ``orm``     ``with Session(engine) as s: s.get(Item, n)`` (a primary-key read), then
              ``s.commit()``.

For each unit and thread count the engines take turns in a shuffled order each round for
``--seconds`` each; units/s and round trips per unit (the server's ``requests`` counter
over the interval) are recorded, and the ratio mssql_pool / qp+ping is computed per round
before the median is taken, which cancels most of a shared machine's noise.

Run: ``python bench/sqlalchemy_engine.py`` (about 1 minute) or ``--quick`` (about 20 s).
"""

from __future__ import annotations

import argparse
import logging
import platform
import random
import statistics
from collections.abc import Callable

import sqlalchemy
from _timed import run_threads
from sqlalchemy import Integer, String, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mssql_pool.sqlalchemy import create_engine as mssql_pool_engine
from mssql_pool.testing import TdsServer

POOL_SIZE = 4
ENGINES = ("qp", "qp+ping", "mssql_pool")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))


def select_unit(engine: Engine, n: int) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1 AS x")).all()


def orm_unit(engine: Engine, n: int) -> None:
    with Session(engine) as ses:
        item = ses.get(Item, n % 50 + 1)
        assert item is not None
        ses.commit()


UNITS: dict[str, Callable[[Engine, int], None]] = {"select": select_unit, "orm": orm_unit}


def make_engines(server: TdsServer) -> dict[str, Engine]:
    url = server.url.replace("mssql://", "mssql+pymssql://", 1)
    return {
        "qp": sqlalchemy.create_engine(url, pool_size=POOL_SIZE, max_overflow=0),
        "qp+ping": sqlalchemy.create_engine(url, pool_size=POOL_SIZE, max_overflow=0,
                                            pool_pre_ping=True),
        "mssql_pool": mssql_pool_engine(url, max_size=POOL_SIZE, min_size=POOL_SIZE,
                                        name="bench"),
    }


def run_for(server: TdsServer, engine: Engine, unit: Callable[[Engine, int], None],
            threads: int, seconds: float) -> tuple[float, float]:
    """Run ``unit`` on ``threads`` threads for ``seconds``: (units/s, round trips/unit)."""
    for i in range(threads):       # warm: every pooled connection open and initialised
        unit(engine, i)
    return run_threads(server, lambda n: unit(engine, n), threads, seconds, "engine")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, default=0.001, help="server reply delay, s")
    p.add_argument("--seconds", type=float, default=1.5, help="per engine per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    p.add_argument("--units", nargs="+", default=list(UNITS), choices=list(UNITS))
    p.add_argument("--quick", action="store_true", help="1 round of 1 s")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 1.0
    logging.basicConfig(level=logging.WARNING)
    print(f"# SQLAlchemy {sqlalchemy.__version__}, Python {platform.python_version()}, "
          f"latency {args.latency * 1000:g} ms, pool of {POOL_SIZE}, {args.rounds} rounds x "
          f"{args.seconds:g} s per engine")
    rng = random.Random(7)
    with TdsServer(latency=args.latency) as server:
        engines = make_engines(server)
        seed = engines["qp"]
        Base.metadata.create_all(seed)
        with Session(seed) as ses:
            ses.add_all([Item(id=i, name=f"item {i}") for i in range(1, 51)])
            ses.commit()
            assert ses.scalar(select(sqlalchemy.func.count()).select_from(Item)) == 50
        try:
            print(f"{'unit':7} {'threads':>7} {'engine':>11} {'units/s':>9} {'rt/unit':>8} "
                  f"{'x qp+ping':>10}")
            for unit_name in args.units:
                unit = UNITS[unit_name]
                for threads in args.threads:
                    rates: dict[str, list[float]] = {e: [] for e in ENGINES}
                    trips: dict[str, list[float]] = {e: [] for e in ENGINES}
                    ratios: list[float] = []
                    for _ in range(args.rounds):
                        order = list(ENGINES)
                        rng.shuffle(order)
                        got: dict[str, float] = {}
                        for name in order:
                            rate, rt = run_for(server, engines[name], unit, threads,
                                               args.seconds)
                            rates[name].append(rate)
                            trips[name].append(rt)
                            got[name] = rate
                        ratios.append(got["mssql_pool"] / got["qp+ping"])
                    for name in ENGINES:
                        ratio = (f"{statistics.median(ratios):9.2f}x"
                                 if name == "mssql_pool" else "")
                        print(f"{unit_name:7} {threads:>7} {name:>11} "
                              f"{statistics.median(rates[name]):9.0f} "
                              f"{statistics.median(trips[name]):8.2f} {ratio:>10}", flush=True)
            stats = engines["mssql_pool"].pool.mssql_pool.get_stats()  # type: ignore[attr-defined]
            print(f"# mssql_pool engine: checks run {stats['checks_run']}, skipped "
                  f"{stats['checks_skipped']}; resets none/rollback/full "
                  f"{stats['resets_none']}/{stats['resets_rollback']}/{stats['resets_full']}")
        finally:
            for engine in engines.values():
                engine.dispose()
            engines["mssql_pool"].pool.mssql_pool.close()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
