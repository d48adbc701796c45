"""TdsServer: a SQL Server stand-in on a real TCP port, with faults on demand."""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

from ..errors import ConfigError
from . import _protocol as P
from ._engine import Engine
from ._faults import Fault, FaultBook, compile_match, default_severity
from ._session import Session

__all__ = ["TdsServer", "serve_main"]

log = logging.getLogger("mssql_pool.testing.server")

STAT_KEYS = (
    "logins", "logins_failed", "batches", "rpcs", "transactions", "attentions", "requests",
    "kills", "sessions_open", "sessions_total", "connections", "refused",
)
#: Seconds a new connection has to send PRELOGIN and LOGIN7 before it is closed.
HANDSHAKE_TIMEOUT = 10.0
#: Connections that have not logged in yet, at most (a flood of silent sockets is bounded).
MAX_PENDING = 128


class TdsServer:
    """A TDS server that pymssql, FreeTDS and python-tds log into; SQL runs on SQLite.

    Use it as a context manager (``with TdsServer() as server: ...``) or call
    :meth:`start` and :meth:`close`. ``port=0`` picks a free port, kept across
    :meth:`stop`/:meth:`start` so clients reconnect to the same address.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        database: str = "master",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        databases: Iterable[str] = (),
        max_sessions: int | None = None,
        latency: float = 0.0,
        login_latency: float = 0.0,
        server_name: str = "TDSTEST",
        lock_wait: float = 10.0,
        share_data_with: TdsServer | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_pending: int = MAX_PENDING,
        max_message: int = P.MAX_MESSAGE,
    ) -> None:
        users = {"sa": "Secret123!"} if users is None else dict(users)
        if not users:
            raise ConfigError("users", "at least one user is needed, e.g. {'sa': 'Secret123!'}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError("port", f"must be an int in 0..65535, got {port!r}")
        if max_sessions is not None and (isinstance(max_sessions, bool) or not isinstance(
                max_sessions, int) or max_sessions < 0):
            raise ConfigError("max_sessions", f"must be an int >= 0 or None, got {max_sessions!r}")
        _check_seconds("handshake_timeout", handshake_timeout)
        if not 0 < handshake_timeout <= 3600:
            raise ConfigError("handshake_timeout",
                              f"must be > 0 and <= 3600 seconds, got {handshake_timeout!r}")
        for name, value, low in (("max_pending", max_pending, 1),
                                 ("max_message", max_message, P.MAX_LOGIN_MESSAGE)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(name, f"must be an int >= {low}, got {value!r}")
        #: Seconds a new connection has to complete PRELOGIN and LOGIN7.
        self.handshake_timeout = float(handshake_timeout)
        #: Connections not yet logged in, at most; beyond, new ones are closed at once.
        self.max_pending = max_pending
        #: Largest request (bytes) a logged-in session may send.
        self.max_message = max_message
        self._refused_pending = 0
        self._refused_logged_at = -1e9
        self._users = users
        self.database = database
        self.host = host
        self.port = port
        self.server_name = server_name
        self.max_sessions = max_sessions
        self._latency = 0.0
        self._login_latency = 0.0
        self.latency = latency
        self.login_latency = login_latency
        if share_data_with is not None:
            # a replica (failover partner, node behind a gateway): the same databases on
            # disk, its own sessions, locks and name; the data belongs to the other server
            self._data_dir: str = share_data_with._data_dir
            self._cleanup: weakref.finalize[..., Any] = weakref.finalize(self, _keep)
        else:
            self._data_dir = tempfile.mkdtemp(prefix="mssql_pool_tds_")
            # the data goes when the server is garbage-collected even if close() was never
            # called
            self._cleanup = weakref.finalize(self, _remove_tree, self._data_dir)
        self._engine = Engine(self._data_dir, [database, *databases], server_name, lock_wait)
        self._engine.sessions_provider = self._session_infos
        self._engine.kill = self.kill
        self._faults = FaultBook()
        self._lock = threading.Lock()
        self._sessions: dict[int, Session] = {}
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._next_spid = 51
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._blackholed = threading.Event()
        self._redirect: tuple[str, int] | None = None
        self._closed = False

    # ------------------------------------------------------------------ identity

    @property
    def user(self) -> str:
        return next(iter(self._users))

    @property
    def password(self) -> str:
        return self._users[self.user]

    @property
    def url(self) -> str:
        """A usable URL with the real password (repr and logs redact it)."""
        return (f"mssql://{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
                f"{self.host}:{self.port}/{quote(self.database, safe='')}")

    def connect_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``pymssql.connect(**...)``."""
        kw: dict[str, Any] = {
            "server": self.host, "port": str(self.port), "user": self.user,
            "password": self.password, "database": self.database, "tds_version": "7.4",
        }
        kw.update(overrides)
        return kw

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (f"<TdsServer mssql://{self.user}:...@{self.host}:{self.port}/{self.database} "
                f"{state} sessions={len(self._sessions)}>")

    @property
    def running(self) -> bool:
        return self._listener is not None

    @property
    def latency(self) -> float:
        """Seconds added to every reply (an attention still cuts the wait short)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._latency = _check_seconds("latency", seconds)

    @property
    def login_latency(self) -> float:
        """Seconds added to every login."""
        return self._login_latency

    @login_latency.setter
    def login_latency(self, seconds: float) -> None:
        self._login_latency = _check_seconds("login_latency", seconds)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> TdsServer:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> TdsServer:
        """Listen (again) on the same port. Data survives a stop()/start()."""
        if self._closed:
            raise RuntimeError("this TdsServer was closed; create a new one")
        if self._listener is not None:
            return self
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            lsock.bind((self.host, self.port))
        except OSError:
            lsock.close()
            raise
        lsock.listen(128)
        lsock.settimeout(0.05)
        self.port = lsock.getsockname()[1]
        self._engine.listen_address = (self.host, self.port)
        self._listener = lsock
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(lsock,), name=f"mssql_pool-tds-accept-{self.port}",
            daemon=True,
        )
        self._accept_thread.start()
        log.info("TDS test server listening on %s:%d", self.host, self.port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every session (like a server restart), keep the data."""
        lsock = self._listener
        if lsock is None:
            return
        self._stopping.set()
        t = self._accept_thread
        if t is not None:
            t.join(timeout)
        lsock.close()
        self._listener = None
        self._accept_thread = None
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.close()
        deadline = time.monotonic() + timeout
        for s in sessions:
            s.thread.join(max(0.0, deadline - time.monotonic()))
        log.info("TDS test server on port %d stopped", self.port)

    def close(self) -> None:
        """stop() and delete the data."""
        self.stop()
        if not self._closed:
            self._closed = True
            self._cleanup()

    def _accept_loop(self, lsock: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, addr = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                log.warning("accept failed", exc_info=True)
                time.sleep(0.05)
                continue
            with self._lock:
                pending = sum(1 for s in self._sessions.values() if not s.logged_in)
                refuse = pending >= self.max_pending
                if refuse:
                    self._refused_pending += 1
                    self._stats["refused"] += 1
                    refused = self._refused_pending
                    now = time.monotonic()
                    say = now - self._refused_logged_at >= 1.0
                    if say:
                        self._refused_logged_at = now
            if refuse:
                if say:   # at most one line a second during a flood
                    log.warning("%d connections are waiting to log in (the limit, max_pending); "
                                "closing the one from %s:%s (%d refused so far)",
                                self.max_pending, addr[0], addr[1], refused)
                try:
                    conn.close()
                except OSError:
                    pass
                continue
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                spid = self._next_spid
                self._next_spid += 1
                if self._next_spid > 32000:
                    self._next_spid = 51
                session = Session(self, conn, spid, f"{addr[0]}:{addr[1]}")
                self._sessions[spid] = session
                self._stats["connections"] += 1
            session.start()

    def _session_ended(self, session: Session) -> None:
        with self._lock:
            if self._sessions.get(session.spid) is session:
                del self._sessions[session.spid]
            if session.logged_in:
                self._stats["sessions_open"] -= 1
                session.logged_in = False

    def _login_ok(self, session: Session) -> None:
        with self._lock:
            self._stats["sessions_open"] += 1
            self._stats["sessions_total"] += 1

    def _open_sessions(self) -> int:
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.logged_in)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] = self._stats.get(key, 0) + n

    # ------------------------------------------------------------------ inspection

    def _session_infos(self) -> list[dict[str, Any]]:
        with self._lock:
            live = [s for s in self._sessions.values() if s.logged_in]
        return [s.info() for s in live]

    def sessions(self) -> list[dict[str, Any]]:
        """Logged-in sessions: spid, user, database, login_time, in_request, requests, ..."""
        out = []
        for info in self._session_infos():
            info.pop("_state", None)
            out.append(info)
        return out

    def stats(self) -> dict[str, int]:
        """Counters since creation (see docs/testing.md for the keys)."""
        with self._lock:
            return dict(self._stats)

    # ------------------------------------------------------------------ faults

    def kill(self, spid: int) -> bool:
        """Like KILL: a session mid-request gets 596 (severity 21); then its socket closes."""
        with self._lock:
            s = self._sessions.get(spid)
        if s is None:
            return False
        self._count("kills")
        log.info("killing session %d", spid)
        s.kill()
        return True

    def kill_all(self) -> int:
        with self._lock:
            spids = [s.spid for s in self._sessions.values()]
        return sum(1 for spid in spids if self.kill(spid))

    def fail_next(self, number: int, match: str | None = None, times: int = 1,
                  severity: int | None = None, message: str | None = None) -> None:
        """The next ``times`` requests matching ``match`` (a regex) fail with this error.

        1205 also rolls the session's transaction back, as a deadlock victim's is; a
        severity of 20 or more closes the connection after the error, as SQL Server does.
        """
        _check_times(times)
        _check_number(number)
        self._faults.add(Fault("error", compile_match(match), times, number=number,
                               severity=default_severity(number) if severity is None else severity,
                               message=message))

    def fail_logins(self, number: int, times: int = 1, message: str | None = None,
                    severity: int | None = None, user: str | None = None) -> None:
        """The next ``times`` logins fail with ``number`` and SQL Server's text for it."""
        _check_times(times)
        _check_number(number)
        pattern = None if user is None else compile_match(f"^{re.escape(user)}$")
        self._faults.add(Fault("login", pattern, times, number=number, severity=severity,
                               message=message))

    def drop_next(self, match: str | None = None, after_execute: bool = False,
                  times: int = 1) -> None:
        """Close the socket of the next matching request, before or after running it."""
        _check_times(times)
        self._faults.add(Fault("drop", compile_match(match), times, after_execute=after_execute))

    def delay_next(self, seconds: float, match: str | None = None, times: int = 1) -> None:
        """Delay the reply of the next matching request (an attention cuts it short)."""
        _check_times(times)
        seconds = _check_seconds("seconds", seconds)
        self._faults.add(Fault("delay", compile_match(match), times, seconds=seconds))

    def blackhole(self) -> None:
        """Stop answering anything, keeping sockets open (a network partition)."""
        log.info("TDS test server on port %d: blackhole", self.port)
        self._blackholed.set()

    def heal(self) -> None:
        """End a blackhole: new requests and logins are answered again."""
        log.info("TDS test server on port %d: healed", self.port)
        self._blackholed.clear()

    def clear_faults(self) -> None:
        """Forget every armed fail_next/fail_logins/drop_next/delay_next."""
        self._faults.clear()

    def pending_faults(self) -> int:
        """How many armed faults have not fired yet."""
        return len(self._faults.pending())

    def redirect_to(self, other: TdsServer | tuple[str, int] | None) -> None:
        """Answer logins with a routing ENVCHANGE to ``other`` (Azure gateway style)."""
        if other is None:
            self._redirect = None
        elif isinstance(other, TdsServer):
            self._redirect = (other.host, other.port)
        else:
            self._redirect = (str(other[0]), int(other[1]))


def _keep() -> None:
    """Finalizer of a replica: the data stays with the server that made it."""


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _check_times(times: int) -> None:
    if not isinstance(times, int) or isinstance(times, bool) or times < 1:
        raise ConfigError("times", f"must be an int >= 1, got {times!r}")


def _check_seconds(name: str, seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ConfigError(name, f"must be a number of seconds >= 0, got {seconds!r}")
    return float(seconds)


def _check_number(number: int) -> None:
    if isinstance(number, bool) or not isinstance(number, int) or number <= 0:
        raise ConfigError("number", f"must be a SQL Server error number (int > 0), got {number!r}")


PASSWORD_ENV = "MSSQL_POOL_PASSWORD"
DEFAULT_PASSWORD = "Secret123!"


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mssql-pool serve",
        description="Run the TDS test server (a SQL Server stand-in whose SQL runs on "
        "SQLite) in the foreground until Ctrl-C or SIGTERM. It is for tests only: no "
        "encryption, one login, data deleted when it stops.",
        epilog=f"The password is taken from --password, else --password-file, else "
        f"${PASSWORD_ENV}, else {DEFAULT_PASSWORD!r}; prefer the file or the variable "
        f"(a command line is visible to every user through ps).",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=1433,
                   help="TCP port 0-65535, 0 picks a free one (default 1433)")
    p.add_argument("--user", default="sa", help="the login accepted (default sa)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--password", default=None,
                        help=f"its password (default ${PASSWORD_ENV} or {DEFAULT_PASSWORD!r})")
    secret.add_argument("--password-file", metavar="FILE", default=None,
                        help="read the password from the first line of FILE")
    p.add_argument("--database", default="master", help="the default database (default master)")
    p.add_argument("--max-sessions", type=int, default=None, metavar="N",
                   help="logins beyond N open sessions fail with 10928 (default: no limit)")
    p.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                   help="added to every reply, 0-60 (default 0)")
    p.add_argument("--handshake-timeout", type=float, default=HANDSHAKE_TIMEOUT,
                   metavar="SECONDS",
                   help=f"a connection that has not logged in after this is closed "
                   f"(default {HANDSHAKE_TIMEOUT:g})")
    p.add_argument("--max-pending", type=int, default=MAX_PENDING, metavar="N",
                   help=f"connections not yet logged in, at most; more are closed at once "
                   f"(default {MAX_PENDING})")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="DEBUG logging instead of INFO")
    return p


def _serve_password(p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    if args.password is not None:
        password: str = args.password
    elif args.password_file is not None:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except (OSError, UnicodeError) as exc:
            p.error(f"--password-file: cannot read {args.password_file!r}: "
                    f"{getattr(exc, 'strerror', None) or type(exc).__name__}")
    else:
        password = os.environ.get(PASSWORD_ENV) or DEFAULT_PASSWORD
    if not password:
        p.error("the password is empty")
    return password


def serve_main(argv: list[str] | None = None) -> int:
    """``mssql-pool serve``: run a TdsServer in the foreground until Ctrl-C or SIGTERM.

    Returns the exit code: 0 after a clean stop, 2 for bad usage (a bad option value,
    an unreadable password file, a port that cannot be bound).
    """
    p = _serve_parser()
    try:
        args = p.parse_args(argv)
        if not 0 <= args.port <= 65535:
            p.error(f"--port must be 0-65535, got {args.port}")
        if not (math.isfinite(args.latency) and 0 <= args.latency <= 60):
            p.error(f"--latency must be a number of seconds 0-60, got {args.latency!r}")
        if not (math.isfinite(args.handshake_timeout) and 0 < args.handshake_timeout <= 3600):
            p.error(f"--handshake-timeout must be > 0 and <= 3600, got "
                    f"{args.handshake_timeout!r}")
        if args.max_sessions is not None and args.max_sessions < 0:
            p.error(f"--max-sessions must be >= 0, got {args.max_sessions}")
        if args.max_pending < 1:
            p.error(f"--max-pending must be >= 1, got {args.max_pending}")
        password = _serve_password(p, args)
        server = TdsServer({args.user: password}, args.database, args.host, args.port,
                           max_sessions=args.max_sessions, latency=args.latency,
                           handshake_timeout=args.handshake_timeout,
                           max_pending=args.max_pending)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        try:
            server.start()
        except OSError as exc:
            server.close()
            p.error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    except SystemExit as exc:   # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        print(f"listening on {server.host}:{server.port} database {server.database} "
              f"user {server.user} (Ctrl-C or SIGTERM stops; for tests only)", flush=True)
        print(f"url: {server.url}", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.close()   # sessions closed, data directory removed
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
