"""Where the demo runs, and which faults it can inject there: the embedded test
servers (every fault) or a real server (only what T-SQL can do)."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

from .._dsn import parse_conninfo, redact
from .schedule import FaultPlan
from .workload import DEMO_APPNAME, DEMO_PASSWORD, QUERY_TIMEOUT

log = logging.getLogger("mssql_pool.demo")  # one logger for the whole demo


class Backend:
    """Where the demo runs, and which faults it can inject there."""

    description = ""

    def conninfo(self) -> dict[str, Any]:
        raise NotImplementedError

    def supports(self, key: str) -> str:
        """Empty string when the fault can be injected, else why not."""
        return "not supported here"

    def inject(self, plan: FaultPlan, rng: random.Random, stop: threading.Event) -> None:
        raise NotImplementedError

    def heal_all(self) -> None:
        """Undo anything still in effect (end of run, or after an error)."""

    def close(self) -> None:
        pass


class EmbeddedBackend(Backend):
    """Two in-process TDS test servers in front of one storage.

    ``node1`` is what the pool dials. ``node2`` shares node1's storage (a replica
    that sees the same data, as after an Azure failover). The redirect step turns
    node1 into a gateway: its logins are answered with a routing token to node2, and
    its sessions are dropped, so the pool reconnects through node1 and ends up on
    node2. From then on the faults that hit sessions, logins and the process hit the
    active node, node2.
    """

    def __init__(self) -> None:
        from ..testing import TdsServer  # the testing extra: only when the demo runs embedded

        self.node1 = TdsServer(users={"sa": DEMO_PASSWORD}, database="master", server_name="NODE1")
        self.node1.start()
        self.node2: Any = None
        self.share_problem = ""
        try:
            # a replica: node1's databases on disk, its own sessions and name
            self.node2 = TdsServer(
                users={"sa": DEMO_PASSWORD}, database="master", server_name="NODE2",
                share_data_with=self.node1,
            )
            self.node2.start()
        except Exception as exc:  # noqa: BLE001 - the step is skipped, with the reason
            self.share_problem = f"second node could not start: {exc}"
        self.active = self.node1
        self.description = f"embedded TDS test server at {self.node1.host}:{self.node1.port}" + (
            f", node 2 at {self.node2.host}:{self.node2.port}" if not self.share_problem else ""
        )

    def conninfo(self) -> dict[str, Any]:
        kwargs = dict(self.node1.connect_kwargs())
        kwargs.update(
            port=int(kwargs["port"]),
            tds_version="7.4",
            login_timeout=QUERY_TIMEOUT,
            timeout=QUERY_TIMEOUT,
            appname=DEMO_APPNAME,
        )
        return kwargs

    def supports(self, key: str) -> str:
        if key == "redirect" and self.share_problem:
            return self.share_problem
        return ""

    def inject(self, plan: FaultPlan, rng: random.Random, stop: threading.Event) -> None:
        server = self.active
        where = "node 2" if server is self.node2 else "node 1"
        if plan.key == "kill":
            # The pool may still be reconnecting after the previous fault: give it a
            # moment (bounded) so the kill meets real sessions rather than none.
            wait_until = time.monotonic() + 3.0
            while not server.sessions() and time.monotonic() < wait_until and not stop.is_set():
                stop.wait(0.05)
            spids = sorted(int(info["spid"]) for info in server.sessions())
            victims = (
                rng.sample(spids, max(1, round(len(spids) * plan.params["fraction"])))
                if spids
                else []
            )
            for spid in victims:
                server.kill(spid)
            plan.detail = f"killed {len(victims)} of {len(spids)} sessions on {where}"
        elif plan.key == "deadlock":
            server.fail_next(1205, match=r"(?i)^\s*UPDATE", times=plan.params["times"])
            plan.detail = f"the next {plan.params['times']} UPDATEs on {where} are deadlock victims"
        elif plan.key == "login_burst":
            server.fail_logins(40613, times=plan.params["times"])
            killed = server.kill_all()
            plan.detail = (
                f"{killed} sessions on {where} killed; the next "
                f"{plan.params['times']} logins fail with 40613"
            )
        elif plan.key == "restart":
            server.stop()
            stop.wait(plan.window)
            server.start()
            plan.detail = f"{where} stopped (sessions gone, port closed), started on the same port"
        elif plan.key == "partition":
            server.blackhole()
            stop.wait(plan.window)
            server.heal()
            plan.detail = f"{where} stopped answering without closing sockets, then healed"
        elif plan.key == "commit_lost":
            server.drop_next(match=r"(?i)^\s*COMMIT", after_execute=True)
            plan.detail = (
                f"next COMMIT on {where} executed, then its socket closed before the reply"
            )
        elif plan.key == "redirect":
            self.node1.redirect_to(self.node2)
            self.active = self.node2
            killed = self.node1.kill_all()
            plan.detail = (
                f"node 1 now routes logins to node 2 ({self.node2.host}:"
                f"{self.node2.port}); its {killed} sessions dropped"
            )

    def heal_all(self) -> None:
        for server in (self.node1, self.node2):
            if server is None:
                continue
            try:
                server.heal()
                server.clear_faults()
                if not server.running:
                    server.start()
            except Exception:  # noqa: BLE001 - best effort at the end of the run
                log.debug("healing a demo server failed", exc_info=True)

    def close(self) -> None:
        for server in (self.node2, self.node1):
            if server is not None:
                try:
                    server.close()  # node2's own (unused) data dir goes; node1's last
                except Exception:  # noqa: BLE001
                    log.debug("closing a demo server failed", exc_info=True)


class RealServerBackend(Backend):
    """A real server (``--url``): only what T-SQL can do, i.e. KILL our own sessions."""

    def __init__(self, url: str) -> None:
        self.kwargs = parse_conninfo(url)
        self.description = f"real server {redact(url)}"

    def conninfo(self) -> dict[str, Any]:
        kwargs = dict(self.kwargs)
        kwargs.setdefault("tds_version", "7.4")
        kwargs.setdefault("login_timeout", 10)
        kwargs.setdefault("timeout", 30)
        kwargs["appname"] = DEMO_APPNAME
        return kwargs

    def supports(self, key: str) -> str:
        if key == "kill":
            return ""
        if key == "deadlock":
            return (
                "not injected on a real server: real deadlocks happen by themselves when "
                "transfers lock accounts in opposite orders, and show up as retries"
            )
        return "needs the TDS test server's fault API (run without --url)"

    def inject(self, plan: FaultPlan, rng: random.Random, stop: threading.Event) -> None:
        import pymssql  # a real-server run only

        kwargs = dict(self.conninfo(), appname="mssql-pool-demo-admin", autocommit=True)
        admin = pymssql.connect(**kwargs)
        try:
            cur = admin.cursor()
            cur.execute(
                "SELECT session_id FROM sys.dm_exec_sessions WHERE program_name = %s "
                "AND session_id <> @@SPID ORDER BY session_id",
                (DEMO_APPNAME,),
            )
            spids = [int(r[0]) for r in cur.fetchall()]
            victims = (
                rng.sample(spids, max(1, round(len(spids) * plan.params["fraction"])))
                if spids
                else []
            )
            for spid in victims:
                try:
                    cur.execute(f"KILL {spid}")
                except pymssql.Error:
                    pass  # the session ended meanwhile
            plan.detail = f"KILLed {len(victims)} of {len(spids)} sessions from an admin session"
        finally:
            admin.close()
