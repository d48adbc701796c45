"""``mssql-pool check``: connectivity diagnosis, one step at a time.

The steps, in order, each a function returning a :class:`Step` (the first failing one
ends the run and sets the exit code): ``dns`` (name resolution), ``tcp`` (connect, then
a TDS PRELOGIN probe that tells a SQL Server from another service before any
credentials are sent), ``login`` (and whether the session was redirected, seen in
``/proc``), ``version``, ``latency``, ``health`` (the health-check query), ``pool`` (a
checkout through :class:`~mssql_pool.ConnectionPool`). What a failure means comes from
:mod:`mssql_pool._advice`; the command line around it is :mod:`mssql_pool.cli`.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO
from urllib.parse import quote

import pymssql

from ._advice import explain
from ._dsn import redact
from ._proc_net import established_peers
from .pool import ConnectionPool
from .testing import _protocol as tds

__all__ = ["EXIT_CODES", "CheckResult", "Step", "Target", "diagnose", "prelogin_probe"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DNS = 3
EXIT_TCP = 4
EXIT_LOGIN = 5
EXIT_QUERY = 6
EXIT_POOL = 7

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "ok",
    EXIT_FAILED: "failed (demo invariant or unexpected error; internal error in check)",
    EXIT_USAGE: "bad usage",
    EXIT_DNS: "name resolution failed",
    EXIT_TCP: "TCP connect failed",
    EXIT_LOGIN: "login failed",
    EXIT_QUERY: "query failed",
    EXIT_POOL: "pool checkout failed",
}


@dataclass
class Target:
    """A parsed connection URL. ``password`` never reaches a repr or an output line."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    kwargs: dict[str, Any] = field(default_factory=dict, repr=False)

    def redacted(self) -> str:
        auth = quote(self.user, safe="") + (":***" if self.password else "")
        extra = {
            k: v
            for k, v in self.kwargs.items()
            if k not in ("server", "port", "user", "password", "database")
        }
        query = "&".join(f"{k}={v}" for k, v in extra.items())
        return f"mssql://{auth}@{self.host}:{self.port}/{quote(self.database, safe='')}" + (
            f"?{query}" if query else ""
        )

    def connect_kwargs(self, timeout: float) -> dict[str, Any]:
        kwargs = dict(self.kwargs)
        kwargs.setdefault("login_timeout", max(1, round(timeout)))
        kwargs.setdefault("timeout", max(1, round(timeout)))
        kwargs.setdefault("appname", "mssql-pool check")
        kwargs["password"] = self.password
        return kwargs


@dataclass
class Step:
    name: str
    ok: bool
    ms: float | None = None
    detail: str = ""
    error: dict[str, Any] | None = None
    skipped: bool = False


@dataclass
class CheckResult:
    target: str
    steps: list[Step] = field(default_factory=list)
    exit_code: int = EXIT_OK

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "exit_meaning": EXIT_CODES[self.exit_code],
            "steps": [asdict(step) for step in self.steps],
        }


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


_ENCRYPTION = {
    tds.ENCRYPT_OFF: "encryption off (login packet encrypted only)",
    tds.ENCRYPT_ON: "encryption on",
    tds.ENCRYPT_NOT_SUP: "encryption not supported",
    tds.ENCRYPT_REQ: "encryption required",
}
_NOT_TDS = "the service did not answer a TDS PRELOGIN: is this a SQL Server port?"


def prelogin_probe(sock: socket.socket) -> str:
    """Send a TDS PRELOGIN on a connected socket and describe the answer.

    Tells a SQL Server (its version and encryption setting) from any other service
    on the port, before any credentials are sent. Never raises.
    """
    request = tds.frame(tds.PKT_PRELOGIN, tds.build_prelogin_request(tds.ENCRYPT_OFF), 4096, 0)
    try:
        sock.sendall(request)
        ptype, _status, body = tds.read_message(sock, limit=tds.MAX_LOGIN_MESSAGE)
    except (tds.ProtocolError, tds.PeerClosed):
        return _NOT_TDS
    except OSError as exc:
        return f"no answer to a TDS PRELOGIN ({exc.strerror or exc}): is this a SQL Server port?"
    if ptype != tds.PKT_REPLY:
        return _NOT_TDS
    try:
        found = tds.parse_prelogin(body)
    except tds.ProtocolError:
        return _NOT_TDS
    parts = []
    version = found.get(tds.PRELOGIN_VERSION, b"")
    if len(version) >= 4:
        build = int.from_bytes(version[2:4], "big")
        parts.append(f"server version {version[0]}.{version[1]}.{build}")
    encryption = found.get(tds.PRELOGIN_ENCRYPTION, b"")
    if encryption:
        parts.append(_ENCRYPTION.get(encryption[0], f"encryption mode {encryption[0]}"))
    return "PRELOGIN: " + (", ".join(parts) or "answered")


class _Failed(Exception):
    """A step failed: it carries the step and the exit code, and ends the run."""

    def __init__(self, step: Step, code: int) -> None:
        super().__init__(step.name)
        self.step = step
        self.code = code


def diagnose(
    target: Target,
    *,
    timeout: float = 10.0,
    check_sql: str = "SELECT 1",
    samples: int = 5,
    use_pool: bool = True,
) -> CheckResult:
    """Run the diagnostic steps in order, stopping at the first failing one."""
    result = CheckResult(target=target.redacted())
    steps = result.steps
    try:
        infos, addresses = _dns_step(target, steps)
        _tcp_step(target, infos, timeout, steps)
        kwargs = target.connect_kwargs(timeout)
        conn = _login_step(target, kwargs, addresses, steps)
        try:
            _version_step(conn, steps)
            _latency_step(conn, samples, steps)
            _health_step(conn, check_sql, steps)
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail too
                pass
    except _Failed as failed:
        steps.append(failed.step)
        result.exit_code = failed.code
        return result
    if use_pool:
        steps.append(_pool_step(target, kwargs, timeout, check_sql))
        if not steps[-1].ok:
            result.exit_code = EXIT_POOL
    return result


def _dns_step(target: Target, steps: list[Step]) -> tuple[list[Any], list[str]]:
    start = time.perf_counter()
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        error = {
            "type": type(exc).__name__,
            "message": str(exc),
            "meaning": "the host name does not resolve to an address",
            "try": "check the spelling, your DNS/VPN, and for Azure SQL the full name "
            "<server>.database.windows.net",
        }
        step = Step("dns", False, _ms(start), f"cannot resolve {target.host!r}", error)
        raise _Failed(step, EXIT_DNS) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    steps.append(Step("dns", True, _ms(start), f"{target.host} -> {', '.join(addresses)}"))
    return infos, addresses


def _tcp_step(target: Target, infos: list[Any], timeout: float, steps: list[Step]) -> None:
    """Connect to the first address that answers, and probe it with a PRELOGIN."""
    tcp_error: OSError | None = None
    start = time.perf_counter()
    for family, kind, proto, _name, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            tcp_ms = _ms(start)
            sock.settimeout(min(timeout, 3.0))
            prelogin = prelogin_probe(sock)
            connected = f"{sockaddr[0]!s}:{sockaddr[1]!s}"
            steps.append(Step("tcp", True, tcp_ms, f"connected to {connected}; {prelogin}"))
            return
        except OSError as exc:
            tcp_error = exc
        finally:
            sock.close()
    if isinstance(tcp_error, ConnectionRefusedError):
        meaning = "nothing is listening on that port (or a firewall actively rejects it)"
    elif isinstance(tcp_error, (TimeoutError, socket.timeout)):
        meaning = (
            "no answer within the timeout: a firewall silently drops the packets, or "
            "the host is down"
        )
    else:
        meaning = "the network path to the server failed"
    error = {
        "type": type(tcp_error).__name__,
        "message": str(tcp_error),
        "meaning": meaning,
        "try": "check the port (named instances use a dynamic port unless fixed; "
        "SQL Browser on UDP 1434 tells it), that TCP/IP is enabled on the server, "
        "and firewalls (Azure SQL: add your client IP to the server firewall)",
    }
    step = Step("tcp", False, _ms(start), f"cannot connect to {target.host}:{target.port}", error)
    raise _Failed(step, EXIT_TCP)


def _login_step(
    target: Target, kwargs: dict[str, Any], addresses: list[str], steps: list[Step]
) -> Any:
    """Log in with pymssql; returns the connection. Where the socket really went (from
    ``/proc``) tells whether the login followed a routing token."""
    before = established_peers()
    start = time.perf_counter()
    try:
        conn = pymssql.connect(**kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, classified
        info = explain(exc)
        if 20003 in info.get("numbers", ()):
            info["meaning"] = (
                "the TCP connect worked but the login got no answer in time: the server is "
                "hung or overloaded, or something in between (proxy, TLS-inspecting firewall) "
                "swallows the TDS traffic"
            )
        step = Step("login", False, _ms(start), f"as {target.user!r}", info)
        raise _Failed(step, EXIT_LOGIN) from None
    login_ms = _ms(start)
    new_peers = [
        peer
        for inode, peer in established_peers().items()
        if inode not in before and peer[2] != target.port
    ]
    dialled = {(addr, target.port) for addr in addresses}
    routed = [f"{ip}:{port}" for ip, port, _local in new_peers if (ip, port) not in dialled]
    if routed:
        redirect = f"redirected: the session runs on {routed[0]} (followed a routing token)"
    elif new_peers:
        redirect = "not redirected"
    else:
        redirect = "redirect: not detectable on this platform"
    steps.append(
        Step(
            "login",
            True,
            login_ms,
            f"as {target.user!r} to database {target.database or '(default)'!r}, "
            f"TDS {kwargs['tds_version']}; {redirect}{_encryption_text(conn)}",
        )
    )
    return conn


def _encryption_text(conn: Any) -> str:
    """"; session encrypted (TLS)" or "; session not encrypted", as the server sees this
    session (``sys.dm_exec_connections.encrypt_option``); empty when it cannot say."""
    try:
        cur = conn.cursor()
        cur.execute("SELECT encrypt_option FROM sys.dm_exec_connections "
                    "WHERE session_id = @@SPID")
        row = cur.fetchone()
    except Exception:  # noqa: BLE001 - a test server may not have the view
        return ""
    value = str(row[0]).strip().upper() if row and row[0] is not None else ""
    if value == "TRUE":
        return "; session encrypted (TLS)"
    if value == "FALSE":
        return "; session not encrypted"
    return ""


def _version_step(conn: Any, steps: list[Step]) -> None:
    start = time.perf_counter()
    try:
        cur = conn.cursor()
        cur.execute("SELECT @@VERSION")
        row = cur.fetchone()
        version = str(row[0]).splitlines()[0].strip() if row else "?"
    except Exception as exc:  # noqa: BLE001
        raise _Failed(
            Step("version", False, _ms(start), "SELECT @@VERSION", explain(exc)), EXIT_QUERY
        ) from None
    extras = _server_facts(conn)
    steps.append(Step("version", True, _ms(start), version + (f" ({extras})" if extras else "")))


def _latency_step(conn: Any, samples: int, steps: list[Step]) -> None:
    timings: list[float] = []
    try:
        for _ in range(max(1, samples)):
            start = time.perf_counter()
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.fetchall()
            timings.append(_ms(start))
    except Exception as exc:  # noqa: BLE001
        raise _Failed(Step("latency", False, None, "SELECT 1", explain(exc)), EXIT_QUERY) from None
    median = statistics.median(timings)
    steps.append(
        Step(
            "latency",
            True,
            median,
            f"SELECT 1 x{len(timings)}: median {median:.2f} ms "
            f"(min {min(timings):.2f}, max {max(timings):.2f})",
        )
    )


def _health_step(conn: Any, check_sql: str, steps: list[Step]) -> None:
    start = time.perf_counter()
    try:
        cur = conn.cursor()
        cur.execute(check_sql)
        rows = cur.fetchall() if cur.description else []
    except Exception as exc:  # noqa: BLE001
        raise _Failed(
            Step("health", False, _ms(start), repr(check_sql), explain(exc)), EXIT_QUERY
        ) from None
    steps.append(Step("health", True, _ms(start), f"{check_sql!r} returned {len(rows)} row(s)"))


def _server_facts(conn: Any) -> str:
    """Optional facts (edition, server name, database); empty when not supported."""
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT CAST(SERVERPROPERTY('Edition') AS NVARCHAR(128)), @@SERVERNAME, DB_NAME()"
        )
        row = cur.fetchone()
    except Exception:  # noqa: BLE001 - a test server may not know SERVERPROPERTY
        return ""
    if not row:
        return ""
    labels = ("edition", "server", "database")
    return ", ".join(f"{k} {v}" for k, v in zip(labels, row, strict=False) if v not in (None, ""))


def _pool_step(target: Target, kwargs: dict[str, Any], timeout: float, check_sql: str) -> Step:
    start = time.perf_counter()
    try:
        conninfo = {k: v for k, v in kwargs.items() if k != "appname"}
        conninfo["appname"] = "mssql-pool check (pool)"
        with ConnectionPool(
            conninfo,
            min_size=1,
            max_size=1,
            timeout=timeout,
            check=check_sql,
            validate_after=0.0,
            name="check",
            identify=True,
        ) as pool:
            with pool.connection(timeout=timeout) as conn:
                cur = conn.cursor()
                cur.execute("SELECT 1")
                cur.fetchall()
                landing = getattr(conn, "landing", None)
            stats = pool.get_stats()
    except Exception as exc:  # noqa: BLE001
        return Step("pool", False, _ms(start), "checkout through ConnectionPool", explain(exc))
    return Step(
        "pool",
        True,
        _ms(start),
        f"checkout, check and return through ConnectionPool: {stats.get('checks_run', '?')} "
        f"check(s), {stats.get('connections_num', '?')} connection(s) opened"
        + _landing_text(landing),
    )


def _landing_text(landing: Any) -> str:
    """The pool's own view of where its connection landed (endpoints.Landing)."""
    node = getattr(landing, "node", None)
    if not node:
        return ""  # the pool did not identify the node (identification off or unsupported)
    text = f"; the pool identified the node as {node}"
    if getattr(landing, "redirected", None) is True:
        text += " (redirected)"
    return text


def scrubber(secret: str) -> Callable[[str], str]:
    """Redact URLs and key=value secrets; the known password (raw, URL-quoted or as in a
    repr) is masked where it stands in a secret's position, whatever its length, and
    ordinary words that happen to spell it are left alone."""
    secrets = [secret] if secret else []

    def scrub(text: str) -> str:
        return redact(text, secrets)

    return scrub


def scrub_tree(value: Any, scrub: Callable[[str], str]) -> Any:
    """Every string in a JSON-able tree scrubbed (before json.dumps escapes anything)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_tree(v, scrub) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_tree(v, scrub) for v in value]
    return value


def print_check(result: CheckResult, out: TextIO, scrub: Callable[[str], str]) -> None:
    out.write(scrub(f"mssql-pool check {result.target}\n"))
    for step in result.steps:
        status = "skip" if step.skipped else "ok" if step.ok else "FAIL"
        ms = f" ({step.ms:.1f} ms)" if step.ms is not None and step.name != "latency" else ""
        out.write(scrub(f"  {status:<5} {step.name:<8} {step.detail}{ms}\n"))
        if step.error:
            err = step.error
            number = err.get("number")
            head = f"{err.get('type', 'error')}"
            if number:
                head += f" {number}"
            if err.get("kind"):
                head += f" [{err['kind']}]"
            out.write(scrub(f"        error:   {head}: {err.get('message', '')}\n"))
            out.write(scrub(f"        meaning: {err.get('meaning', '')}\n"))
            out.write(scrub(f"        try:     {err.get('try', '')}\n"))
    verdict = "OK" if result.ok else f"FAILED ({EXIT_CODES[result.exit_code]})"
    out.write(f"result: {verdict}, exit {result.exit_code}\n")
