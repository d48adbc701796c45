"""TDS test server speed: round trips per second and the server's own CPU per request.

The server runs in this process; the client (real pymssql, or python-tds for the RPC
scenario) runs in a subprocess, so this process's CPU time (``time.process_time``) over a run
is the server's CPU alone: the accept loop, the session thread, the codec and the engine.

Scenarios, each one connection doing N round trips back to back:

* ``select1``      ``SELECT 1`` (the pool's health check: fast path);
* ``reset``        the ``sp_reset_connection`` RPC, as the pool's reset sends it (fast path);
* ``select_row``   ``SELECT id, name FROM t WHERE id = 7`` (a cached plan on SQLite);
* ``rpc_param``    python-tds ``SELECT name FROM t WHERE id = %s`` (sp_executesql RPC with a
                   typed parameter: parsed, planned with the variable inlined, run);
* ``select1_x4``   ``SELECT 1`` from 4 client processes at once (throughput).

Run: ``python bench/tds_server.py`` (about 30 s) or ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from mssql_pool.testing import TdsServer

CLIENT = r"""
import json, sys, time
kind, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if kind == "rpc_param":
    import warnings; warnings.simplefilter("ignore")
    import pytds
    conn = pytds.connect(dsn=host, port=port, user="sa", password="Secret123!",
                         database="master", autocommit=True)
    cur = conn.cursor()
    def one():
        cur.execute("SELECT name FROM t WHERE id = %s", (7,)); cur.fetchall()
else:
    import pymssql
    conn = pymssql.connect(server=host, port=str(port), user="sa", password="Secret123!",
                           database="master", tds_version="7.4", autocommit=True)
    cur = conn.cursor()
    if kind == "reset":
        proc = conn._conn
        def one():
            proc.init_procedure("sp_reset_connection").execute()
    elif kind == "select_row":
        def one():
            cur.execute("SELECT id, name FROM t WHERE id = 7"); cur.fetchall()
    else:
        def one():
            cur.execute("SELECT 1"); cur.fetchall()
for _ in range(min(200, n)):
    one()
print("ready", flush=True)
sys.stdin.readline()
start = time.perf_counter()
for _ in range(n):
    one()
print(json.dumps({"wall": time.perf_counter() - start}), flush=True)
"""


def run(server: TdsServer, kind: str, n: int, clients: int = 1) -> dict[str, float]:
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, kind.split("_x")[0], server.host,
                               str(server.port), str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    walls = []
    for p in procs:
        assert p.stdout is not None
        walls.append(json.loads(p.stdout.readline())["wall"])
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    for p in procs:
        p.wait(30)
    total = n * clients
    return {"round_trips_per_s": total / wall, "server_cpu_us": cpu / total * 1e6,
            "client_wall_us": max(walls) / n * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer round trips")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    n = 2000 if args.quick else 10000
    with TdsServer() as server:
        import pymssql

        conn = pymssql.connect(**server.connect_kwargs(autocommit=True))
        conn.cursor().execute("CREATE TABLE t (id INT PRIMARY KEY, name NVARCHAR(20)); "
                              + "".join(f"INSERT INTO t VALUES ({i}, N'name {i}'); "
                                        for i in range(100)))
        conn.close()
        results = {}
        for kind, clients in (("select1", 1), ("reset", 1), ("select_row", 1),
                              ("rpc_param", 1), ("select1_x4", 4)):
            results[kind] = run(server, kind, n if clients == 1 else n // 2, clients)
    print(f"TDS test server, {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {n} round trips per client")
    print(f"{'scenario':<12} {'round trips/s':>14} {'server CPU us/req':>18} "
          f"{'client wall us':>15}")
    for kind, r in results.items():
        print(f"{kind:<12} {r['round_trips_per_s']:>14.0f} {r['server_cpu_us']:>18.1f} "
              f"{r['client_wall_us']:>15.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
