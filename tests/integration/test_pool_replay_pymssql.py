"""With real pymssql: a checkout's first statement that finds its connection dead inside
the bypass window is replayed on a replacement, exactly when that cannot run it twice."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from mssql_pool import ConnectionPool
from mssql_pool.testing import TdsServer

pymssql = pytest.importorskip("pymssql")


def _pool(url: Any, **opts: Any) -> ConnectionPool:
    # A wide window so that slow machines stay inside it.
    pool = ConnectionPool(url, min_size=2, max_size=4, timeout=10, validate_after=30.0, **opts)
    pool.wait(10)
    # Use both so both are "recently returned" (their checks are bypassed).
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)
    return pool


def _create(pool: ConnectionPool, table: str) -> None:
    with pool.connection() as conn:
        conn.cursor().execute(f"CREATE TABLE {table} (a int)")
        conn.commit()


def _count(pool: ConnectionPool, table: str) -> int:
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        return int(cur.fetchone()[0])


def _arm_counter(server: TdsServer, match: str) -> None:
    """Two one-shot no-op faults on ``match``: one left pending means it ran exactly once."""
    server.delay_next(0.0, match=match)
    server.delay_next(0.0, match=match)
    assert server.pending_faults() == 2


def test_kill_all_in_window_is_invisible_and_runs_the_statement_once(
        tds_server: TdsServer) -> None:
    with _pool(tds_server.url) as pool:
        _create(pool, "replay_once")
        assert tds_server.kill_all() >= 2
        _arm_counter(tds_server, "INSERT INTO replay_once")
        with pool.connection() as conn:
            cur = conn.cursor()
            cur.execute("INSERT INTO replay_once VALUES (1)")   # no error reaches us
            assert cur.rowcount == 1
            conn.commit()
        assert tds_server.pending_faults() == 1                 # the server saw it once
        assert _count(pool, "replay_once") == 1
        stats = pool.get_stats()
        assert stats["connections_replaced"] == 1 and stats["connections_lost"] >= 1
        # Every later checkout is clean too (the other stale one was checked and replaced).
        for _ in range(3):
            with pool.connection() as conn:
                cur = conn.cursor()
                cur.execute("SELECT 2")
                assert cur.fetchone()[0] == 2
        assert pool.get_stats()["connections_replaced"] == 1


def test_death_mid_reply_is_not_replayed(tds_server: TdsServer) -> None:
    """20017: the server ran the statement and closed the socket: it may have taken
    effect, so the caller sees the error."""
    with _pool(tds_server.url) as pool:
        _create(pool, "replay_drop")
        _arm_counter(tds_server, "INSERT INTO replay_drop")
        tds_server.drop_next(match="INSERT INTO replay_drop", after_execute=True)
        with pool.connection() as conn:
            with pytest.raises(pymssql.OperationalError) as info:
                conn.cursor().execute("INSERT INTO replay_drop VALUES (1)")
            assert info.value.args[0] == 20017
            assert conn.invalidated
        assert tds_server.pending_faults() == 1                 # ran once, not again
        assert pool.get_stats()["connections_replaced"] == 0


class _ResetAfterReply:
    """A TCP relay in front of a TdsServer. The first client request containing
    ``trigger`` is passed on and run; its reply is swallowed and the client's socket is
    reset (RST): what a middlebox or a crash can do after a statement ran."""

    def __init__(self, server: TdsServer, trigger: str) -> None:
        self.server = server
        self.trigger = trigger.encode("utf-16-le")
        self.fired = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, name="reset-relay", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((self.server.host, self.server.port))
            self.socks += [client, upstream]
            held = threading.Event()
            threading.Thread(target=self._pipe, args=(upstream, client, held), daemon=True,
                             name="reset-relay-up").start()
            threading.Thread(target=self._forward, args=(client, upstream, held), daemon=True,
                             name="reset-relay-down").start()

    def _pipe(self, src: socket.socket, dst: socket.socket, held: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if held.is_set():          # the reply to the trigger: run, never delivered
                    dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    dst.shutdown(socket.SHUT_RD)   # wakes _forward, which closes: RST
                    return
                dst.sendall(data)
        except OSError:
            pass

    def _forward(self, src: socket.socket, dst: socket.socket, held: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if self.trigger in data and not self.fired.is_set():
                    self.fired.set()
                    held.set()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            src.close()
            dst.close()

    def conninfo(self, **extra: Any) -> dict[str, Any]:
        return {"server": "127.0.0.1", "port": self.port, "user": self.server.user,
                "password": self.server.password, "database": self.server.database, **extra}

    def close(self) -> None:
        for s in [self.listener, *self.socks]:   # shutdown wakes threads blocked on them
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def relay(tds_server: TdsServer) -> Iterator[_ResetAfterReply]:
    r = _ResetAfterReply(tds_server, "INSERT INTO replay_rst")
    yield r
    r.close()


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_reset_after_the_statement_ran(tds_server: TdsServer, relay: _ResetAfterReply,
                                       autocommit: bool) -> None:
    """pymssql reports this as 20047 too, the same as a connection that died idle. In a
    transaction (pymssql's default) the server rolls the work back with the session, so
    the replay runs it exactly once; in autocommit mode it was committed: not replayed."""
    with _pool(relay.conninfo(autocommit=autocommit)) as pool:
        _create(pool, "replay_rst")
        with pool.connection() as conn:
            cur = conn.cursor()
            if autocommit:
                with pytest.raises(pymssql.OperationalError) as info:
                    cur.execute("INSERT INTO replay_rst VALUES (1)")
                assert info.value.args[0] == 20047
            else:
                cur.execute("INSERT INTO replay_rst VALUES (1)")
                conn.commit()
        assert relay.fired.is_set()
        assert _count(pool, "replay_rst") == 1
        assert pool.get_stats()["connections_replaced"] == (0 if autocommit else 1)
