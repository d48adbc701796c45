"""Round trips per unit of work, side by side: mssql_pool, SQLAlchemy's QueuePool (with and
without pre_ping) and mssql-python's own pooling, against the TDS test server.

One process, one ``TdsServer(latency=0.001)`` (every reply 1 ms late, a same-region
network), real drivers over TCP, each contender with a pool of 4:

* ``mssql_pool``    ``mssql_pool.sqlalchemy.create_engine(url, max_size=4, min_size=4)``
                    with default options; direct units use its ``ConnectionPool``;
* ``qp``            ``sqlalchemy.create_engine(url, pool_size=4, max_overflow=0)``: QueuePool,
                    rollback on return; direct units use ``engine.raw_connection()``;
* ``qp+ping``       the same with ``pool_pre_ping=True``;
* ``mssql-python``  Microsoft's driver (ODBC Driver 18 inside) with its process-wide pooling
                    (``mssql_python.pooling(max_size=4)``), ``Encrypt=no``; direct units only.
                    Its pool raises at once when full, so a semaphore of 4 makes threads
                    wait as the other pools do.

Units (the least each can cost on the wire is the ``limit`` column: one round trip per
statement the application sends, plus its COMMIT):

* ``select``       checkout, ``SELECT id, v FROM rt_item WHERE id = %s``, fetch, return;
* ``update``       checkout, two ``UPDATE``s, ``commit()``, return;
* ``run_tx``       the same two UPDATEs through ``pool.run_transaction`` (mssql_pool only);
* ``core_connect`` ``with engine.connect() as c: c.execute(select ... where id = :id).all()``;
* ``core_begin``   ``with engine.begin() as c:`` the two UPDATEs;
* ``orm_read``     ``with Session(engine) as s: s.get(Item, id)``;
* ``orm_write``    ``with Session(engine) as s:`` two ORM ``update()`` statements, ``s.commit()``.

"round trips" are counted exactly: the server's ``requests`` counter over 20 units run one
after another (after warm-up), divided by 20. "units/s" come from ``--seconds`` runs on 1
and 8 threads (contenders in a shuffled order each round; the median over rounds is shown),
whose "rt/unit" also includes what a loaded pool does besides (validation after the 0.5 s
window, connections opened). ``--trace`` also lists what one unit sends, request by
request, seen by a TCP proxy that parses the client's TDS stream.

mssql-python sends parameterised statements as ``sp_prepexec`` RPCs, which the TDS test
server does not implement; its units send the same statement text with the value inlined,
the very batch pymssql sends (pymssql interpolates parameters on the client), so the round
trips compare like for like. It needs Debian's ``libltdl7`` (``apt-get install libltdl7``)
and ``pip install -e '.[bench]'``; without it the contender is left out.

Run: ``python bench/round_trips.py`` (about 2 minutes), ``--quick`` (about 40 s), ``--trace``.
The table goes to a scratch file (printed at the end) unless ``--out PATH`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pymssql
import sqlalchemy
from sqlalchemy import Integer, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mssql_pool import ConnectionPool
from mssql_pool.sqlalchemy import create_engine as mssql_pool_engine
from mssql_pool.testing import TdsServer
from mssql_pool.testing.round_trips import Request, requests_per_unit, server_requests

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from _timed import run_threads  # noqa: E402
from tcp_proxy import TcpProxy  # noqa: E402

try:
    import mssql_python
except ImportError:  # the bench extra is not installed
    mssql_python = None

POOL_SIZE = 4
ROWS = 840  # a multiple of every thread count used: threads never touch each other's rows
CONTENDERS = ("mssql_pool", "qp", "qp+ping", "mssql-python")

SELECT_SQL = "SELECT id, v FROM rt_item WHERE id = %s"
UPDATE_SQL = "UPDATE rt_item SET v = v + 1 WHERE id = %s"


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "rt_item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    v: Mapped[int] = mapped_column(Integer)


# --------------------------------------------------------------------------- contenders

@dataclass
class Contender:
    name: str
    engine: Engine | None = None
    pool: ConnectionPool | None = None
    dsn: str = ""
    gate: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(POOL_SIZE))

    @contextlib.contextmanager
    def raw(self) -> Iterator[Any]:
        """A DB-API connection for one unit, returned to the pool on exit."""
        if self.pool is not None:
            with self.pool.connection() as conn:
                yield conn
        elif self.engine is not None:
            conn = self.engine.raw_connection()
            try:
                yield conn
            finally:
                conn.close()
        else:
            with self.gate:
                conn = mssql_python.connect(self.dsn)
                try:
                    yield conn
                finally:
                    conn.close()

    def sql(self, statement: str, n: int) -> tuple[str, tuple[int, ...]]:
        """The statement and parameters this driver is given (mssql-python: inlined)."""
        if self.pool is None and self.engine is None:
            return statement.replace("%s", str(int(n))), ()
        return statement, (n,)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        if self.pool is not None:
            self.pool.close()


def make_contenders(host: str, port: int, server: TdsServer, names: list[str]) -> dict[
        str, Contender]:
    url = (f"mssql+pymssql://{server.user}:{server.password}@{host}:{port}/"
           f"{server.database}")
    out: dict[str, Contender] = {}
    for name in names:
        if name == "mssql_pool":
            eng = mssql_pool_engine(url, max_size=POOL_SIZE, min_size=POOL_SIZE,
                                    name=f"rt-{port}")
            pool = eng.pool.mssql_pool  # type: ignore[attr-defined]
            pool.wait()
            out[name] = Contender(name, engine=eng, pool=pool)
        elif name in ("qp", "qp+ping"):
            out[name] = Contender(name, engine=sqlalchemy.create_engine(
                url, pool_size=POOL_SIZE, max_overflow=0, pool_pre_ping=name == "qp+ping"))
        elif name == "mssql-python" and mssql_python is not None:
            dsn = (f"Server={host},{port};Database={server.database};UID={server.user};"
                   f"PWD={server.password};Encrypt=no")
            out[name] = Contender(name, dsn=dsn)
    return out


# --------------------------------------------------------------------------- units

def u_select(c: Contender, n: int) -> None:
    with c.raw() as conn:
        cur = conn.cursor()
        cur.execute(*c.sql(SELECT_SQL, n % ROWS + 1))
        assert len(cur.fetchall()) == 1


def _two_updates(conn: Any, c: Contender, n: int) -> None:
    cur = conn.cursor()
    cur.execute(*c.sql(UPDATE_SQL, n % ROWS + 1))
    cur.execute(*c.sql(UPDATE_SQL, (n + ROWS // 2) % ROWS + 1))


def u_update(c: Contender, n: int) -> None:
    with c.raw() as conn:
        _two_updates(conn, c, n)
        conn.commit()


def u_run_tx(c: Contender, n: int) -> None:
    assert c.pool is not None
    c.pool.run_transaction(_two_updates, c, n)


def u_core_connect(c: Contender, n: int) -> None:
    assert c.engine is not None
    with c.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, v FROM rt_item WHERE id = :id"),
                            {"id": n % ROWS + 1}).all()
        assert len(rows) == 1


def u_core_begin(c: Contender, n: int) -> None:
    assert c.engine is not None
    stmt = text("UPDATE rt_item SET v = v + 1 WHERE id = :id")
    with c.engine.begin() as conn:
        conn.execute(stmt, {"id": n % ROWS + 1})
        conn.execute(stmt, {"id": (n + ROWS // 2) % ROWS + 1})


def u_orm_read(c: Contender, n: int) -> None:
    with Session(c.engine) as ses:
        assert ses.get(Item, n % ROWS + 1) is not None


def u_orm_write(c: Contender, n: int) -> None:
    with Session(c.engine) as ses:
        for key in (n % ROWS + 1, (n + ROWS // 2) % ROWS + 1):
            ses.execute(update(Item).where(Item.id == key).values(v=Item.v + 1))
        ses.commit()


@dataclass(frozen=True)
class Unit:
    name: str
    run: Callable[[Contender, int], None]
    limit: int
    who: tuple[str, ...]
    what: str


UNITS = (
    Unit("select", u_select, 1, CONTENDERS,
         "checkout, `SELECT ... WHERE id = %s`, fetch, return"),
    Unit("update", u_update, 3, CONTENDERS, "checkout, two UPDATEs, `commit()`, return"),
    Unit("run_tx", u_run_tx, 3, ("mssql_pool",), "the same through `run_transaction`"),
    Unit("core_connect", u_core_connect, 1, CONTENDERS[:3],
         "Core `engine.connect()`: SELECT, fetch"),
    Unit("core_begin", u_core_begin, 3, CONTENDERS[:3], "Core `engine.begin()`: two UPDATEs"),
    Unit("orm_read", u_orm_read, 1, CONTENDERS[:3], "ORM `Session`: `get()`, close"),
    Unit("orm_write", u_orm_write, 3, CONTENDERS[:3],
         "ORM `Session`: two `update()`s, `commit()`"),
)


# --------------------------------------------------------------------------- measuring

def exact_trips(server: TdsServer, c: Contender, unit: Unit, units: int = 20) -> Fraction:
    counter = iter(range(10**9))
    return requests_per_unit(server_requests(server), lambda: unit.run(c, next(counter)),
                             units=units, warm=3)


def trace_one(proxy: TcpProxy, c: Contender, unit: Unit) -> list[Request]:
    for n in range(3):
        unit.run(c, n)
    mark = proxy.request_count()
    unit.run(c, 3)
    return proxy.requests(mark)


def run_for(server: TdsServer, c: Contender, unit: Unit, threads: int,
            seconds: float) -> tuple[float, float]:
    """``unit`` on ``threads`` threads for ``seconds``: (units/s, requests per unit)."""
    return run_threads(server, lambda n: unit.run(c, n), threads, seconds,
                       f"{c.name} {unit.name}")


def fmt_trips(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{float(value):.2f}"


def seed(server: TdsServer) -> None:
    url = server.url.replace("mssql://", "mssql+pymssql://", 1)
    eng = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    Base.metadata.create_all(eng)
    with Session(eng) as ses:
        ses.add_all([Item(id=i, v=0) for i in range(1, ROWS + 1)])
        ses.commit()
        assert ses.scalar(select(sqlalchemy.func.count()).select_from(Item)) == ROWS
    eng.dispose()


def trips_table(server: TdsServer, contenders: dict[str, Any], units: list[Any],
                cols: list[str]) -> list[str]:
    """The exact round trips per unit and contender, as a markdown table."""
    trips: dict[tuple[str, str], Fraction] = {}
    for unit in units:
        for name in cols:
            if name in unit.who:
                trips[unit.name, name] = exact_trips(server, contenders[name], unit)
    lines = ["| unit | " + " | ".join(cols) + " | the limit |",
             "| --- |" + " ---: |" * (len(cols) + 1)]
    for unit in units:
        cells = [fmt_trips(trips[unit.name, n]) if (unit.name, n) in trips else "-"
                 for n in cols]
        lines.append(f"| `{unit.name}`: {unit.what} | " + " | ".join(cells)
                     + f" | {unit.limit} |")
    return lines


def rates_table(server: TdsServer, contenders: dict[str, Any], units: list[Any],
                cols: list[str], args: argparse.Namespace, rng: random.Random) -> list[str]:
    """Units per second (and round trips per unit) per thread count: the median of
    ``args.rounds`` runs in shuffled order; each row is printed as it is measured."""
    table = ["", "| unit | threads | " + " | ".join(cols) + " |",
             "| --- | ---: |" + " ---: |" * len(cols)]
    print(table[1], flush=True)
    for unit in units:
        for threads in args.threads:
            rates: dict[str, list[float]] = {n: [] for n in cols}
            rts: dict[str, list[float]] = {n: [] for n in cols}
            for _ in range(args.rounds):
                order = [n for n in cols if n in unit.who]
                rng.shuffle(order)
                for name in order:
                    rate, rt = run_for(server, contenders[name], unit, threads, args.seconds)
                    rates[name].append(rate)
                    rts[name].append(rt)
            cells = [f"{statistics.median(rates[n]):.0f} ({statistics.median(rts[n]):.2f})"
                     if rates[n] else "-" for n in cols]
            row = f"| `{unit.name}` | {threads} | " + " | ".join(cells) + " |"
            table.append(row)
            print(row, flush=True)
    return table


def trace_lines(server: TdsServer, units: list[Any], names: list[str]) -> list[str]:
    """What one unit sends, request by request, seen by a tapping TCP proxy."""
    lines: list[str] = []
    with TcpProxy((server.host, server.port), tap=True) as proxy:
        traced = make_contenders(proxy.host, proxy.port, server, names)
        try:
            for unit in units:
                for name in names:
                    if name in unit.who and name in traced:
                        reqs = trace_one(proxy, traced[name], unit)
                        shown = "; ".join(f"`{' '.join(str(r).split())}`" for r in reqs)
                        lines.append(f"* `{unit.name}`, {name} ({len(reqs)}): {shown}")
                        print(lines[-1], flush=True)
        finally:
            for c in traced.values():
                c.close()
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, default=0.001, help="server reply delay, s")
    p.add_argument("--seconds", type=float, default=1.0, help="per contender per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    p.add_argument("--units", nargs="+", default=[u.name for u in UNITS],
                   choices=[u.name for u in UNITS])
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument("--quick", action="store_true", help="1 round of 0.5 s")
    p.add_argument("--trace", action="store_true", help="list what one unit sends")
    p.add_argument("--out", help="write the tables here (default: a scratch file)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 0.5
    logging.basicConfig(level=logging.WARNING)
    units = [u for u in UNITS if u.name in args.units]
    names = [n for n in CONTENDERS if n in args.contenders]
    if "mssql-python" in names:
        if mssql_python is None:
            print("# mssql-python is not installed (pip install -e '.[bench]'): left out")
            names.remove("mssql-python")
        else:
            mssql_python.pooling(max_size=POOL_SIZE, idle_timeout=600)
    head = (f"SQLAlchemy {sqlalchemy.__version__}, pymssql {pymssql.__version__}, "
            f"mssql-python {getattr(mssql_python, '__version__', '-')}, Python "
            f"{platform.python_version()}, latency {args.latency * 1000:g} ms, pool of "
            f"{POOL_SIZE}, {args.rounds} rounds x {args.seconds:g} s, "
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC")
    print("#", head, flush=True)
    lines = [f"Measured: {head}.", ""]
    rng = random.Random(11)
    with TdsServer(latency=args.latency) as server:
        seed(server)
        contenders = make_contenders(server.host, server.port, server, names)
        try:
            cols = [n for n in names if n in contenders]
            lines += trips_table(server, contenders, units, cols)
            print("\n".join(lines), flush=True)
            lines += rates_table(server, contenders, units, cols, args, rng)
            lines += ["", "Cells: units/s (round trips per unit during that run)."]
        finally:
            for c in contenders.values():
                c.close()
        if args.trace:
            lines += ["", "What one unit sends (after warm-up), request by request:", ""]
            lines += trace_lines(server, units, names)
    out = args.out or os.path.join(tempfile.gettempdir(), "mssql_pool_round_trips.md")
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"# written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
