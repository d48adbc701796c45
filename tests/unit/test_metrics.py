"""The Prometheus collector: names, types, labels, values, scraped as Prometheus would."""

from __future__ import annotations

from typing import Any

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from mssql_pool.errors import ConfigError  # noqa: E402
from mssql_pool.metrics import METRICS, PoolCollector, register, unregister  # noqa: E402


class StubPool:
    """Anything with a name and get_stats() can be exported."""

    def __init__(self, name: str, **stats: Any) -> None:
        self.name = name
        self.stats: dict[str, Any] = {
            "pool_min": 1,
            "pool_max": 10,
            "pool_size": 4,
            "pool_available": 3,
            "requests_waiting": 0,
            "requests_num": 17,
            "requests_wait_ms": 2500,
            "requests_timeouts": 1,
            "connections_num": 5,
            "connections_errors": 2,
            "connections_lost": 1,
            "checks_run": 9,
            "checks_skipped": 8,
            "checks_failed": 1,
            "resets_rollback": 6,
            "resets_full": 2,
            "connections_discarded": 1,
            "connections_expired": 0,
            "connections_idle_closed": 0,
        }
        self.stats.update(stats)

    def get_stats(self) -> dict[str, Any]:
        return dict(self.stats)


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the exposition text back: {(sample name, sorted labels): value}."""
    text = generate_latest(registry).decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def types(registry: CollectorRegistry) -> dict[str, str]:
    text = generate_latest(registry).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_scrape_exposes_gauges_counters_and_states() -> None:
    registry = CollectorRegistry()
    registry.register(PoolCollector(StubPool("orders")))
    got = scrape(registry)
    lab = (("pool", "orders"),)
    assert got[("mssql_pool_size", lab)] == 4
    assert got[("mssql_pool_min_size", lab)] == 1
    assert got[("mssql_pool_max_size", lab)] == 10
    assert got[("mssql_pool_requests_waiting", lab)] == 0
    assert got[("mssql_pool_connections", (("pool", "orders"), ("state", "idle")))] == 3
    assert got[("mssql_pool_connections", (("pool", "orders"), ("state", "used")))] == 1
    assert got[("mssql_pool_requests_total", lab)] == 17
    assert got[("mssql_pool_requests_wait_seconds_total", lab)] == pytest.approx(2.5)
    assert got[("mssql_pool_checks_failed_total", lab)] == 1
    assert got[("mssql_pool_connections_opened_total", lab)] == 5
    kinds = types(registry)
    assert kinds["mssql_pool_size"] == "gauge"
    assert kinds["mssql_pool_requests"] == "counter"
    assert kinds["mssql_pool_connections_lost"] == "counter"


def test_every_documented_key_is_in_the_docstring_table() -> None:
    import mssql_pool.metrics as m

    doc = m.__doc__ or ""
    for spec in METRICS:
        suffix = "_total" if spec.kind == "counter" else ""
        assert f"\n{spec.name}{suffix} " in doc, spec
        assert spec.key in doc, spec


def test_two_pools_share_names_with_their_own_label() -> None:
    registry = CollectorRegistry()
    register(StubPool("a", pool_size=2), registry)
    register(StubPool("b", pool_size=7), registry)
    got = scrape(registry)
    assert got[("mssql_pool_size", (("pool", "a"),))] == 2
    assert got[("mssql_pool_size", (("pool", "b"),))] == 7


def test_values_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    pool = StubPool("live")
    register(pool, registry)
    pool.stats["requests_num"] = 100
    pool.stats["requests_waiting"] = 5
    got = scrape(registry)
    assert got[("mssql_pool_requests_total", (("pool", "live"),))] == 100
    assert got[("mssql_pool_requests_waiting", (("pool", "live"),))] == 5


def test_unknown_keys_become_gauges_and_non_numbers_are_ignored() -> None:
    registry = CollectorRegistry()
    register(StubPool("x", connections_busy=3, server="db.example.com"), registry)
    got = scrape(registry)
    assert got[("mssql_pool_connections_busy", (("pool", "x"),))] == 3
    assert types(registry)["mssql_pool_connections_busy"] == "gauge"
    assert not any("server" in name for name, _ in got)


def test_missing_keys_are_not_exported() -> None:
    registry = CollectorRegistry()
    pool = StubPool("thin")
    pool.stats = {"pool_size": 1}
    register(pool, registry)
    got = scrape(registry)
    assert got == {("mssql_pool_size", (("pool", "thin"),)): 1}


def test_duplicate_pool_names_are_refused() -> None:
    collector = PoolCollector([StubPool("same")])
    with pytest.raises(ConfigError) as info:
        collector.add(StubPool("same"))
    assert info.value.parameter == "pool"
    with pytest.raises(ConfigError):
        collector.add(object())  # type: ignore[arg-type]


def test_bad_namespace_names_the_parameter() -> None:
    with pytest.raises(ConfigError) as info:
        PoolCollector([], namespace="bad-name")
    assert info.value.parameter == "namespace"


def test_custom_namespace_and_unregister() -> None:
    registry = CollectorRegistry()
    pool = StubPool("n")
    register(pool, registry, namespace="app_db")
    assert ("app_db_size", (("pool", "n"),)) in scrape(registry)
    unregister(pool, registry, namespace="app_db")
    assert not any(labels for _, labels in scrape(registry))


def test_pool_over_a_fake_driver_is_scraped() -> None:
    """A real ConnectionPool over the fake driver: gauges follow checkouts, counters
    follow what happens to connections."""
    from fakedb import FakeDB

    import mssql_pool

    db = FakeDB()
    registry = CollectorRegistry()
    lab = (("pool", "fake"),)
    with mssql_pool.ConnectionPool(
        connect=db.connect, min_size=1, max_size=3, name="fake", validate_after=0.0
    ) as pool:
        pool.wait(5.0)
        register(pool, registry)    # counters count from here: the first connect is before
        with pool.connection(timeout=5.0) as conn:
            conn.cursor().execute("SELECT 1")
            got = scrape(registry)
            assert got[("mssql_pool_connections", (("pool", "fake"), ("state", "used")))] == 1
            raw = conn.raw
        db.kill(raw)  # dies while idle: the next checkout's check finds it dead
        with pool.connection(timeout=5.0) as conn:
            conn.cursor().execute("SELECT 1")
        assert pool.events.flush(10)    # counters come from events, counted on a thread
        got = scrape(registry)
        assert got[("mssql_pool_requests_total", lab)] == 2
        assert got[("mssql_pool_max_size", lab)] == 3
        assert got[("mssql_pool_connections", (("pool", "fake"), ("state", "used")))] == 0
        assert got[("mssql_pool_checks_failed_total", lab)] == 1
        assert got[("mssql_pool_connections_lost_total", lab)] == 1
        assert got[("mssql_pool_connections_opened_total", lab)] == 1
        assert pool.get_stats()["connections_num"] == 2


def test_every_key_of_a_real_pool_is_documented() -> None:
    """A key the pool reports but the table does not know would fall back to a gauge."""
    from fakedb import FakeDB

    import mssql_pool
    from mssql_pool.metrics import _BY_KEY, _CONSUMED

    pool = mssql_pool.ConnectionPool(connect=FakeDB().connect, min_size=0, max_size=1)
    try:
        missing = set(pool.get_stats()) - set(_BY_KEY) - _CONSUMED
    finally:
        pool.close()
    assert not missing, f"add these to metrics.METRICS and its table: {sorted(missing)}"


def test_event_metrics_come_from_the_pools_events() -> None:
    """events_total, discards_total, reconnecting and reconnect_failed_total are counted
    by the collector's listener on the pool; they agree with the stats of the same
    decisions."""
    from fakedb import FakeClock, FakeDB

    import mssql_pool

    db, clock = FakeDB(), FakeClock()
    registry = CollectorRegistry()
    lab = (("pool", "ev"),)
    pool = mssql_pool.ConnectionPool(
        connect=db.connect, min_size=1, max_size=3, name="ev", validate_after=0.0,
        background=False, clock=clock, sleep=clock.sleep, connect_policy=None,
        reconnect_timeout=1.0)
    try:
        collector = register(pool, registry)
        with pool.connection(timeout=5.0) as conn:
            raw = conn.raw
        db.kill(raw)
        with pool.connection(timeout=5.0):
            pass
        db.shutdown()
        for conn in db.open_connections():
            db.kill(conn)
        pool.check()
        for _ in range(6):
            pool.run_maintenance()
            clock.advance(0.5)
        assert pool.events.flush(10)
        got = scrape(registry)
        stats = pool.get_stats()

        def kind(k: str) -> float:
            return got[("mssql_pool_events_total", (("kind", k), ("pool", "ev")))]

        assert kind("checkout") == stats["requests_num"] == 2
        assert kind("connect") == stats["connections_num"]
        assert kind("connect_failed") == stats["connections_errors"] > 0
        assert kind("check_failed") == stats["checks_failed"] == 2
        assert kind("failover") == 0                         # every kind, from zero
        assert got[("mssql_pool_discards_total", (("pool", "ev"), ("reason", "check_failed")))] \
            == 2
        assert got[("mssql_pool_reconnecting", lab)] == 1
        assert got[("mssql_pool_reconnect_failed_total", lab)] == 1
        db.restart()
        clock.advance(10)
        pool.run_maintenance()
        assert pool.events.flush(10)
        assert scrape(registry)[("mssql_pool_reconnecting", lab)] == 0
        unregister(pool, registry)
        assert collector.pools == () and pool.events.listeners == ()
    finally:
        pool.close()
