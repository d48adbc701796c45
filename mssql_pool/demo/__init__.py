"""``mssql-pool demo``: money transfers under chaos, and an honest account of recovery.

What it does, in order:

1. Starts the TDS test server in-process (two of them: the data node, and a second
   node that the redirect step routes logins to), or uses ``--url`` for a real
   server. Creates ``mssql_pool_demo_accounts`` (every account starts with the same
   balance) and ``mssql_pool_demo_transfers`` (the ledger: one row per applied
   transfer, written in the same transaction as the two balance updates).
2. Opens a :class:`~mssql_pool.ConnectionPool` and runs ``--threads`` workers. Each
   worker moves money between random accounts through ``pool.run_transaction``,
   which re-runs a unit that failed with a transient error on a fresh connection.
3. Meanwhile a chaos thread follows a schedule derived from ``--seed`` (same seed,
   same schedule): sessions killed, deadlock victims, a 40613 login burst, a server
   restart, a gateway redirect, a network partition, a lost COMMIT acknowledgement.
4. Reports per fault: errors the application saw, retries, time until every worker
   committed again; then checks the invariant (total balance unchanged, no transfer
   applied twice, every acknowledged transfer in the ledger and no failed one,
   commit-unknown outcomes reconciled with the ledger), and shows the pool's stats.

Exit status: 0 when the invariant holds and no error other than
``CommitUnknownError`` reached the workers; 1 otherwise.
"""


from __future__ import annotations

from .report import DemoReport, print_report
from .run import demo_main, run_demo
from .schedule import FAULT_KEYS, FaultPlan, make_schedule
from .workload import Recorder, check_invariant

__all__ = [
    "FAULT_KEYS",
    "DemoReport",
    "FaultPlan",
    "Recorder",
    "check_invariant",
    "demo_main",
    "make_schedule",
    "print_report",
    "run_demo",
]
