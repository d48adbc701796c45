"""Recorded event logs of recovery paths, with real pymssql against the TDS test server.

Each test records every event of a pool from its construction (``listeners=[rec]``),
drives one recovery path (restart, kill, failover partner, Azure redirect, open circuit,
lost COMMIT), and asserts the order of the events that path must produce, e.g.
``reconnect_started -> reconnect_attempt xN -> reconnect_succeeded``; then, after the
pool is closed, that every connection's events form a valid life (``life_errors``).
Waits are bounded waits for events, never sleeps that assume a speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from mssql_pool import ConnectionPool
from mssql_pool.errors import CommitUnknownError
from mssql_pool.events import EventKind, EventRecorder, PoolEvent, life_errors

pytestmark = pytest.mark.timeout(90)

WAIT = 30.0


def subsequence(events: Sequence[PoolEvent], expected: Sequence[str]) -> list[PoolEvent]:
    """The events matching ``expected`` kinds in order (others may come between);
    fails naming the first kind not found."""
    found: list[PoolEvent] = []
    it = iter(events)
    for kind in expected:
        for ev in it:
            if ev.kind == kind:
                found.append(ev)
                break
        else:
            raise AssertionError(f"no {kind!r} after {[e.kind.value for e in found]} in "
                                 f"{[e.kind.value for e in events]}")
    return found


def closed_and_valid(pool: ConnectionPool, rec: EventRecorder) -> None:
    pool.close()
    assert life_errors(rec.events, complete=True) == []


def servername(conn: Any) -> str:
    cur = conn.cursor()
    cur.execute("SELECT @@SERVERNAME")
    return str(cur.fetchone()[0])


def test_restart_reconnect_started_attempts_succeeded(tds_server: Any) -> None:
    rec = EventRecorder()
    pool = ConnectionPool(tds_server.url, min_size=2, max_size=4, name="restart",
                          endpoint_breaker=None, maintenance_interval=0.05,
                          listeners=[rec])
    pool.wait(10)
    with pool.connection() as conn:
        servername(conn)
    tds_server.stop()                       # every session closes; logins are refused
    assert pool.check() == 2                # both idle connections are found dead
    assert rec.wait_for("reconnect_attempt", WAIT, count=2)
    tds_server.start()
    assert rec.wait_for("reconnect_succeeded", WAIT)
    assert pool.events.flush(WAIT)
    path = subsequence(rec.events, ["check_failed", "discard", "reconnect_started",
                                    "reconnect_attempt", "reconnect_attempt", "connect",
                                    "reconnect_succeeded"])
    # (the refill starts as soon as the first one is discarded)
    assert [e.reason for e in rec.of("discard")] == ["check_failed"] * 2
    started, succeeded = path[2], path[-1]
    attempts = rec.of("reconnect_attempt")
    assert [a.attempt for a in attempts] == list(range(2, 2 + len(attempts)))
    assert succeeded.attempt == 1 + len(attempts)          # every failed login counted
    assert succeeded.conn_id == path[-2].conn_id
    assert succeeded.duration is not None and succeeded.duration > 0
    assert started.error_info is not None and started.error_info.kind.value == "disconnect"
    assert rec.of("reconnect_failed", "reconnect_aborted") == []
    closed_and_valid(pool, rec)


def test_killed_sessions_are_checked_discarded_and_replaced(tds_server: Any) -> None:
    rec = EventRecorder()
    pool = ConnectionPool(tds_server.url, min_size=2, max_size=4, name="kill",
                          validate_after=0.0, listeners=[rec])
    pool.wait(10)
    first = {e.conn_id for e in rec.of("connect")}
    assert tds_server.kill_all() == 2
    with pool.connection(timeout=10) as conn:
        assert servername(conn) == "TDSTEST"
    assert pool.events.flush(WAIT)
    for cid in first:   # each killed one: found by its check, discarded, never handed out
        kinds = rec.kinds(cid)
        assert kinds[0] == "connect" and kinds[-2:] == ["check_failed", "discard"]
        assert "checkout" not in kinds[1:]
    new = rec.of("checkout")[-1].conn_id
    kinds = rec.kinds(new)
    assert new not in first and kinds[:2] == ["connect", "checkout"] and kinds[-1] == "checkin"
    assert rec.of("reconnect_started") == []     # connecting never failed
    closed_and_valid(pool, rec)


def test_failover_partner_event_names_both_endpoints(tds_server_factory: Any) -> None:
    primary = tds_server_factory(server_name="PRIMARY")
    partner = tds_server_factory(server_name="PARTNER", share_data_with=primary)
    rec = EventRecorder()
    pool = ConnectionPool(primary.url, failover_partners=[f"127.0.0.1:{partner.port}"],
                          min_size=1, max_size=2, timeout=10.0, name="fp",
                          identify=True, listeners=[rec])
    assert pool.run(servername, idempotent=True) == "PRIMARY"
    primary.stop()
    assert pool.run(servername, idempotent=True) == "PARTNER"
    assert pool.events.flush(WAIT)
    discard, failover, connect = subsequence(rec.events, ["discard", "failover", "connect"])
    assert discard.reason in ("dead", "check_failed")
    assert failover.from_endpoint == f"127.0.0.1:{primary.port}"
    assert failover.to_endpoint == f"127.0.0.1:{partner.port}"
    assert connect.endpoint == failover.to_endpoint and "PARTNER" in (connect.node or "")
    assert isinstance(connect.spid, int)            # identify read @@SPID
    assert {e.spid for e in rec.events if e.conn_id == connect.conn_id} == {connect.spid}
    assert pool.get_stats()["failovers"] == len(rec.of("failover")) == 1
    closed_and_valid(pool, rec)


def test_redirect_then_the_node_moves_behind_the_gateway(tds_server_factory: Any) -> None:
    node_a = tds_server_factory(server_name="NODEA")
    node_b = tds_server_factory(server_name="NODEB", share_data_with=node_a)
    gateway = tds_server_factory(server_name="GATEWAY")
    gateway.redirect_to(node_a)
    rec = EventRecorder()
    pool = ConnectionPool(gateway.url, min_size=1, max_size=2, timeout=10.0, name="gw",
                          identify=True, listeners=[rec])
    assert pool.run(servername, idempotent=True) == "NODEA"
    node_a.stop()
    gateway.redirect_to(node_b)
    assert pool.run(servername, idempotent=True) == "NODEB"
    assert pool.events.flush(WAIT)
    gw = f"127.0.0.1:{gateway.port}"
    first, _, moved, second, connect = subsequence(
        rec.events, ["redirect", "connect", "failover", "redirect", "connect"])
    assert first.endpoint == second.endpoint == gw
    assert "NODEA" in (first.node or "") and "NODEB" in (second.node or "")
    assert moved.from_endpoint == moved.to_endpoint == gw and "NODEA" in (moved.reason or "")
    assert connect.endpoint == gw and "NODEB" in (connect.node or "")
    stats = pool.get_stats()
    assert stats["redirects"] == len(rec.of("redirect"))
    assert stats["failovers"] == len(rec.of("failover"))
    closed_and_valid(pool, rec)


def test_open_circuit_half_open_probe_closes_and_reconnect_failed_alerts(
        tds_server: Any) -> None:
    rec = EventRecorder()
    alerts: list[ConnectionPool] = []
    tds_server.stop()
    pool = ConnectionPool(tds_server.url, min_size=1, max_size=2, name="circuit",
                          maintenance_interval=0.05, reconnect_timeout=0.5,
                          reconnect_failed=alerts.append, listeners=[rec])
    assert rec.wait_for("reconnect_failed", WAIT)
    assert rec.wait_for("circuit_half_open", WAIT)
    tds_server.start()
    assert rec.wait_for("reconnect_succeeded", WAIT)
    assert pool.events.flush(WAIT)
    endpoint = f"127.0.0.1:{tds_server.port}"
    path = subsequence(rec.events, [
        "reconnect_started", "reconnect_attempt", "circuit_opened", "circuit_half_open",
        "circuit_closed", "connect", "reconnect_succeeded"])
    opened, closed = path[2], path[4]
    assert opened.endpoint == closed.endpoint == endpoint
    assert opened.attempt == 3                      # DEFAULT_ENDPOINT_BREAKER threshold
    assert closed.duration is not None and closed.duration > 0
    failed = rec.of("reconnect_failed")
    assert len(failed) == 1 and failed[0].duration is not None and failed[0].duration >= 0.5
    assert alerts == [pool]                         # the option is a listener of that event
    closed_and_valid(pool, rec)


def test_closing_mid_outage_aborts_the_reconnect(tds_server: Any) -> None:
    rec = EventRecorder()
    tds_server.stop()
    pool = ConnectionPool(tds_server.url, min_size=1, name="aborted",
                          maintenance_interval=0.05, listeners=[rec])
    assert rec.wait_for("reconnect_started", WAIT)
    pool.close()
    aborted = rec.of("reconnect_aborted")
    assert len(aborted) == 1 and aborted[0].attempt is not None and aborted[0].attempt >= 1
    assert rec.kinds()[-1] == "reconnect_aborted"
    assert rec.of("reconnect_succeeded") == []


def test_lost_commit_and_a_deadlock_retry(tds_server: Any) -> None:
    rec = EventRecorder()
    pool = ConnectionPool(tds_server.url, min_size=1, max_size=2, name="commit",
                          listeners=[rec])
    with pool.connection() as conn:
        conn.cursor().execute("CREATE TABLE t (id INT)")
        conn.commit()

    def insert(conn: Any, n: int) -> None:
        conn.cursor().execute("INSERT INTO t VALUES (%d)", (n,))

    tds_server.fail_next(1205, match="INSERT INTO t")
    pool.run_transaction(insert, 1)
    tds_server.drop_next(match=r"\bCOMMIT\b", after_execute=True)
    with pytest.raises(CommitUnknownError):
        pool.run_transaction(insert, 2)
    assert pool.events.flush(WAIT)
    retry, checkout, discard, unknown = subsequence(
        rec.events, ["retry_attempt", "checkout", "discard", "commit_unknown"])
    assert retry.attempt == 1 and retry.delay is not None and retry.delay >= 0
    assert retry.error_info is not None and retry.error_info.number == 1205
    assert retry.error_info.kind.value == "deadlock"
    assert discard.conn_id == checkout.conn_id and discard.reason == "dead"
    assert unknown.reason == "raised" and unknown.error_info is not None
    assert unknown.error_info.connection_dead
    closed_and_valid(pool, rec)


def test_every_kind_a_pool_emits_is_documented() -> None:
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    for kind in EventKind:
        assert f"`{kind.value}`" in page, kind
