"""The Prometheus collector over real pymssql and the TDS test server: every counter it
exports is counted from the pool's events and equals the pool's own get_stats().

The pool runs a failover partner pair through checkouts, resets of both kinds, a
killed session found by the check, a connection lost in use, a stopped primary
(failover to the partner, connect errors) and a checkout timeout."""

from __future__ import annotations

from typing import Any

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from mssql_pool import ConnectionPool  # noqa: E402
from mssql_pool.errors import PoolTimeout  # noqa: E402
from mssql_pool.events import EventRecorder, life_errors  # noqa: E402
from mssql_pool.metrics import EVENT_COUNTERS, METRICS, register, unregister  # noqa: E402

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0


def counters(registry: CollectorRegistry, pool_name: str) -> dict[str, float]:
    values = {s.name: s.value
              for f in text_string_to_metric_families(generate_latest(registry).decode())
              for s in f.samples if s.labels == {"pool": pool_name}}
    return {spec.key: values[f"mssql_pool_{spec.name}_total"] / spec.scale
            for spec in METRICS if spec.kind == "counter"}


def test_collector_counters_are_the_events_and_agree_with_get_stats(
        tds_server_factory: Any) -> None:
    primary = tds_server_factory(server_name="PRIMARY")
    partner = tds_server_factory(server_name="PARTNER", share_data_with=primary)
    rec = EventRecorder()
    pool = ConnectionPool(primary.url, failover_partners=[f"127.0.0.1:{partner.port}"],
                          min_size=1, max_size=2, timeout=10.0, name="prom", identify=True,
                          validate_after=0.0, listeners=[rec])
    registry = CollectorRegistry()
    collector = register(pool, registry)
    try:
        pool.wait(10)
        with pool.connection() as conn:
            conn.cursor().execute("CREATE TABLE t (x INT)")
            conn.commit()
        with pool.connection() as conn:
            conn.cursor().execute("BEGIN TRANSACTION; INSERT INTO t VALUES (1)")  # rollback
        with pool.connection() as conn:
            conn.cursor().execute("SET LANGUAGE us_english")                   # full reset
        primary.kill_all()                   # the next checkout's check finds it dead
        with pool.connection() as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.fetchall()
            primary.kill_all()               # dies while in use: lost
            with pytest.raises(Exception):  # noqa: B017 - pymssql's disconnect error
                cur.execute("SELECT 2")
        a, b = pool.getconn(), pool.getconn()
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.2)        # both busy: queued, then timed out
        pool.putconn(a)
        pool.putconn(b)
        primary.stop()                       # failover to the partner
        primary.kill_all()
        assert pool.run(lambda conn: conn.cursor().execute("SELECT 1"), idempotent=True) \
            is None
        assert pool.events.flush(WAIT)
        got = counters(registry, "prom")
        stats = pool.get_stats()
        for key in EVENT_COUNTERS:
            if key.endswith("_ms"):
                assert got[key] == pytest.approx(stats[key], abs=1.0), key
            else:
                assert got[key] == stats[key], key
        # and each is the count of its events
        assert got["requests_num"] == len(rec.of("checkout")) > 0
        assert got["requests_timeouts"] == len(
            [e for e in rec.of("checkout_failed") if e.reason == "timeout"]) == 1
        assert got["connections_num"] == len(rec.of("connect")) >= 3
        assert got["checks_failed"] == len(rec.of("check_failed")) >= 1
        assert got["connections_lost"] == len(rec.of("check_failed")) + len(
            [e for e in rec.of("checkin") if e.reason == "lost"]) >= 2
        assert got["resets_rollback"] == len(
            [e for e in rec.of("checkin") if e.reset == "rollback"]) >= 1
        assert got["resets_full"] == len(
            [e for e in rec.of("checkin") if e.reset in ("full", "callback")]) >= 1
        assert got["failovers"] == len(rec.of("failover")) == 1
        assert got["endpoint_switches"] == len(
            [e for e in rec.of("connect") if e.to_endpoint is not None]) == 1
        assert got["usage_ms"] == pytest.approx(
            sum(e.duration or 0.0 for e in rec.of("checkin")) * 1000.0, abs=1.0)
    finally:
        pool.close()
        unregister(pool, registry)
    assert collector.pools == () and [fn for fn, _ in pool.events.listeners] == [rec]
    assert life_errors(rec.events, complete=True) == []
