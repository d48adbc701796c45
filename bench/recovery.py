"""Recovery benchmark: the recovery matrix run side by side for two pools.

Every fault of the matrix (tests/integration/recovery_faults.py: idle kills, busy
connections cut by a TCP proxy, a restart, a partition, an outage under 64 threads, an
Azure-style gateway moving to another node, a failover partner, deadlock and lock-timeout
storms, throttling, a slow server) runs twice in the same process against fresh TDS test
servers:

* ``mssql_pool``: ``ConnectionPool`` (circuits on: ``endpoint_breaker=
  DEFAULT_ENDPOINT_BREAKER``, 4..8 connections), units through
  ``pool.run_transaction(unit, verify=...)`` with a retry policy that also re-runs query
  timeouts (safe inside a transaction: the connection dies, the server rolls back);
* ``sqlalchemy``: SQLAlchemy 2 ``create_engine(..., pool_pre_ping=True)`` (QueuePool of 8,
  no overflow), units through ``with engine.begin()``; the application does not retry.

Per fault and pool: units done, errors the application saw, units lost or applied twice
(ledger check), errors whose unit had in fact committed, time to the first success after
the fault cleared, the longest time without any success from the fault's start, and the
logins attempted while the fault lasted (every ``pymssql.connect`` call is counted).

Writes ``recovery.md`` (the table), ``recovery.png`` (successes and errors per 100 ms for
each fault, fault windows shaded) and ``recovery.json`` to a scratch directory
(``mssql_pool-bench`` in the system's temporary directory), or to ``--out DIR``:
``--out bench/results`` replaces the project's committed results. Server hints are real:
40501 asks for 10 s, so that row takes longer.

Run: ``python bench/recovery.py`` (about 90 s) or ``--only restart partition``.

Against a real server (SQL Server, Babelfish...): ``python bench/recovery.py --url
mssql://user:pass@host:1433/master [--restart-cmd "path/to/start.sh restart"]`` runs the
rows that need no fault switch of the test server (``REAL_FAULTS``: KILLs, a restart
through the command, COMMIT replies lost and a partition through the TCP proxy, real
deadlocks) and writes ``recovery-real.md``/``.png``/``.json``. The login must be allowed
to KILL sessions; the tables ``dbo.ledger`` and ``dbo.total`` are created and dropped.
Without ``--restart-cmd`` the restart row is left out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import recovery_faults as rf  # noqa: E402

POOLS = ("mssql_pool", "sqlalchemy")
BIN = 0.1
#: Where results go unless ``--out`` says otherwise: never over the committed ones.
SCRATCH = os.path.join(tempfile.gettempdir(), "mssql_pool-bench")
COMMITTED = os.path.join(HERE, "results")


def fmt_errors(out: rf.Outcome) -> str:
    if not out.errors:
        return "0"
    total = sum(out.errors.values())
    kinds = ", ".join(f"{k} {v}" for k, v in out.errors.most_common(2))
    return f"{total} ({kinds})"


def fmt_s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def table(results: list[rf.Outcome], by_key: dict[str, rf.Fault] | None = None) -> str:
    by_key = by_key or rf.BY_KEY
    lines = [
        "| fault | pool | units ok | errors seen by the app | lost / doubled | error but "
        "committed | recovered after clear (s) | longest gap (s) | logins during fault |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for out in results:
        title = by_key[out.fault].title
        lines.append(
            f"| {title} | {out.pool} | {out.units_ok} | {fmt_errors(out)} | "
            f"{len(out.lost)} / {len(out.doubled)} | {len(out.failed_but_landed)} | "
            f"{fmt_s(out.first_ok_after_clear)} | {out.max_gap:.2f} | {out.logins_during} |")
    return "\n".join(lines)


def plot(results: list[rf.Outcome], path: str,
         by_key: dict[str, rf.Fault] | None = None) -> None:
    by_key = by_key or rf.BY_KEY
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(o.fault for o in results))
    fig, axes = plt.subplots(len(keys), 1, figsize=(11, 2.1 * len(keys)), squeeze=False)
    colours = {"mssql_pool": "tab:blue", "sqlalchemy": "tab:orange"}
    for ax, key in zip(axes[:, 0], keys, strict=True):
        rows = [o for o in results if o.fault == key]
        for out in rows:
            n = int(out.run_end / BIN) + 1
            ok = [0] * n
            err = [0] * n
            for e in out.events:
                if e.at > out.extra.get("stopped_at", out.run_end):
                    continue                 # finished after the workload stopped
                i = min(int(e.at / BIN), n - 1)
                (ok if e.ok else err)[i] += 1
            xs = [i * BIN for i in range(n)]
            ax.plot(xs, ok, color=colours[out.pool], lw=1.2, label=f"{out.pool} ok")
            if any(err):
                ax.bar(xs, err, width=BIN, color=colours[out.pool], alpha=0.35,
                       label=f"{out.pool} errors", align="edge")
            ax.axvspan(out.fault_start, max(out.fault_end, out.fault_start + 0.03),
                       color="grey", alpha=0.12 if out.pool == "mssql_pool" else 0.08)
        ax.set_xlim(0, max(o.extra.get("stopped_at", o.run_end) for o in rows) + 0.1)
        ax.set_title(by_key[key].title, fontsize=9, loc="left")
        ax.set_ylabel("per 100 ms", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper right", ncol=4)
    axes[-1, 0].set_xlabel("seconds since the run started (fault window shaded)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*",
                    choices=sorted({f.key for f in rf.FAULTS + rf.REAL_FAULTS}),
                    help="run only these faults")
    ap.add_argument("--url", help="a real server: run the rows that need no test-server "
                                  "fault switch (mssql://user:pass@host:port/db)")
    ap.add_argument("--restart-cmd", help="with --url: a command that restarts the server")
    ap.add_argument("--pools", nargs="*", choices=POOLS, default=list(POOLS))
    ap.add_argument("--out", default=SCRATCH,
                    help=f"directory for recovery.md, .json and .png (default {SCRATCH}; "
                         "--out bench/results replaces the committed results)")
    ap.add_argument("--after", type=float, default=2.0,
                    help="seconds of workload after each fault clears (default 2)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    os.makedirs(args.out, exist_ok=True)
    real: rf.RealTarget | None = None
    catalogue, by_key, stem = rf.FAULTS, rf.BY_KEY, "recovery"
    if args.url:
        from mssql_pool._dsn import parse_conninfo

        real = rf.RealTarget(parse_conninfo(args.url), restart=args.restart_cmd)
        catalogue, by_key, stem = rf.REAL_FAULTS, rf.REAL_BY_KEY, "recovery-real"
        if not args.restart_cmd:
            catalogue = [f for f in catalogue if f.key != "restart"]
    faults = [f for f in catalogue if not args.only or f.key in args.only]
    results: list[rf.Outcome] = []
    started = time.monotonic()
    for fault in faults:
        for pool in args.pools:
            t = time.monotonic()
            out = rf.run_fault(fault, pool, after=max(fault.after, args.after), real=real)
            results.append(out)
            print(f"{time.monotonic() - t:5.1f}s {out.summary()}", flush=True)
    md = table(results, by_key)
    where = ""
    if real is not None:
        where = f" against {_server_banner(real)}"
    header = (f"Recovery matrix{where}, {time.strftime('%Y-%m-%d')}, Python "
              f"{platform.python_version()}, {os.cpu_count()} cores, "
              f"{time.monotonic() - started:.0f} s in all.\n\n")
    with open(os.path.join(args.out, f"{stem}.md"), "w") as fh:
        fh.write(header + md + "\n")
    plot(results, os.path.join(args.out, f"{stem}.png"), by_key)
    with open(os.path.join(args.out, f"{stem}.json"), "w") as fh:
        json.dump([_jsonable(o) for o in results], fh, indent=1)
    print()
    print(md)
    print(f"\nwritten to {args.out}", flush=True)
    return 0


def _server_banner(real: rf.RealTarget) -> str:
    """The first line of @@VERSION (e.g. "Babelfish for PostgreSQL ... - 12.0.2000.8")."""
    import pymssql

    conn = pymssql.connect(**real.connect_kwargs(login_timeout=10))
    try:
        cur = conn.cursor()
        cur.execute("SELECT @@VERSION")
        return str(cur.fetchone()[0]).splitlines()[0].strip()
    finally:
        conn.close()


def _jsonable(out: rf.Outcome) -> dict[str, Any]:
    return {
        "fault": out.fault, "pool": out.pool, "units_ok": out.units_ok,
        "errors": dict(out.errors), "lost": len(out.lost), "doubled": len(out.doubled),
        "failed_but_landed": len(out.failed_but_landed), "consistent": out.totals_consistent,
        "fault_start": out.fault_start, "fault_end": out.fault_end,
        "first_ok_after_clear": out.first_ok_after_clear, "max_gap": out.max_gap,
        "logins_during": out.logins_during, "logins": len(out.logins),
        "stats": out.extra.get("stats"),
    }


if __name__ == "__main__":
    sys.exit(main())
