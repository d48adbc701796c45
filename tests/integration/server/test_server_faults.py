"""Faults of the TDS test server, observed from real pymssql: the error numbers and shapes a
client sees from a real SQL Server (a killed session's 596 then a dead connection, 20047 on
an idle connection's next use after a restart, refused connects, dropped replies)."""

from __future__ import annotations

import time

import pymssql
import pytest
from tds_client import Background, committed, connect, wait_until

from mssql_pool.testing import TdsServer

pytestmark = pytest.mark.timeout(60)
def test_kill_mid_request_gives_596_and_a_dead_connection(tds_server: TdsServer) -> None:
    conn = connect(tds_server)
    cur = conn.cursor()
    cur.execute("SELECT @@SPID")
    spid = cur.fetchone()[0]
    stmt = Background(lambda: cur.execute("WAITFOR DELAY '00:00:10'"))
    assert wait_until(lambda: any(s["in_request"] for s in tds_server.sessions()))
    assert tds_server.kill(spid)
    stmt.join(10)
    error = stmt.error
    assert isinstance(error, pymssql.OperationalError)
    assert "596" in str(error) or error.args[0] == 596
    assert "kill state" in str(error)
    with pytest.raises((pymssql.Error, pymssql._mssql.MSSQLDriverException)):
        cur.execute("SELECT 1")
    assert wait_until(lambda: tds_server.stats()["sessions_open"] == 0)


def test_kill_idle_session_closes_it(tds_server: TdsServer) -> None:
    conn = connect(tds_server)
    spid = tds_server.sessions()[0]["spid"]
    assert tds_server.kill_all() == 1
    assert wait_until(lambda: not tds_server.sessions())
    with pytest.raises(pymssql.OperationalError) as info:
        conn.cursor().execute("SELECT 1")
    assert "20047" in str(info.value) or "20017" in str(info.value) or "20006" in str(info.value)
    assert tds_server.stats()["kills"] == 1
    assert not tds_server.kill(spid)


def test_fail_next_deadlock_rolls_back_the_transaction(tds_server: TdsServer) -> None:
    conn, cur = committed(tds_server, "CREATE TABLE acct (id INT PRIMARY KEY, bal INT)",
                          "INSERT INTO acct VALUES (1, 100)")
    cur.execute("UPDATE acct SET bal = 50 WHERE id = 1")
    tds_server.fail_next(1205, match=r"UPDATE", times=1)
    with pytest.raises(pymssql.OperationalError) as info:
        cur.execute("UPDATE acct SET bal = 0 WHERE id = 1")
    assert info.value.args[0] == 1205
    assert "deadlock victim" in str(info.value)
    assert info.value.__context__.severity == 13
    cur.execute("SELECT @@TRANCOUNT")
    assert cur.fetchone()[0] == 0
    cur.execute("SELECT bal FROM acct WHERE id = 1")
    assert cur.fetchone()[0] == 100  # the first UPDATE was rolled back with the victim
    # times=1: the next UPDATE runs
    cur.execute("UPDATE acct SET bal = 7 WHERE id = 1")
    assert cur.rowcount == 1


def test_fail_next_custom_severity_and_message(tds_server: TdsServer) -> None:
    conn = connect(tds_server)
    cur = conn.cursor()
    tds_server.fail_next(1222, match=r"^SELECT 42", times=2, message="custom text")
    for _ in range(2):
        with pytest.raises(pymssql.OperationalError) as info:
            cur.execute("SELECT 42")
        assert info.value.args[0] == 1222
        assert b"custom text" in info.value.args[1]
    cur.execute("SELECT 42")
    assert cur.fetchone()[0] == 42


def test_fail_next_severity_20_closes_the_connection(tds_server: TdsServer) -> None:
    conn = connect(tds_server)
    cur = conn.cursor()
    tds_server.fail_next(40501, match="SELECT")
    with pytest.raises(pymssql.OperationalError) as info:
        cur.execute("SELECT 1")
    assert "40501" in str(info.value) or info.value.args[0] == 40501
    assert "The service is currently busy" in str(info.value)
    assert wait_until(lambda: tds_server.stats()["sessions_open"] == 0)


@pytest.mark.parametrize("after_execute,rows", [(True, 1), (False, 0)],
                         ids=["after_commit_keeps_the_row", "before_execute_loses_the_row"])
def test_drop_next(tds_server: TdsServer, after_execute: bool, rows: int) -> None:
    """A COMMIT whose reply is dropped after it ran is committed although the client saw a
    dead connection; one dropped before it ran is not."""
    conn, cur = committed(tds_server, "CREATE TABLE orders (id INT PRIMARY KEY)")
    cur.execute("INSERT INTO orders VALUES (1)")
    tds_server.drop_next(match=r"\bCOMMIT\b", after_execute=after_execute)
    with pytest.raises(pymssql.OperationalError) as info:
        conn.commit()
    text = str(info.value)
    assert "20017" in text or "20047" in text or "20004" in text, text
    other = connect(tds_server)
    c2 = other.cursor()
    c2.execute("SELECT COUNT(*) FROM orders")
    assert c2.fetchone()[0] == rows


def test_delay_next_with_client_timeout_gives_20003(tds_server: TdsServer) -> None:
    conn = connect(tds_server, timeout=1)
    cur = conn.cursor()
    tds_server.delay_next(5.0, match=r"SELECT 7")
    start = time.monotonic()
    with pytest.raises(pymssql.OperationalError) as info:
        cur.execute("SELECT 7")
    assert time.monotonic() - start < 4
    assert "20003" in str(info.value)
    conn2 = connect(tds_server, timeout=0)
    c2 = conn2.cursor()
    c2.execute("SELECT 8")
    assert c2.fetchone()[0] == 8


def test_attention_cuts_a_delayed_reply_short(tds_server: TdsServer, raw_tds_login) -> None:
    from mssql_pool.testing import _protocol as P

    s = raw_tds_login(tds_server)
    try:
        tds_server.delay_next(30.0, match="SELECT")
        header = b"\x16\x00\x00\x00\x12\x00\x00\x00\x02\x00" + b"\x00" * 8 + b"\x01\x00\x00\x00"
        s.sendall(P.frame(P.PKT_SQL_BATCH, header + "SELECT 1".encode("utf-16-le"), 4096, 0))
        time.sleep(0.1)
        start = time.monotonic()
        s.sendall(P.frame(P.PKT_ATTENTION, b"", 4096, 0))
        ptype, _st, payload = P.read_message(s)
        assert time.monotonic() - start < 2
        assert payload[0] == P.TOK_DONE and payload[1] & P.DONE_ATTN
        # an attention after a complete reply is answered too
        s.sendall(P.frame(P.PKT_ATTENTION, b"", 4096, 0))
        ptype, _st, payload = P.read_message(s)
        assert payload[0] == P.TOK_DONE and payload[1] & P.DONE_ATTN
        assert tds_server.stats()["attentions"] == 2
    finally:
        s.close()


def test_blackhole_times_out_then_heal(tds_server: TdsServer) -> None:
    conn = connect(tds_server, timeout=1)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    tds_server.blackhole()
    with pytest.raises(pymssql.OperationalError) as info:
        cur.execute("SELECT 2")
    assert "20003" in str(info.value)
    with pytest.raises(pymssql.OperationalError):
        connect(tds_server, login_timeout=1)
    tds_server.heal()
    conn2 = connect(tds_server, login_timeout=5, timeout=5)
    c2 = conn2.cursor()
    c2.execute("SELECT 3")
    assert c2.fetchone()[0] == 3


def test_restart_keeps_data_and_drops_sessions(tds_server: TdsServer) -> None:
    conn, cur = committed(tds_server, "CREATE TABLE kept (id INT)", "INSERT INTO kept VALUES (5)")
    port = tds_server.port
    tds_server.stop()
    assert tds_server.sessions() == []
    with pytest.raises(pymssql.OperationalError):
        cur.execute("SELECT 1")
    with pytest.raises(pymssql.OperationalError) as info:
        connect(tds_server, login_timeout=2)
    assert "20009" in str(info.value) or "20002" in str(info.value)
    tds_server.start()
    assert tds_server.port == port
    c2 = connect(tds_server).cursor()
    c2.execute("SELECT id FROM kept")
    assert c2.fetchall() == [(5,)]


def test_redirect_routes_the_login_to_the_other_server(tds_server_factory) -> None:
    node = tds_server_factory(users={"sa": "Secret123!"})
    gateway = tds_server_factory(users={"sa": "Secret123!"})
    gateway.redirect_to(node)
    conn = connect(gateway)
    cur = conn.cursor()
    cur.execute("SELECT @@SPID")
    spid = cur.fetchone()[0]
    assert [s["spid"] for s in node.sessions()] == [spid]
    assert wait_until(lambda: gateway.sessions() == [])
    assert gateway.stats()["logins"] == 1
    gateway.redirect_to(None)
    c2 = connect(gateway).cursor()
    c2.execute("SELECT 1")
    assert len(gateway.sessions()) == 1


def test_max_sessions_gives_10928(tds_server_factory, login_in_subprocess) -> None:
    server = tds_server_factory(max_sessions=2)
    a, b = connect(server), connect(server)
    res = login_in_subprocess(server)
    assert res["number"] == 10928 and "session limit" in res["text"]
    a.close()
    assert wait_until(lambda: server.stats()["sessions_open"] == 1)
    c = connect(server)
    c.cursor().execute("SELECT 1")
    b.close()
    c.close()


def test_latency_is_added_to_each_reply(tds_server: TdsServer) -> None:
    conn = connect(tds_server)
    cur = conn.cursor()
    tds_server.latency = 0.05
    start = time.monotonic()
    for _ in range(4):
        cur.execute("SELECT 1")
        cur.fetchall()
    assert time.monotonic() - start >= 0.2
    tds_server.latency = 0.0
    tds_server.login_latency = 0.2
    start = time.monotonic()
    connect(tds_server).close()
    assert time.monotonic() - start >= 0.2


def test_fail_logins_is_counted_and_runs_out(tds_server: TdsServer,
                                            login_in_subprocess) -> None:
    tds_server.fail_logins(40613, times=2)
    for _ in range(2):
        assert login_in_subprocess(tds_server)["number"] == 40613
    connect(tds_server).close()
    st = tds_server.stats()
    assert st["logins_failed"] == 2 and st["logins"] == 1


def test_bad_arguments_name_the_parameter(tds_server: TdsServer) -> None:
    from mssql_pool.errors import ConfigError

    cases = [
        (lambda: tds_server.fail_next(1205, times=0), "times"),
        (lambda: tds_server.fail_next("1205"), "number"),  # type: ignore[arg-type]
        (lambda: tds_server.fail_next(1205, match="(unclosed"), "match"),
        (lambda: tds_server.delay_next(-1.0), "seconds"),
        (lambda: setattr(tds_server, "latency", -0.5), "latency"),
        (lambda: setattr(tds_server, "login_latency", "slow"), "login_latency"),
        (lambda: TdsServer(users={}), "users"),
        (lambda: TdsServer(port=70000), "port"),
    ]
    for call, parameter in cases:
        with pytest.raises(ConfigError) as info:
            call()
        assert info.value.parameter == parameter
        assert isinstance(info.value, ValueError)
    assert tds_server.pending_faults() == 0


def test_pymssql_cancel_sends_attention_and_the_connection_lives(tds_server: TdsServer) -> None:
    conn = connect(tds_server)
    cur = conn.cursor()
    start = time.monotonic()
    stmt = Background(lambda: cur.execute("WAITFOR DELAY '00:00:10'; SELECT 1"))
    assert wait_until(lambda: any(s["in_request"] for s in tds_server.sessions()))
    conn._conn.cancel()
    stmt.join(10)
    assert time.monotonic() - start < 5
    assert isinstance(stmt.error, pymssql.OperationalError)
    assert tds_server.stats()["attentions"] == 1
    cur.execute("SELECT 5")
    assert cur.fetchone()[0] == 5
