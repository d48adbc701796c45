"""The recovery matrix: ten faults, one workload, two pools (shared by tests and bench).

Each :class:`Fault` builds its servers (TdsServers, replicas sharing data, gateways, a
:class:`~tcp_proxy.TcpProxy` where the network is the fault), runs a workload of threads
doing short units through a pool *adapter* while the fault happens, and returns an
:class:`Outcome`: units done, errors the application saw (by type), the ledger check (no
unit lost, none applied twice), the time to the first success after the fault cleared,
and every login attempt (``pymssql.connect`` is counted for the whole run).

A unit inserts its id into ``ledger`` and adds 1 to its worker's row of ``total`` in one
transaction, so afterwards ``sum(total.n) == count(ledger)`` and each acknowledged id
appears exactly once.

:data:`REAL_FAULTS` are the rows that need no fault switch of the test server, for a server
we did not write (:class:`RealTarget`: a URL, KILL, a restart command, the TCP proxy):
sessions killed idle or mid-transaction, a restart, COMMIT replies lost in the network,
deadlock victims (units then lock their pair's row first), a partition.

Adapters: :class:`MssqlPoolAdapter` runs units with ``pool.run_transaction(..., verify=)``;
:class:`SqlaAdapter` is what an application does with SQLAlchemy's QueuePool and
``pool_pre_ping=True``: ``with engine.begin()`` and no retry of its own.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pymssql
from tcp_proxy import TcpProxy

from mssql_pool import ConnectionPool
from mssql_pool.classify import ErrorKind, retry_if_kind, retry_if_retryable
from mssql_pool.errors import CommitUnknownError
from mssql_pool.retry import AttemptRecord, ExponentialBackoff, RetryPolicy
from mssql_pool.testing import TdsServer

SCHEMA = ("CREATE TABLE ledger (tid VARCHAR(40) NOT NULL, worker INT NOT NULL)",
          "CREATE TABLE total (id INT PRIMARY KEY, n INT NOT NULL)")


# ----------------------------------------------------------------------------- outcome


@dataclass
class Event:
    at: float          # seconds since the run started
    ok: bool
    error: str = ""


@dataclass
class Outcome:
    fault: str
    pool: str
    units_ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[BaseException] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)          # acknowledged, not in the ledger
    doubled: list[str] = field(default_factory=list)       # in the ledger more than once
    failed_but_landed: list[str] = field(default_factory=list)  # app saw an error, it landed
    unknown_landed: int = 0                                # CommitUnknownError that landed
    totals_consistent: bool = True
    fault_start: float = 0.0
    fault_end: float = 0.0
    run_end: float = 0.0
    first_ok_after_clear: float | None = None
    first_ok_after_start: float | None = None
    max_gap: float = 0.0          # longest time without a success from the fault's start
    logins: list[float] = field(default_factory=list)      # dial times (s since start)
    events: list[Event] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def logins_during(self) -> int:
        return sum(1 for t in self.logins if self.fault_start <= t <= self.fault_end)

    @property
    def recovery(self) -> float | None:
        return self.first_ok_after_clear

    def summary(self) -> str:
        rec = "-" if self.recovery is None else f"{self.recovery:.2f}s"
        return (f"{self.fault}/{self.pool}: ok={self.units_ok} errors={dict(self.errors)} "
                f"lost={len(self.lost)} doubled={len(self.doubled)} recovery={rec} "
                f"logins_during={self.logins_during}")


# ----------------------------------------------------------------------------- login count


class DialCounter:
    """Counts every ``pymssql.connect`` call (both pools dial through it): ``times`` when
    each started, ``calls`` as ``(start, end, ok)``."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.calls: list[tuple[float, float, bool]] = []
        self._lock = threading.Lock()
        self._orig: Callable[..., Any] | None = None
        self.t0 = time.monotonic()

    @contextlib.contextmanager
    def installed(self) -> Iterator[DialCounter]:
        orig = pymssql.connect

        def counting(*args: Any, **kwargs: Any) -> Any:
            start = time.monotonic() - self.t0
            with self._lock:
                self.times.append(start)
            ok = False
            try:
                conn = orig(*args, **kwargs)
                ok = True
                return conn
            finally:
                with self._lock:
                    self.calls.append((start, time.monotonic() - self.t0, ok))

        pymssql.connect = counting  # type: ignore[assignment]
        try:
            yield self
        finally:
            pymssql.connect = orig  # type: ignore[assignment]


# ----------------------------------------------------------------------------- adapters


#: While set, every unit first locks its pair's row of ``total`` (worker ^ 1): workers 0
#: and 1, 2 and 3... take the same two rows in opposite orders, so real deadlocks happen.
PAIRED_LOCKS = threading.Event()


def _unit_sql(cur: Any, tid: str, worker: int) -> None:
    if PAIRED_LOCKS.is_set():
        cur.execute("UPDATE total SET n = n WHERE id = %s", (worker ^ 1,))
    cur.execute("INSERT INTO ledger (tid, worker) VALUES (%s, %s)", (tid, worker))
    cur.execute("UPDATE total SET n = n + 1 WHERE id = %s", (worker,))


def landed(tid: str) -> Callable[[Any], bool]:
    def verify(conn: Any) -> bool:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM ledger WHERE tid = %s", (tid,))
        return int(cur.fetchone()[0]) >= 1

    return verify


class MssqlPoolAdapter:
    """Units through ``ConnectionPool.run_transaction`` with ``verify=``."""

    name = "mssql_pool"

    def __init__(self, conninfo: Any, *, threads: int, max_size: int = 8,
                 sleep: Callable[[float], object] = time.sleep, **pool_options: Any) -> None:
        self.retries: list[AttemptRecord] = []
        opts: dict[str, Any] = {"min_size": min(4, max_size), "max_size": max_size,
                                "timeout": 20.0, "name": "matrix"}
        opts.update(pool_options)
        self.pool = ConnectionPool(conninfo, **opts)
        # Inside a transaction a query timeout kills the connection, so the server rolls
        # the unit back: re-running it is safe (an ambiguous COMMIT goes to verify=).
        self.policy = RetryPolicy(
            max_attempts=None, deadline=30.0,
            backoff=ExponentialBackoff(0.02, 2.0, 0.5, "full"),
            retry_on=retry_if_retryable | retry_if_kind(ErrorKind.QUERY_TIMEOUT),
            on_retry=self.retries.append, sleep=sleep, name="matrix")

    def warm(self) -> None:
        self.pool.wait(10.0)

    def unit(self, tid: str, worker: int) -> None:
        def work(conn: Any) -> None:
            _unit_sql(conn.cursor(), tid, worker)

        self.pool.run_transaction(work, policy=self.policy, verify=landed(tid))

    def close(self) -> None:
        self.pool.close()


class SqlaAdapter:
    """SQLAlchemy 2 QueuePool with ``pool_pre_ping=True``; the app does not retry."""

    name = "sqlalchemy"

    def __init__(self, conninfo: Any, *, threads: int, max_size: int = 8,
                 **_ignored: Any) -> None:
        import sqlalchemy

        kwargs = dict(conninfo)

        def creator() -> Any:
            return pymssql.connect(**kwargs)

        self.engine = sqlalchemy.create_engine(
            "mssql+pymssql://", creator=creator, pool_pre_ping=True, pool_size=max_size,
            max_overflow=0, pool_timeout=20.0)
        # On Babelfish plain SQLAlchemy cannot connect at all: it cannot read @@VERSION,
        # and pymssql's rollback() raises 3903 in Babelfish's wording after the dialect's
        # failed first-connect probes. Both are patched here so that the baseline runs;
        # nothing else of mssql_pool is lent to it.
        from mssql_pool._driver import rollback
        from mssql_pool.sqlalchemy import _read_any_version

        _read_any_version(self.engine.dialect)
        self.engine.dialect.do_rollback = rollback  # type: ignore[method-assign]

    def warm(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def unit(self, tid: str, worker: int) -> None:
        with self.engine.begin() as conn:
            if PAIRED_LOCKS.is_set():
                conn.exec_driver_sql("UPDATE total SET n = n WHERE id = %(p)s",
                                     {"p": worker ^ 1})
            conn.exec_driver_sql("INSERT INTO ledger (tid, worker) VALUES (%(t)s, %(w)s)",
                                 {"t": tid, "w": worker})
            conn.exec_driver_sql("UPDATE total SET n = n + 1 WHERE id = %(w)s", {"w": worker})

    def close(self) -> None:
        self.engine.dispose()


Adapter = MssqlPoolAdapter | SqlaAdapter
ADAPTERS: dict[str, type[MssqlPoolAdapter] | type[SqlaAdapter]] = {
    "mssql_pool": MssqlPoolAdapter, "sqlalchemy": SqlaAdapter}


# ----------------------------------------------------------------------------- environment


class RealTarget:
    """A server we did not write (SQL Server, Babelfish...): faults come only from KILL,
    a restart command and the TCP proxy. The pools' sessions carry ``appname`` so that
    :meth:`kill_all` KILLs those and nobody else's. Duck-types the parts of TdsServer the
    run uses (``connect_kwargs``, ``host``, ``port``)."""

    running = True

    def __init__(self, conninfo: dict[str, Any], *, restart: str | None = None,
                 appname: str = "mssql-pool-recovery") -> None:
        self.conninfo = dict(conninfo)
        self.host = str(self.conninfo["server"])
        self.port = int(self.conninfo.get("port", 1433))
        self.restart_cmd = restart
        self.appname = appname

    def connect_kwargs(self, **kw: Any) -> dict[str, Any]:
        out = {"tds_version": "7.4", **self.conninfo, "appname": self.appname}
        out.update(kw)
        return out

    def _admin(self) -> Any:
        kw = self.connect_kwargs(login_timeout=10, timeout=30, autocommit=True)
        kw["appname"] = "mssql-pool-recovery-admin"
        return pymssql.connect(**kw)

    def kill_all(self) -> int:
        admin = self._admin()
        try:
            cur = admin.cursor()
            cur.execute("SELECT session_id FROM sys.dm_exec_sessions WHERE program_name = %s "
                        "AND session_id <> @@SPID", (self.appname,))
            spids = [int(r[0]) for r in cur.fetchall()]
            killed = 0
            for spid in spids:
                try:
                    cur.execute(f"KILL {spid}")
                    killed += 1
                except pymssql.Error:
                    pass            # gone already
            return killed
        finally:
            admin.close()

    def restart(self) -> None:
        if not self.restart_cmd:
            raise RuntimeError("no restart command given (--restart-cmd)")
        subprocess.run(shlex.split(self.restart_cmd), check=True, capture_output=True,
                       timeout=120)

    def drop_tables(self) -> None:
        admin = self._admin()
        try:
            cur = admin.cursor()
            for table in ("ledger", "total"):
                cur.execute(f"IF OBJECT_ID('dbo.{table}') IS NOT NULL DROP TABLE dbo.{table}")
        finally:
            admin.close()


class Env:
    """Servers, proxies and the clock marks of one fault run."""

    def __init__(self, t0: float, real: RealTarget | None = None) -> None:
        self.t0 = t0
        self.real = real
        self.servers: list[TdsServer] = []
        self.proxies: list[TcpProxy] = []
        self.data: TdsServer | None = None       # a server holding the ledger (for checks)
        self.fault_start = 0.0
        self.fault_end = 0.0
        self.extra: dict[str, Any] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    def server(self, **kw: Any) -> TdsServer:
        s = TdsServer(**kw).start()
        self.servers.append(s)
        return s

    def proxy(self, target: TdsServer | RealTarget) -> TcpProxy:
        p = TcpProxy((target.host, target.port)).start()
        self.proxies.append(p)
        return p

    def start(self) -> None:
        self.fault_start = self.now()

    def end(self) -> None:
        self.fault_end = self.now()

    def close(self) -> None:
        for p in self.proxies:
            p.close()
        for s in reversed(self.servers):
            s.close()


def conn_kwargs(server: TdsServer, port: int | None = None, *, timeout: int = 5,
                login_timeout: int = 3) -> dict[str, Any]:
    kw = server.connect_kwargs(timeout=timeout, login_timeout=login_timeout)
    if port is not None:
        kw["port"] = str(port)
    return kw


# ----------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One row of the matrix.

    ``setup(env)`` starts servers and returns ``(conninfo, pool_options)`` for the
    adapters (options apply to mssql_pool only); ``inject(env, pause)`` performs the fault
    between ``env.start()`` and ``env.end()`` (``pause`` stops the workload, for faults
    that must find the pool idle). ``bound`` is the stated time to the first success after
    the fault clears (``from_start``: after it starts, e.g. a partner takes over at once).
    """

    key: str
    title: str
    setup: Callable[[Env], tuple[Any, dict[str, Any]]]
    inject: Callable[[Env, threading.Event], None]
    bound: float
    threads: int = 8
    max_size: int = 8
    warmup: float = 0.4
    after: float = 0.8
    from_start: bool = False
    check: Callable[[Env, Outcome], None] | None = None


def _plain(env: Env) -> tuple[Any, dict[str, Any]]:
    s = env.server(server_name="NODE")
    env.data = s
    return conn_kwargs(s), {}


def _proxied(timeout: int, login_timeout: int, latency: float = 0.0
             ) -> Callable[[Env], tuple[Any, dict[str, Any]]]:
    def setup(env: Env) -> tuple[Any, dict[str, Any]]:
        s = env.server(server_name="NODE", latency=latency)
        env.data = s
        p = env.proxy(s)
        env.extra["proxy"] = p
        return conn_kwargs(s, p.port, timeout=timeout, login_timeout=login_timeout), {}

    return setup


def _idle_kill(env: Env, pause: threading.Event) -> None:
    pause.set()
    time.sleep(0.3)                      # every unit finished: the pool is idle
    env.start()
    assert env.data is not None
    env.extra["killed"] = env.data.kill_all()
    env.end()
    pause.clear()


def _busy_cut(env: Env, pause: threading.Event) -> None:
    proxy: TcpProxy = env.extra["proxy"]
    env.start()
    env.extra["cut"] = proxy.cut()      # units are mid-query (server latency)
    env.end()


def _down_for(seconds: float) -> Callable[[Env, threading.Event], None]:
    """The server stops, stays down ``seconds``, starts again on the same port."""

    def inject(env: Env, pause: threading.Event) -> None:
        assert env.data is not None
        env.start()
        env.data.stop()
        time.sleep(seconds)
        env.data.start()
        env.end()

    return inject


def _partition(env: Env, pause: threading.Event) -> None:
    proxy: TcpProxy = env.extra["proxy"]
    env.start()
    proxy.blackhole()
    time.sleep(2.0)
    proxy.heal()
    env.end()


def _gateway_setup(env: Env) -> tuple[Any, dict[str, Any]]:
    a = env.server(server_name="NODEA")
    b = env.server(server_name="NODEB", share_data_with=a)
    gw = env.server(server_name="GATEWAY")
    gw.redirect_to(a)
    env.data = a
    env.extra.update(node_a=a, node_b=b, gateway=gw)
    return conn_kwargs(gw), {"identify": True}


def _node_moves(env: Env, pause: threading.Event) -> None:
    env.start()
    env.extra["node_a"].stop()              # node A dies; the gateway still routes there
    time.sleep(0.5)
    env.extra["gateway"].redirect_to(env.extra["node_b"])   # ... then learns about B
    env.end()
    env.data = env.extra["node_b"]


def _partner_setup(env: Env) -> tuple[Any, dict[str, Any]]:
    p = env.server(server_name="PRIMARY")
    q = env.server(server_name="PARTNER", share_data_with=p)
    env.data = q
    env.extra.update(primary=p, partner=q)
    return conn_kwargs(p), {"failover_partners": [f"{q.host}:{q.port}"], "identify": True}


def _primary_fails(env: Env, pause: threading.Event) -> None:
    p: TdsServer = env.extra["primary"]
    env.start()
    p.stop()
    time.sleep(2.0)
    p.start()                          # back: mssql_pool stays on the partner
    env.extra["primary_logins_at_return"] = p.stats()["logins"]
    env.end()


def _partner_check(env: Env, out: Outcome) -> None:
    out.extra["primary_logins_end"] = env.extra["primary"].stats()["logins"]


def _lock_storm(env: Env, pause: threading.Event) -> None:
    assert env.data is not None
    env.start()
    env.data.fail_next(1205, match="UPDATE total", times=12)
    env.data.fail_next(1222, match="INSERT INTO ledger", times=12)
    time.sleep(1.0)
    env.data.clear_faults()
    env.end()


def _throttle_setup(env: Env) -> tuple[Any, dict[str, Any]]:
    return _plain(env)


def _throttle(env: Env, pause: threading.Event) -> None:
    assert env.data is not None
    env.start()
    env.data.fail_logins(10928, times=2)
    env.data.fail_next(40501, match="UPDATE total", times=2, severity=20)
    time.sleep(1.5)
    env.data.clear_faults()
    env.end()


def _slow(env: Env, pause: threading.Event) -> None:
    assert env.data is not None
    env.start()
    env.data.delay_next(2.5, match="UPDATE total", times=4)
    time.sleep(1.5)                     # delayed replies outlast the 1 s query timeout
    env.data.clear_faults()
    env.end()


def _slow_setup(env: Env) -> tuple[Any, dict[str, Any]]:
    s = env.server(server_name="NODE")
    env.data = s
    return conn_kwargs(s, timeout=1), {}


# -- rows for a server we did not write (RealTarget) ------------------------------------


def _real(timeout: int, login_timeout: int, proxied: bool = False
          ) -> Callable[[Env], tuple[Any, dict[str, Any]]]:
    def setup(env: Env) -> tuple[Any, dict[str, Any]]:
        real = env.real
        if real is None:
            raise RuntimeError("this row needs a real server (RealTarget)")
        env.data = real  # type: ignore[assignment]
        kw = real.connect_kwargs(timeout=timeout, login_timeout=login_timeout)
        if proxied:
            p = env.proxy(real)
            env.extra["proxy"] = p
            kw["server"], kw["port"] = "127.0.0.1", str(p.port)
        return kw, {}

    return setup


def _real_idle_kill(env: Env, pause: threading.Event) -> None:
    assert env.real is not None
    pause.set()
    time.sleep(0.5)                      # every unit finished: the pool is idle
    env.start()
    env.extra["killed"] = env.real.kill_all()
    env.end()
    pause.clear()


def _real_busy_kill(env: Env, pause: threading.Event) -> None:
    assert env.real is not None
    env.start()
    killed = 0
    for _ in range(3):                   # units are mid-transaction: KILL them there
        killed += env.real.kill_all()
        time.sleep(0.2)
    env.extra["killed"] = killed
    env.end()


def _real_restart(env: Env, pause: threading.Event) -> None:
    assert env.real is not None
    env.start()
    env.real.restart()
    env.end()


COMMIT_MARKER = "COMMIT TRAN"


def _lost_commits(env: Env, pause: threading.Event) -> None:
    proxy: TcpProxy = env.extra["proxy"]
    env.start()
    proxy.arm("after_send", match=COMMIT_MARKER, times=6)
    time.sleep(1.5)
    deadline = time.monotonic() + 5.0      # a loaded machine: wait for at least one
    while proxy.stats()["exchanges_cut"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    proxy.disarm()
    env.extra["replies_dropped"] = proxy.stats()["exchanges_cut"]
    env.end()


def _paired_locks(env: Env, pause: threading.Event) -> None:
    env.start()
    PAIRED_LOCKS.set()
    try:
        time.sleep(3.0)
    finally:
        PAIRED_LOCKS.clear()
    env.end()


#: New sessions on a real engine are slow at first (Babelfish: a new server process that
#: loads its catalog caches, 0.3-0.4 s): the workload runs this long before the fault.
REAL_WARMUP = 2.0

REAL_FAULTS: list[Fault] = [
    Fault("idle_killed", "1. idle sessions KILLed", _real(5, 3), _real_idle_kill, bound=1.0,
          warmup=REAL_WARMUP),
    Fault("busy_killed", "2. sessions KILLed mid-transaction (3 rounds)", _real(5, 3),
          _real_busy_kill, bound=1.0, warmup=REAL_WARMUP),
    Fault("restart", "3. server restart (restart command)", _real(5, 3), _real_restart,
          bound=2.5, warmup=REAL_WARMUP, after=1.5),
    Fault("lost_commit", "4. COMMIT replies lost (proxy resets after the server ran it)",
          _real(5, 3, proxied=True), _lost_commits, bound=1.0, warmup=REAL_WARMUP),
    Fault("deadlocks", "5. deadlock victims (units lock their pair's row first, 3 s)",
          _real(10, 3), _paired_locks, bound=1.5, warmup=REAL_WARMUP, after=1.5),
    Fault("partition", "6. network partition 2 s (proxy blackhole)", _real(5, 2, proxied=True),
          _partition, bound=2.5, warmup=REAL_WARMUP, after=1.5),
]
REAL_BY_KEY = {f.key: f for f in REAL_FAULTS}


FAULTS: list[Fault] = [
    Fault("idle_killed", "1. idle connections killed", _plain, _idle_kill, bound=1.0),
    Fault("busy_killed", "2. busy connections cut mid-query (proxy)",
          _proxied(5, 3, latency=0.01), _busy_cut, bound=1.0),
    Fault("restart", "3. server restart (1 s down)", _plain, _down_for(1.0), bound=2.5),
    Fault("partition", "4. network partition 2 s (proxy blackhole)", _proxied(1, 1),
          _partition, bound=2.5, after=1.5),
    Fault("login_storm", "5. server down 3 s, 64 threads", _plain, _down_for(3.0),
          bound=2.5, threads=64, after=1.0),
    Fault("azure_redirect", "6. gateway: node A dies, routed to B", _gateway_setup,
          _node_moves, bound=2.0),
    Fault("failover_partner", "7. primary down 2 s, partner takes over", _partner_setup,
          _primary_fails, bound=2.0, from_start=True, after=1.0, check=_partner_check),
    Fault("lock_storm", "8. deadlock (1205) and lock timeout (1222) storm", _plain,
          _lock_storm, bound=1.0),
    Fault("throttling", "9. throttling: 40501 (class 20), 10928 at login", _throttle_setup,
          _throttle, bound=1.5),
    Fault("slow_server", "10. replies delayed past the 1 s query timeout", _slow_setup,
          _slow, bound=1.5, after=1.5),
]
BY_KEY = {f.key: f for f in FAULTS}


# ----------------------------------------------------------------------------- the run


def _prepare(kwargs: dict[str, Any], workers: int) -> None:
    conn = pymssql.connect(**{**kwargs, "login_timeout": 5})
    try:
        cur = conn.cursor()
        for sql in SCHEMA:
            cur.execute(sql)
        for w in range(workers):
            cur.execute("INSERT INTO total (id, n) VALUES (%s, 0)", (w,))
        conn.commit()
    finally:
        conn.close()


def _read_ledger(server: TdsServer | RealTarget) -> tuple[Counter[str], int]:
    conn = pymssql.connect(**server.connect_kwargs(login_timeout=5))
    try:
        cur = conn.cursor()
        cur.execute("SELECT tid FROM ledger")
        tids: Counter[str] = Counter(str(r[0]) for r in cur.fetchall())
        cur.execute("SELECT SUM(n) FROM total")
        total = int(cur.fetchone()[0] or 0)
    finally:
        conn.close()
    return tids, total


class _Workload:
    """The row's worker threads: units until stopped (waiting while paused), with every
    unit's outcome recorded under a lock."""

    def __init__(self, out: Outcome, t0: float) -> None:
        self.out = out
        self.t0 = t0
        self.stop = threading.Event()
        self.pause = threading.Event()
        self.lock = threading.Lock()
        self.acked: set[str] = set()
        self.failed: set[str] = set()
        self.unknown: set[str] = set()

    def work(self, adapter: Any, w: int) -> None:
        out = self.out
        i = 0
        while not self.stop.is_set():
            if self.pause.is_set():
                time.sleep(0.01)
                continue
            i += 1
            tid = f"{w}-{i}"
            try:
                adapter.unit(tid, w)
            except Exception as exc:
                at = time.monotonic() - self.t0
                with self.lock:
                    out.errors[type(exc).__name__] += 1
                    if len(out.error_samples) < 20:
                        out.error_samples.append(exc)
                    out.events.append(Event(at, False, type(exc).__name__))
                    lost = self.unknown if isinstance(exc, CommitUnknownError) else self.failed
                    lost.add(tid)
                time.sleep(0.01)
                continue
            at = time.monotonic() - self.t0
            with self.lock:
                self.acked.add(tid)
                out.events.append(Event(at, True))
            time.sleep(0.002)


def run_fault(fault: Fault, adapter_name: str, *, adapter_options: dict[str, Any] | None = None,
              threads: int | None = None, after: float | None = None,
              real: RealTarget | None = None) -> Outcome:
    """Run one row with one adapter; always cleans up its servers, pool and threads.

    ``after`` (default: the fault's) is how long the workload goes on once the fault has
    cleared. ``real``: the server of a :data:`REAL_FAULTS` row (its ``ledger`` and
    ``total`` tables are dropped before and after)."""
    t0 = time.monotonic()
    env = Env(t0, real)
    nthreads = threads or fault.threads
    out = Outcome(fault.key, adapter_name)
    adapter: Any = None
    counter = DialCounter()
    counter.t0 = t0
    load = _Workload(out, t0)
    stop, pause = load.stop, load.pause
    workers: list[threading.Thread] = []
    stopped_at = 0.0

    try:
        with counter.installed():
            conninfo, pool_options = fault.setup(env)
            assert env.data is not None
            if real is not None:
                real.drop_tables()
            _prepare(env.data.connect_kwargs(), nthreads)
            options = dict(pool_options) if adapter_name == "mssql_pool" else {}
            options.update(adapter_options or {})
            adapter = ADAPTERS[adapter_name](conninfo, threads=nthreads,
                                             max_size=fault.max_size, **options)
            adapter.warm()
            for w in range(nthreads):
                t = threading.Thread(target=load.work, args=(adapter, w), name=f"matrix-{w}",
                                     daemon=True)
                workers.append(t)
                t.start()
            time.sleep(fault.warmup)
            fault.inject(env, pause)
            time.sleep(fault.after if after is None else after)
            if fault.check is not None:
                fault.check(env, out)
            out.extra["stopped_at"] = stopped_at = time.monotonic() - t0
            stop.set()
            for t in workers:
                t.join(30.0)
            out.extra["alive_workers"] = sum(t.is_alive() for t in workers)
            if adapter_name == "mssql_pool":
                out.extra["stats"] = adapter.pool.get_stats()
                out.extra["retries"] = list(adapter.retries)
                out.extra["endpoints"] = (adapter.pool.endpoints.snapshot()
                                          if adapter.pool.endpoints else [])
            out.extra.update({k: v for k, v in env.extra.items()
                              if isinstance(v, (int, float, str))})
        for server in env.servers:
            if not server.running:
                server.start()
        assert env.data is not None
        tids, total = _read_ledger(env.data)
    finally:
        stop.set()
        PAIRED_LOCKS.clear()
        for t in workers:
            t.join(30.0)
        if adapter is not None:
            adapter.close()
        env.close()
        if real is not None:
            with contextlib.suppress(Exception):
                real.drop_tables()
    out.run_end = time.monotonic() - t0
    out.fault_start, out.fault_end = env.fault_start, env.fault_end
    out.logins = list(counter.times)
    out.extra["dials"] = sorted(counter.calls)
    out.units_ok = len(load.acked)
    out.lost = sorted(t for t in load.acked if tids[t] == 0)
    out.doubled = sorted(t for t, n in tids.items() if n > 1)
    out.failed_but_landed = sorted(t for t in load.failed if tids[t] > 0)
    out.unknown_landed = sum(1 for t in load.unknown if tids[t] > 0)
    out.totals_consistent = total == sum(tids.values())
    oks = sorted(e.at for e in out.events if e.ok)
    out.first_ok_after_clear = next((t - env.fault_end for t in oks if t >= env.fault_end),
                                    None)
    out.first_ok_after_start = next((t - env.fault_start for t in oks
                                     if t >= env.fault_start), None)
    out.events.sort(key=lambda e: e.at)
    prev, gap = env.fault_start, 0.0
    for t in oks:
        if env.fault_start <= t <= stopped_at:
            gap, prev = max(gap, t - prev), t
    out.max_gap = max(gap, stopped_at - prev)
    return out
