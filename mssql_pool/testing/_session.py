"""One client connection: PRELOGIN, LOGIN7, then requests until the socket closes."""

from __future__ import annotations

import datetime as _dt
import logging
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from . import _fast
from . import _protocol as P
from ._engine import Executor, SessionState
from ._faults import Fault, default_severity, error_text
from ._options import VERSION
from ._results import Done, Env, Info, Interrupted, Out, ReturnStatus, Rows, SqlError

if TYPE_CHECKING:
    from .server import TdsServer

log = logging.getLogger("mssql_pool.testing.session")

PROG_NAME = "Microsoft SQL Server"


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``sock`` to be readable (poll: no FD_SETSIZE limit)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


class _Closed(Exception):
    """End this session now (kill, drop fault, fatal error)."""


class Session:
    def __init__(self, server: TdsServer, sock: socket.socket, spid: int, peer: str) -> None:
        self.server = server
        self.sock = sock
        self.spid = spid
        self.peer = peer
        self.major = 0x74
        self.packet_size = 4096
        self.state: SessionState | None = None
        self.executor: Executor | None = None
        self.in_request = False
        self.logged_in = False
        self.requests = 0
        self.killed = threading.Event()
        self._closing = threading.Event()
        self._send_lock = threading.Lock()
        self.thread = threading.Thread(
            target=self._run, name=f"mssql_pool-tds-session-{spid}", daemon=True
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.thread.start()

    def info(self) -> dict[str, Any]:
        st = self.state
        return {
            "spid": self.spid,
            "user": st.user if st else None,
            "database": st.database if st else None,
            "login_time": st.login_time if st else None,
            "in_request": self.in_request,
            "requests": self.requests,
            "trancount": st.trancount if st else 0,
            "peer": self.peer,
            "host": st.hostname if st else "",
            "_state": st,
        }

    def close(self) -> None:
        """Close the socket from another thread (stop, kill of an idle session)."""
        self._closing.set()
        self._interrupt_sql()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _interrupt_sql(self) -> None:
        ex = self.executor
        if ex is not None and self.in_request:
            try:
                ex.locks.interrupt(ex.conn)  # never while it rolls back
            except Exception:  # noqa: BLE001 - the connection may be closing
                pass

    def kill(self) -> None:
        self.killed.set()
        if self.in_request:
            self._interrupt_sql()
        else:
            self.close()

    def _run(self) -> None:
        try:
            self._serve()
        except (P.PeerClosed, _Closed, ConnectionError):
            pass
        except P.ProtocolError as exc:
            log.warning("session %d from %s: malformed TDS, closing it: %s", self.spid,
                        self.peer, exc)
        except OSError as exc:
            if not self._closing.is_set():
                log.debug("session %d: socket error %s", self.spid, exc)
        except Exception:  # noqa: BLE001 - one session must never take the server down
            log.exception("session %d: internal error, closing it", self.spid)
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self.executor is not None:
            try:
                self.executor.abort_transaction()
                self.executor.close()
            except Exception:  # noqa: BLE001
                log.debug("session %d: cleanup failed", self.spid, exc_info=True)
        try:
            self.sock.close()
        except OSError:
            pass
        self.server._session_ended(self)

    # ------------------------------------------------------------------ I/O

    def _send(self, payload: bytes, ptype: int = P.PKT_REPLY) -> None:
        if self.server._blackholed.is_set():
            return  # a partition: nothing gets through
        with self._send_lock:
            self.sock.sendall(P.frame(ptype, payload, self.packet_size, self.spid))

    def wait(self, seconds: float) -> None:
        """Sleep for a delay, cut short by an attention (Interrupted), a KILL or stop()."""
        deadline = time.monotonic() + seconds
        while True:
            if self.killed.is_set():
                raise Interrupted("kill")
            if self._closing.is_set():
                raise _Closed()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            r, _, _ = select.select([self.sock], [], [], min(left, 0.05))
            if r:
                ptype, _status, _payload = P.read_packet(self.sock)
                if ptype == P.PKT_ATTENTION:
                    raise Interrupted("attention")
                raise P.ProtocolError(f"packet type {ptype:#x} received during a request")

    def _wait_healed(self) -> None:
        while self.server._blackholed.is_set():
            if self._closing.is_set() or self.killed.is_set():
                raise _Closed()
            time.sleep(0.02)

    # ------------------------------------------------------------------ protocol

    def _read_login_message(self, deadline: float) -> tuple[int, int, bytes]:
        """PRELOGIN or LOGIN7, before the handshake deadline (pushed back while the server
        is blackholed: a partition must not end sessions) and within the login size."""
        srv = self.server
        while True:
            now = time.monotonic()
            if srv._blackholed.is_set():
                deadline = max(deadline, now + srv.handshake_timeout)
            if self._closing.is_set():
                raise _Closed()
            if now >= deadline:
                log.info("session %d from %s: no login within %g s, closing it", self.spid,
                         self.peer, srv.handshake_timeout)
                raise _Closed()
            if _readable(self.sock, min(deadline - now, 0.5)):
                break
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            return P.read_message(self.sock, P.MAX_LOGIN_MESSAGE)
        except TimeoutError:
            log.info("session %d from %s: login message not completed within %g s, closing it",
                     self.spid, self.peer, srv.handshake_timeout)
            raise _Closed() from None
        finally:
            self.sock.settimeout(None)

    def _serve(self) -> None:
        deadline = time.monotonic() + self.server.handshake_timeout
        ptype, _status, payload = self._read_login_message(deadline)
        if self.server._blackholed.is_set():
            self._wait_healed()
            raise _Closed()
        if ptype == P.PKT_PRELOGIN:
            P.parse_prelogin(payload)
            self._send(P.build_prelogin_reply(VERSION))
            ptype, _status, payload = self._read_login_message(deadline)
        if ptype != P.PKT_LOGIN7:
            raise P.ProtocolError(f"expected LOGIN7, got packet type {ptype:#x}")
        self._login(P.parse_login7(payload))
        while True:
            ptype, status, payload = P.read_message(self.sock, self.server.max_message)
            if self.server._blackholed.is_set():
                continue  # swallowed by the partition
            if ptype == P.PKT_ATTENTION:
                self.server._count("attentions")
                self._send(P.done(P.DONE_ATTN, 0, self.major))
                continue
            self.requests += 1
            self.server._count("requests")
            self.in_request = True
            try:
                self._request(ptype, status, payload)
            finally:
                self.in_request = False

    def _login(self, login: P.Login7) -> None:
        self.major = login.major
        if 512 <= login.packet_size <= 32767:
            self.packet_size = login.packet_size
        srv = self.server
        if srv.login_latency > 0:
            self._sleep_plain(srv.login_latency)
        database = login.database or srv.database
        fault = srv._faults.take("login", login.username)
        if fault is not None:
            srv._count("logins_failed")
            self._fail_login(fault.number, fault.severity, fault.message, login.username,
                             database)
        if srv.max_sessions is not None and srv._open_sessions() >= srv.max_sessions:
            srv._count("logins_failed")
            # Azure's session limit: resource 2 ("session"); resource 1 is the worker limit
            text = error_text(10928, limit=srv.max_sessions, resource=2, what="session")
            self._fail_login(10928, None, text, login.username, database)
        password = srv._users.get(login.username)
        if password is None or password != login.password:
            srv._count("logins_failed")
            log.info("session %d: login failed for user %r", self.spid, login.username)
            self._fail_login(18456, None, None, login.username, database)
        real_db = srv._engine.database_name(database)
        if real_db is None:
            srv._count("logins_failed")
            # SQL Server follows 4060 with 18456; pymssql would then report only 18456 (the
            # higher severity), so the test server sends 4060 alone: clients see the number.
            self._fail_login(4060, None, None, login.username, database)
        assert real_db is not None
        state = SessionState(
            spid=self.spid, user=login.username, login_database=real_db, database=real_db,
            hostname=login.hostname, appname=login.appname, login_time=_dt.datetime.now(),
        )
        self.state = state
        self.executor = Executor(srv._engine, state, self.major)
        m = self.major
        name = srv.server_name
        out = bytearray()
        out += P.envchange(P.ENV_DATABASE, real_db, "master")
        out += P.message(P.TOK_INFO, 5701, 2, 0, f"Changed database context to '{real_db}'.",
                         name, "", 1, m)
        if m >= 0x71:
            out += P.envchange_bytes(P.ENV_COLLATION, P.COLLATION, b"")
        out += P.envchange(P.ENV_LANGUAGE, "us_english", "")
        out += P.message(P.TOK_INFO, 5703, 1, 0, "Changed language setting to us_english.",
                         name, "", 1, m)
        out += P.loginack(login.tds_version, PROG_NAME, VERSION)
        out += P.envchange(P.ENV_PACKETSIZE, str(self.packet_size), str(self.packet_size))
        target = srv._redirect
        if target is not None:
            out += P.envchange_routing(target[0], target[1])
        out += P.done(P.DONE_FINAL, 0, m)
        self.logged_in = True
        srv._count("logins")
        srv._login_ok(self)
        log.debug("session %d: %s logged in to %s (TDS %x)", self.spid, login.username,
                  real_db, m)
        self._send(bytes(out))
        if target is not None:
            log.info("session %d: login routed to %s:%d", self.spid, target[0], target[1])

    def _fail_login(self, number: int, severity: int | None, text: str | None, user: str,
                    database: str, prefix: bytes = b"") -> None:
        sev = default_severity(number) if severity is None else severity
        msg = text or error_text(number, user=user, database=database,
                                 server=self.server.server_name, limit=self.server.max_sessions)
        out = prefix + P.message(P.TOK_ERROR, number, 1, sev, msg, self.server.server_name, "",
                                 1, self.major)
        out += P.done(P.DONE_ERROR, 0, self.major)
        self._send(out)
        raise _Closed()

    def _sleep_plain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._closing.is_set():
                raise _Closed()
            time.sleep(min(left, 0.05))

    # ------------------------------------------------------------------ requests

    def _request(self, ptype: int, status: int, payload: bytes) -> None:
        fast = _fast.reply(self, ptype, status, payload)  # SELECT 1, sp_reset_connection
        if fast is not None:
            self.in_request = False
            self._send(fast)
            return
        srv = self.server
        ex = self.executor
        assert ex is not None
        prefix = b""
        if status & P.STATUS_RESETCONNECTION:
            ex.reset()
            prefix = P.envchange_bytes(P.ENV_RESETACK, b"", b"")
        if ptype == P.PKT_SQL_BATCH:
            srv._count("batches")
            text = P.parse_sql_batch(payload, self.major)
            self._guarded(text, lambda: ex.run_batch(text, self.wait), prefix, P.TOK_DONE)
        elif ptype == P.PKT_RPC:
            srv._count("rpcs")
            calls = P.parse_rpc(payload, self.major)
            text = " ".join(
                c.name + "".join(f" {p.value}" for p in c.params[:1] if isinstance(p.value, str))
                for c in calls
            )
            self._guarded(text, lambda: self._run_rpc(calls), prefix, P.TOK_DONEPROC)
        elif ptype == P.PKT_TRANSACTION:
            srv._count("transactions")
            req = P.parse_transaction(payload, self.major)
            names = {5: "BEGIN TRAN", 7: "COMMIT TRAN", 8: "ROLLBACK TRAN", 9: "SAVE TRAN"}
            text = names.get(req.kind, "TM")
            self._guarded(text, lambda: self._run_tm(req), prefix, P.TOK_DONE)
        else:
            raise P.ProtocolError(f"unexpected packet type {ptype:#x}")

    def _run_rpc(self, calls: list[P.RpcCall]) -> list[Out]:
        ex = self.executor
        assert ex is not None
        out: list[Out] = []
        for c in calls:
            params = [(p.name or None, p.value) for p in c.params]
            try:
                ex.call(c.name, params, out, self.wait)
            except SqlError as exc:
                ex._on_error(exc)
                out.append(exc)
                break
        return out

    def _run_tm(self, req: P.TransactionRequest) -> list[Out]:
        ex = self.executor
        assert ex is not None
        out: list[Out] = []
        try:
            if req.kind == 5:
                if req.isolation:
                    ex.state.isolation = req.isolation
                ex.begin(out)
            elif req.kind == 7:
                ex.commit(out)
                if req.begin_after:
                    ex.begin(out)
            elif req.kind == 8:
                ex.rollback(out)
                if req.begin_after:
                    ex.begin(out)
            elif req.kind == 9:
                out.append(Done(None))
            elif req.kind == 0:
                out.append(Rows([P.Column("", P.K_VARBINARY, 8000)], [(b"",)]))
        except SqlError as exc:
            out.append(exc)
        return out

    def _guarded(self, text: str, run: Any, prefix: bytes, done_tok: int) -> None:
        """Apply faults, run the request, encode and send the reply."""
        srv = self.server
        ex = self.executor
        assert ex is not None
        faults = srv._faults
        drop = faults.take("drop", text)
        if drop is not None and not drop.after_execute:
            log.info("session %d: dropping the connection before running %r", self.spid,
                     text[:80])
            raise _Closed()
        fail = faults.take("error", text)
        delay = faults.take("delay", text)
        try:
            if delay is not None:
                self.wait(delay.seconds)
            if fail is not None:
                out: list[Out] = [self._fault_error(fail)]
            else:
                out = self._run_safely(run, text)
            if drop is not None:
                log.info("session %d: dropping the connection after running %r", self.spid,
                         text[:80])
                raise _Closed()
            if self.killed.is_set():
                raise Interrupted("kill")
            if srv.latency > 0:
                self.wait(srv.latency)
        except Interrupted as exc:
            if exc.reason == "kill":
                self._send_killed()
                raise _Closed() from None
            srv._count("attentions")
            self._send(P.done(P.DONE_ATTN, 0, self.major))
            return
        payload = prefix + self._encode(out, done_tok)
        self.in_request = False
        self._send(payload)
        fatal = any(isinstance(o, SqlError) and o.severity >= 20 for o in out)
        if fatal:
            raise _Closed()

    def _run_safely(self, run: Any, text: str) -> list[Out]:
        """Run a request; a bug in the SQL emulation becomes an error reply, not a dead session."""
        try:
            out: list[Out] = run()
        except (Interrupted, _Closed, P.PeerClosed, P.ProtocolError, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the client like a SQL error
            log.warning("session %d: the test server cannot run %r: %r", self.spid, text[:200],
                        exc)
            log.debug("traceback", exc_info=True)
            return [SqlError(50000, f"The TDS test server cannot run this request ({exc!r}); "
                                    "it covers a subset of T-SQL.", 16)]
        return out

    def _fault_error(self, fault: Fault) -> SqlError:
        ex = self.executor
        assert ex is not None
        number = fault.number
        err = SqlError(number, fault.message, fault.severity, spid=self.spid,
                       server=self.server.server_name, database=ex.state.database,
                       user=ex.state.user)
        ex._on_error(err)
        log.info("session %d: injected error %d", self.spid, number)
        return err

    def _send_killed(self) -> None:
        ex = self.executor
        if ex is not None:
            ex.abort_transaction()
        out = P.message(P.TOK_ERROR, 596, 1, 21, error_text(596), self.server.server_name, "",
                        1, self.major)
        out += P.done(P.DONE_ERROR, 0, self.major)
        try:
            self._send(out)
        except OSError:
            pass

    def _encode(self, out: list[Out], done_tok: int) -> bytes:
        m = self.major
        name = self.server.server_name
        parts: list[bytes] = []
        dones: list[tuple[int, int]] = []  # indexes into parts of DONE tokens and status

        def add_done(status: int, count: int, tok: int = P.TOK_DONE) -> None:
            parts.append(b"")
            dones.append((len(parts) - 1, status | (tok << 16)))
            counts.append(count)

        counts: list[int] = []
        trancount = self.executor.state.trancount if self.executor else 0
        for o in out:
            if isinstance(o, Rows):
                parts.append(P.encode_rows(m, o.columns, o.rows))
            elif isinstance(o, Done):
                add_done(P.DONE_COUNT if o.count is not None else 0, o.count or 0)
            elif isinstance(o, Info):
                parts.append(P.message(P.TOK_INFO, o.number, o.state, o.severity, o.text, name,
                                       "", 1, m))
            elif isinstance(o, Env):
                if isinstance(o.new, bytes) or isinstance(o.old, bytes):
                    new = o.new if isinstance(o.new, bytes) else o.new.encode()
                    old = o.old if isinstance(o.old, bytes) else o.old.encode()
                    parts.append(P.envchange_bytes(o.kind, new, old))
                else:
                    parts.append(P.envchange(o.kind, o.new, o.old))
            elif isinstance(o, ReturnStatus):
                parts.append(P.returnstatus(o.value))
            elif isinstance(o, SqlError):
                parts.append(P.message(P.TOK_ERROR, o.number, o.state, o.severity, o.text, name,
                                       "", 1, m))
                add_done(P.DONE_ERROR, 0)
        rpc = done_tok == P.TOK_DONEPROC
        if rpc:
            # statements inside a procedure end with DONEINPROC; DONEPROC closes the call
            failed = any(isinstance(o, SqlError) for o in out)
            add_done(P.DONE_ERROR if failed else 0, 0)
        elif not dones:
            add_done(0, 0)
        # all DONEs but the last say MORE; the last one closes the reply
        for n, (idx, st) in enumerate(dones):
            status = st & 0xFFFF
            last = n == len(dones) - 1
            if not last:
                status |= P.DONE_MORE
            if trancount:
                status |= P.DONE_INXACT
            tok = done_tok if last else (P.TOK_DONEINPROC if rpc else P.TOK_DONE)
            parts[idx] = P.done(status, counts[n], m, tok=tok)
        return b"".join(parts)
