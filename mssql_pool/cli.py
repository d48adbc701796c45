"""The ``mssql-pool`` command: ``demo``, ``check`` and ``serve``.

``mssql-pool demo``
    Money transfers on several threads through ``pool.run_transaction`` while a
    seeded chaos schedule hits an embedded TDS test server (or a real server with
    ``--url``); a live progress line, then a report with the invariant check.
    Exit 0 when the invariant holds and no unexpected error reached the workload.

``mssql-pool check URL``
    Connectivity diagnostics, one step at a time: name resolution, TCP connect,
    login (and whether the login was redirected), server version, round-trip
    latency, the health-check query, a checkout through a pool. A failure is
    explained: its SQL Server error number, its classification, what it means and
    what to try. The password never appears in the output.

    Exit codes (``check``; ``demo`` uses 0, 1, 2 with the same meanings):

    ==  ===================================================================
    0   every step passed
    1   the demo failed its invariant / an unexpected error; or an internal
        error in ``check`` (a bug: please report it)
    2   bad usage: unknown option, malformed URL
    3   name resolution (DNS) failed
    4   TCP connect failed (refused, unreachable, timed out)
    5   login failed (wrong credentials, database unavailable, throttled...)
    6   a query failed after login (version, latency or health-check query)
    7   a checkout through ConnectionPool failed although a plain login worked
    ==  ===================================================================

``mssql-pool serve [options]``
    Runs the TDS test server in the foreground for manual testing with any client
    (options: ``mssql-pool serve --help``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO
from urllib.parse import quote

__all__ = ["main", "EXIT_CODES", "run_check"]

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


#: Bounds of ``check --timeout`` (seconds) and ``--samples``.
MAX_CHECK_TIMEOUT = 3600.0
MAX_SAMPLES = 10_000


class UsageError(Exception):
    """Bad command-line input; the message says which argument and why."""


# --------------------------------------------------------------------------- URLs
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


_PYMSSQL_KWARGS = frozenset(
    {
        "server",
        "port",
        "user",
        "password",
        "database",
        "timeout",
        "login_timeout",
        "charset",
        "as_dict",
        "appname",
        "conn_properties",
        "autocommit",
        "tds_version",
        "use_datetime2",
        "arraysize",
        "encryption",
        "read_only",
    }
)


def parse_target(url: str) -> Target:
    """Parse ``mssql://user:password@host:port/database?tds_version=7.4&appname=x``.

    Parsing is :func:`mssql_pool._dsn.parse_conninfo`'s (the pool's own); the password
    may also come from ``$MSSQL_POOL_PASSWORD`` (keeps it out of ``ps``).
    """
    from ._dsn import parse_conninfo
    from .errors import ConfigError

    if "://" not in url and "=" not in url:
        raise UsageError("URL: expected mssql://user:password@host:port/database")
    try:
        kwargs = parse_conninfo(url)
    except ConfigError as exc:
        raise UsageError(f"URL: {exc}") from None
    unknown = sorted(set(kwargs) - _PYMSSQL_KWARGS)
    if unknown:
        raise UsageError(f"URL: unknown parameter(s) {', '.join(unknown)}")
    server = str(kwargs["server"])
    port = kwargs.get("port")
    if port is None and server.count(":") == 1:  # pymssql also takes "host:port"
        server, _, port_text = server.partition(":")
        port = int(port_text) if port_text.isdigit() else None
    port = int(port) if port is not None else 1433
    if not 0 < port < 65536:
        raise UsageError(f"URL: port must be 1-65535, got {port}")
    kwargs["server"], kwargs["port"] = server, port
    password = str(kwargs.pop("password", "") or os.environ.get("MSSQL_POOL_PASSWORD", ""))
    return Target(
        host=server,
        port=port,
        user=str(kwargs.get("user", "")),
        password=password,
        database=str(kwargs.get("database", "")),
        kwargs=kwargs,
    )


# ------------------------------------------------------------------ explanations
# By SQL Server / DB-Library error number: (what it means, what to try).
_ADVICE_BY_NUMBER: dict[int, tuple[str, str]] = {
    18456: (
        "the server rejected the login: wrong user name or password, a disabled login, or "
        "SQL authentication switched off (Windows-only mode)",
        "check the user and password; on SQL Server enable mixed-mode authentication; on "
        "Azure SQL use user@server only for old gateways, and check the login exists in the "
        "target database for contained users",
    ),
    4060: (
        "the login worked but the database cannot be opened: it does not exist, the login "
        "has no access, or (Azure) it is failing over",
        "check the database name in the URL and the user's permissions; during a failover "
        "retry in a few seconds",
    ),
    40613: (
        "Azure SQL says the database is not currently available (a reconfiguration or "
        "failover, usually under 30 s)",
        "wait and retry with backoff; mssql_pool's connect policy does this for you",
    ),
    40501: (
        "Azure SQL is busy and throttling this client",
        "wait at least 10 s before retrying; reduce concurrent work or scale up",
    ),
    10928: (
        "a resource limit (sessions or workers) of the database was reached",
        "lower max_size across the fleet (instances x max_size), or raise the service tier",
    ),
    10929: (
        "a resource limit of the database was reached (minimum guarantee not available)",
        "retry after 5 s or more; reduce load",
    ),
    20009: (
        "the client could not reach the server: nothing listening there, or a firewall",
        "check host and port, that SQL Server listens on TCP, and firewall rules",
    ),
    20002: (
        "the connection failed during login: often the server requires encryption this "
        "client did not negotiate, or it closed the connection right away",
        "check the server's 'force encryption' setting and the `encryption` URL "
        "parameter; look at the server's error log",
    ),
    20003: (
        "the server did not answer in time",
        "check the network path (firewall dropping packets, VPN) and server load; raise "
        "login_timeout/timeout if the server is simply slow",
    ),
    20004: ("reading from the server failed: the connection was cut", "check the network path"),
    20006: ("writing to the server failed: the connection was cut", "check the network path"),
    20017: (
        "the server closed the connection unexpectedly",
        "check the server's error log; a redirect target may be unreachable",
    ),
    233: (
        "the server closed the connection before the login completed (often too many "
        "connections, or a protocol mismatch)",
        "check the server's connection limit and error log",
    ),
}
_ADVICE_BY_KIND: dict[str, tuple[str, str]] = {
    "auth": _ADVICE_BY_NUMBER[18456],
    "throttled": (
        "the server is throttling this client",
        "wait at least the hinted delay, then retry with backoff",
    ),
    "transient": (
        "a transient condition that usually clears by itself (failover, resource limit)",
        "retry with backoff; mssql_pool's retry policy does this",
    ),
    "disconnect": (
        "the connection is dead (network cut, server restart or KILL)",
        "check the network path and the server; the pool replaces such connections",
    ),
    "programming": (
        "the SQL itself is wrong (syntax, unknown object or column)",
        "fix the query; retrying will not help",
    ),
    "deadlock": ("the session was chosen as a deadlock victim", "retry the whole transaction"),
    "lock_timeout": ("a lock wait timed out", "roll back and retry the transaction"),
    "query_timeout": (
        "the query ran longer than the timeout; the work may or may not have happened",
        "look at the query plan and blocking; raise `timeout` only if the work is "
        "legitimately slow",
    ),
}
_UNKNOWN_ADVICE = (
    "an error mssql_pool does not classify specially",
    "read the server's message above; the server's error log may say more",
)


def explain(exc: BaseException) -> dict[str, Any]:
    """Classification of ``exc`` plus a plain sentence on meaning and remedy."""
    info: dict[str, Any] = {"type": type(exc).__name__, "message": _first_line(exc)}
    numbers: tuple[int, ...] = ()
    kind = ""
    try:
        from mssql_pool.classify import classify

        ci = classify(exc)
        kind_obj = ci.kind
        kind = str(getattr(kind_obj, "value", kind_obj)).lower()
        numbers = tuple(int(n) for n in (getattr(ci, "numbers", ()) or ()))
        info.update(
            kind=kind,
            number=getattr(ci, "number", None),
            numbers=list(numbers),
            severity=getattr(ci, "severity", None),
            retryable=bool(getattr(ci, "retryable", False)),
            connection_dead=bool(getattr(ci, "connection_dead", False)),
        )
        if getattr(ci, "message", None):
            info["message"] = str(ci.message).strip().splitlines()[0]
    except ImportError:
        info["kind"] = "unclassified"
    meaning, remedy = _UNKNOWN_ADVICE
    for number in numbers:
        if number in _ADVICE_BY_NUMBER:
            meaning, remedy = _ADVICE_BY_NUMBER[number]
            break
    else:
        if kind in _ADVICE_BY_KIND:
            meaning, remedy = _ADVICE_BY_KIND[kind]
    info["meaning"] = meaning
    info["try"] = remedy
    return info


def _first_line(exc: BaseException) -> str:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    text: Any
    if len(args) == 1 and isinstance(args[0], tuple) and len(args[0]) == 2:  # connect() shape
        text = args[0][1]
    elif len(args) >= 2 and isinstance(args[0], int):  # cursor.execute() shape
        text = args[1]
    else:
        text = str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    # pymssql puts the server's message first and DB-Lib's noise after it.
    return lines[0] if lines else type(exc).__name__


# ------------------------------------------------------------------------ check
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


def _established_peers() -> dict[str, tuple[str, int, int]]:
    """This process's ESTABLISHED TCP sockets: inode -> (remote ip, remote port, local port).

    Linux only (reads /proc); empty elsewhere. Used to see where pymssql's socket
    really went, which reveals a followed redirect whatever the server supports.
    """
    inodes: set[str] = set()
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return {}
    peers: dict[str, tuple[str, int, int]] = {}
    for table, width in (("/proc/self/net/tcp", 8), ("/proc/self/net/tcp6", 32)):
        try:
            with open(table, encoding="ascii") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or cols[3] != "01" or cols[9] not in inodes:
                continue
            local_hex, remote_hex = cols[1], cols[2]
            ip_hex, port_hex = remote_hex.split(":")
            peers[cols[9]] = (
                _hex_ip(ip_hex, width),
                int(port_hex, 16),
                int(local_hex.split(":")[1], 16),
            )
    return peers


def _hex_ip(hex_ip: str, width: int) -> str:
    raw = bytes.fromhex(hex_ip)
    # /proc stores each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if width == 8:
        return socket.inet_ntop(socket.AF_INET, words)
    if words[:12] == b"\x00" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, words[12:])
    return socket.inet_ntop(socket.AF_INET6, words)


_ENCRYPTION = {
    0: "encryption off (login packet encrypted only)",
    1: "encryption on",
    2: "encryption not supported",
    3: "encryption required",
}


def prelogin_probe(sock: socket.socket) -> str:
    """Send a TDS PRELOGIN on a connected socket and describe the answer.

    Tells a SQL Server (its version and encryption setting) from any other service
    on the port, before any credentials are sent. Never raises.
    """
    # Options: VERSION (6 bytes), ENCRYPTION (1: ENCRYPT_OFF, to learn the server's
    # setting), INSTOPT (1: default instance), THREADID (4), MARS (1: off); 0xFF ends.
    options = [
        (0x00, b"\x00" * 6),
        (0x01, b"\x00"),
        (0x02, b"\x00"),
        (0x03, b"\x00" * 4),
        (0x04, b"\x00"),
    ]
    head_len = 5 * len(options) + 1
    table, data = b"", b""
    for token, value in options:
        table += bytes([token]) + (head_len + len(data)).to_bytes(2, "big")
        table += len(value).to_bytes(2, "big")
        data += value
    payload = table + b"\xff" + data
    packet = bytes([0x12, 0x01]) + (8 + len(payload)).to_bytes(2, "big") + b"\x00\x00\x01\x00"
    try:
        sock.sendall(packet + payload)
        reply = b""
        while len(reply) < 8 or len(reply) < int.from_bytes(reply[2:4], "big"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    except OSError as exc:
        return f"no answer to a TDS PRELOGIN ({exc.strerror or exc}): is this a SQL Server port?"
    if len(reply) < 8 or reply[0] != 0x04:
        return "the service did not answer a TDS PRELOGIN: is this a SQL Server port?"
    body = reply[8 : int.from_bytes(reply[2:4], "big")]
    found: dict[int, bytes] = {}
    i = 0
    while i + 5 <= len(body) and body[i] != 0xFF:
        token = body[i]
        offset = int.from_bytes(body[i + 1 : i + 3], "big")
        length = int.from_bytes(body[i + 3 : i + 5], "big")
        found[token] = body[offset : offset + length]
        i += 5
    parts = []
    version = found.get(0x00, b"")
    if len(version) >= 4:
        build = int.from_bytes(version[2:4], "big")
        parts.append(f"server version {version[0]}.{version[1]}.{build}")
    encryption = found.get(0x01, b"")
    if encryption:
        parts.append(_ENCRYPTION.get(encryption[0], f"encryption mode {encryption[0]}"))
    return "PRELOGIN: " + (", ".join(parts) or "answered")


def run_check(
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

    def fail(step: Step, code: int) -> CheckResult:
        steps.append(step)
        result.exit_code = code
        return result

    # 1. name resolution
    start = time.perf_counter()
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return fail(
            Step(
                "dns",
                False,
                _ms(start),
                f"cannot resolve {target.host!r}",
                {
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "meaning": "the host name does not resolve to an address",
                    "try": "check the spelling, your DNS/VPN, and for Azure SQL the full name "
                    "<server>.database.windows.net",
                },
            ),
            EXIT_DNS,
        )
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    steps.append(Step("dns", True, _ms(start), f"{target.host} -> {', '.join(addresses)}"))

    # 2. TCP connect (first address that answers)
    tcp_error: OSError | None = None
    connected = ""
    prelogin = ""
    tcp_ms = 0.0
    start = time.perf_counter()
    for family, kind, proto, _name, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            tcp_ms = _ms(start)
            connected = f"{sockaddr[0]!s}:{sockaddr[1]!s}"
            sock.settimeout(min(timeout, 3.0))
            prelogin = prelogin_probe(sock)
            break
        except OSError as exc:
            tcp_error = exc
        finally:
            sock.close()
    if not connected:
        refused = isinstance(tcp_error, ConnectionRefusedError)
        timed_out = isinstance(tcp_error, (TimeoutError, socket.timeout))
        meaning = (
            "nothing is listening on that port (or a firewall actively rejects it)"
            if refused
            else "no answer within the timeout: a firewall silently drops the packets, or "
            "the host is down"
            if timed_out
            else "the network path to the server failed"
        )
        return fail(
            Step(
                "tcp",
                False,
                _ms(start),
                f"cannot connect to {target.host}:{target.port}",
                {
                    "type": type(tcp_error).__name__,
                    "message": str(tcp_error),
                    "meaning": meaning,
                    "try": "check the port (named instances use a dynamic port unless fixed; "
                    "SQL Browser on UDP 1434 tells it), that TCP/IP is enabled on the server, "
                    "and firewalls (Azure SQL: add your client IP to the server firewall)",
                },
            ),
            EXIT_TCP,
        )
    steps.append(Step("tcp", True, tcp_ms, f"connected to {connected}; {prelogin}"))

    # 3. login
    try:
        import pymssql
    except ImportError as exc:  # pragma: no cover - pymssql is the hard dependency
        return fail(
            Step("login", False, None, "pymssql is not installed", explain(exc)), EXIT_LOGIN
        )
    kwargs = target.connect_kwargs(timeout)
    before = _established_peers()
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
        return fail(Step("login", False, _ms(start), f"as {target.user!r}", info), EXIT_LOGIN)
    login_ms = _ms(start)
    new_peers = [
        peer
        for inode, peer in _established_peers().items()
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

    try:
        # 4. version
        start = time.perf_counter()
        try:
            cur = conn.cursor()
            cur.execute("SELECT @@VERSION")
            row = cur.fetchone()
            version = str(row[0]).splitlines()[0].strip() if row else "?"
        except Exception as exc:  # noqa: BLE001
            return fail(
                Step("version", False, _ms(start), "SELECT @@VERSION", explain(exc)), EXIT_QUERY
            )
        extras = _server_facts(conn)
        steps.append(
            Step("version", True, _ms(start), version + (f" ({extras})" if extras else ""))
        )

        # 5. latency
        timings: list[float] = []
        try:
            for _ in range(max(1, samples)):
                start = time.perf_counter()
                cur = conn.cursor()
                cur.execute("SELECT 1")
                cur.fetchall()
                timings.append(_ms(start))
        except Exception as exc:  # noqa: BLE001
            return fail(Step("latency", False, None, "SELECT 1", explain(exc)), EXIT_QUERY)
        steps.append(
            Step(
                "latency",
                True,
                statistics.median(timings),
                f"SELECT 1 x{len(timings)}: median {statistics.median(timings):.2f} ms "
                f"(min {min(timings):.2f}, max {max(timings):.2f})",
            )
        )

        # 6. health-check query
        start = time.perf_counter()
        try:
            cur = conn.cursor()
            cur.execute(check_sql)
            rows = cur.fetchall() if cur.description else []
        except Exception as exc:  # noqa: BLE001
            return fail(
                Step("health", False, _ms(start), repr(check_sql), explain(exc)), EXIT_QUERY
            )
        steps.append(Step("health", True, _ms(start), f"{check_sql!r} returned {len(rows)} row(s)"))
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail too
            pass

    # 7. a checkout through the pool itself
    if use_pool:
        steps.append(_pool_step(target, kwargs, timeout, check_sql))
        if not steps[-1].ok:
            result.exit_code = EXIT_POOL
    return result


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
    from mssql_pool import ConnectionPool

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


def _scrubber(secret: str) -> Callable[[str], str]:
    """Redact URLs and key=value secrets; the known password (raw, URL-quoted or as in a
    repr) is masked where it stands in a secret's position, whatever its length, and
    ordinary words that happen to spell it are left alone."""
    from ._dsn import redact

    secrets = [secret] if secret else []

    def scrub(text: str) -> str:
        return redact(text, secrets)

    return scrub


def _scrub_tree(value: Any, scrub: Callable[[str], str]) -> Any:
    """Every string in a JSON-able tree scrubbed (before json.dumps escapes anything)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_tree(v, scrub) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub_tree(v, scrub) for v in value]
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


# ------------------------------------------------------------------------ parser
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on its own; keep our wording
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mssql-pool",
        description="mssql_pool: a self-healing connection pool for SQL Server and Azure SQL.",
        epilog="Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()),
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,check,serve}")

    demo = sub.add_parser(
        "demo",
        help="money transfers under a chaos schedule, with an invariant check",
        description="Run a money-transfer workload through pool.run_transaction while a "
        "seeded chaos schedule kills sessions, injects deadlocks and login failures, "
        "restarts, redirects and partitions the embedded TDS test server. The pool's own "
        "log lines go to stderr with MSSQL_POOL_LOG=INFO (default: errors only).",
    )
    demo.add_argument(
        "--duration", type=float, default=20.0, help="seconds of workload (default 20)"
    )
    demo.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    demo.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the chaos schedule and the workload (default 1)",
    )
    demo.add_argument("--accounts", type=int, default=50, help="number of accounts (default 50)")
    demo.add_argument(
        "--url",
        help="run against this real server instead (mssql://...); "
        "faults that need the test server are skipped or done with KILL",
    )
    demo.add_argument("--plot", metavar="PNG", help="write the timeline picture (matplotlib)")
    demo.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    demo.add_argument("--no-chaos", action="store_true", help="run the workload without faults")
    demo.add_argument(
        "--keep-tables",
        action="store_true",
        help="with --url: leave the demo tables in place (default: dropped at the end)",
    )
    demo.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve the pool's Prometheus metrics on this port while the demo runs "
        "(0 picks a free one)",
    )
    demo.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics are served on (default 127.0.0.1, this machine only; "
        "0.0.0.0 for every interface)",
    )
    demo.add_argument(
        "--progress",
        choices=("auto", "line", "plain", "off"),
        default="auto",
        help="live progress on stderr: a redrawn line on a TTY, plain lines "
        "otherwise (default auto)",
    )

    check = sub.add_parser(
        "check",
        help="connectivity diagnostics for a server URL",
        description="Diagnose connectivity to a SQL Server step by step.",
        epilog="Exit codes: "
        + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items() if k != 1)
        + "; 1 internal error",
    )
    check.add_argument(
        "url",
        help="mssql://user:password@host:port/database[?tds_version=7.4]"
        " (the password may come from $MSSQL_POOL_PASSWORD instead)",
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help=f"seconds allowed for each step, > 0 and <= {MAX_CHECK_TIMEOUT:g} (default 10)",
    )
    check.add_argument(
        "--check-sql", default="SELECT 1", help="health-check query to run (default 'SELECT 1')"
    )
    check.add_argument(
        "--samples",
        type=int,
        default=5,
        help=f"SELECT 1 round trips to time, 1-{MAX_SAMPLES} (default 5)",
    )
    check.add_argument(
        "--no-pool", action="store_true", help="skip the checkout through ConnectionPool"
    )
    check.add_argument("--json", action="store_true", help="print one JSON object instead")

    sub.add_parser("serve", help="run the TDS test server in the foreground", add_help=False)
    return parser


def _check_main(args: argparse.Namespace, out: TextIO) -> int:
    target = parse_target(args.url)
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= MAX_CHECK_TIMEOUT):
        raise UsageError(f"--timeout must be a number of seconds > 0 and <= "
                         f"{MAX_CHECK_TIMEOUT:g}, got {args.timeout!r}")
    if not 1 <= args.samples <= MAX_SAMPLES:
        raise UsageError(f"--samples must be between 1 and {MAX_SAMPLES}, got {args.samples}")
    if not args.check_sql.strip():
        raise UsageError("--check-sql must be a query (it is blank)")
    scrub = _scrubber(target.password)
    result = run_check(
        target,
        timeout=args.timeout,
        check_sql=args.check_sql,
        samples=args.samples,
        use_pool=not args.no_pool,
    )
    if args.json:
        tree = _scrub_tree(result.as_dict(), scrub)
        out.write(scrub(json.dumps(tree, indent=2, default=str)) + "\n")
    else:
        print_check(result, out, scrub)
    return result.exit_code


def _usage_json(message: str) -> str:
    """What ``check --json`` prints for bad usage: still one JSON object."""
    from ._dsn import redact

    return json.dumps({"ok": False, "exit_code": EXIT_USAGE,
                       "exit_meaning": EXIT_CODES[EXIT_USAGE], "error": redact(message),
                       "steps": []}, indent=2)


def _serve_main(argv: Sequence[str]) -> int:
    try:
        from mssql_pool.testing.server import serve_main
    except ImportError as exc:
        sys.stderr.write(
            f"mssql-pool serve: the TDS test server is not available ({exc}); "
            "install the 'testing' extra: pip install 'mssql_pool[testing]'\n"
        )
        return EXIT_FAILED
    code = serve_main(list(argv))
    return int(code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mssql-pool`` console script. Returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "serve":
        return _serve_main(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if args.command == "check":
            return _check_main(args, sys.stdout)
        if args.duration <= 0:
            raise UsageError("--duration must be > 0 seconds")
        if not 1 <= args.threads <= 256:
            raise UsageError("--threads must be between 1 and 256")
        if args.accounts < 2:
            raise UsageError("--accounts must be >= 2")
        if args.plot and importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install 'mssql_pool[plot]'")
        if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
            raise UsageError(f"--metrics-port must be 0-65535, got {args.metrics_port}")
        if not args.metrics_host.strip() or any(c.isspace() for c in args.metrics_host):
            raise UsageError("--metrics-host must be a host name or address")
        if args.metrics_port is not None and importlib.util.find_spec("prometheus_client") is None:
            raise UsageError(
                "--metrics-port needs prometheus-client: pip install 'mssql_pool[metrics]'"
            )
        from mssql_pool.demo import demo_main

        return int(demo_main(args))
    except UsageError as exc:
        from ._dsn import redact

        sys.stderr.write(f"mssql-pool: error: {redact(exc)}\n")
        if args_list and args_list[0] == "check" and "--json" in args_list:
            sys.stdout.write(_usage_json(str(exc)) + "\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("mssql-pool: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
