"""Failover partners, Azure redirects and failover convergence with real pymssql.

Gateways and nodes are TdsServers (``redirect_to`` sends a routing ENVCHANGE); replicas
share their data (``share_data_with``). The TCP proxy shows what reaches the wire.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import pymssql
import pytest
from tcp_proxy import TcpProxy, tcp_proxy_factory  # noqa: F401  (fixture)

from mssql_pool import ConnectionPool
from mssql_pool.endpoints import Endpoint
from mssql_pool.errors import CircuitOpenError, PoolTimeout, RedirectError

pytestmark = pytest.mark.timeout(60)


def _servername(conn: Any) -> str:
    cur = conn.cursor()
    cur.execute("SELECT @@SERVERNAME")
    return str(cur.fetchone()[0])


def node_of(pool: ConnectionPool) -> str:
    """The node a retried, idempotent unit runs on (the first use after a failover may
    meet a connection that died while idle: the unit is re-run, as an application's)."""
    return pool.run(_servername, idempotent=True)


def url_for(server: Any, port: int | None = None) -> str:
    return server.url if port is None else server.url.replace(f":{server.port}/", f":{port}/")


# ----------------------------------------------------------------------------- login


def test_login_carries_tds74_database_and_read_only_intent(
        tds_server: Any, tcp_proxy_factory: Any) -> None:  # noqa: F811
    proxy: TcpProxy = tcp_proxy_factory(tds_server)
    with ConnectionPool(url_for(tds_server, proxy.port), read_only=True, min_size=0,
                        name="ro") as pool:
        assert node_of(pool) == "TDSTEST"
    login = proxy.login_packet(0)
    assert login is not None
    version, = struct.unpack_from("<I", login, 4)
    assert version == 0x74000004                     # TDS 7.4 in the LOGIN7
    assert login[26] & 0x20                          # TypeFlags: fReadOnlyIntent
    off, n = struct.unpack_from("<HH", login, 68)    # ibDatabase, cchDatabase
    assert login[off:off + 2 * n].decode("utf-16-le") == "master"
    with ConnectionPool(url_for(tds_server, proxy.port), min_size=0, name="rw") as pool:
        node_of(pool)
    assert not proxy.login_packet(-1)[26] & 0x20     # type: ignore[index]


# ----------------------------------------------------------------------------- partners


def test_failover_partner_takes_over_and_the_pool_stays_there(
        tds_server_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    primary = tds_server_factory(server_name="PRIMARY")
    partner = tds_server_factory(server_name="PARTNER", share_data_with=primary)
    caplog.set_level("INFO", logger="mssql_pool")
    with ConnectionPool(primary.url, failover_partners=[f"127.0.0.1:{partner.port}"],
                        min_size=2, max_size=4, timeout=10.0, name="fp",
                        endpoint_breaker={"failure_threshold": 1, "reset_timeout": 0.3}) as pool:
        pool.wait(5.0)
        assert node_of(pool) == "PRIMARY"
        primary.stop()                                   # the principal goes away
        start = time.monotonic()
        assert node_of(pool) == "PARTNER"                # old connections fail their check
        assert time.monotonic() - start < 3.0
        assert pool.endpoints is not None
        assert pool.endpoints.current == Endpoint("127.0.0.1", partner.port)
        st = pool.get_stats()
        assert st["endpoint_switches"] == 1 and st["failovers"] == 1
        with pool.connection() as conn:
            assert conn.landing is not None
            assert conn.landing.endpoint == Endpoint("127.0.0.1", partner.port)
            assert conn.landing.node is not None and conn.landing.node.startswith("PARTNER")
        assert any("failover from" in r.getMessage() for r in caplog.records)

        primary.start()                                  # back: no flapping
        time.sleep(0.4)                                  # its probe would be due by now
        pool.drain()
        for _ in range(5):
            assert node_of(pool) == "PARTNER"
        assert primary.stats()["logins"] == 2            # only the first min_size logins

        partner.stop()                                   # the partner fails: back home
        assert node_of(pool) == "PRIMARY"
        assert pool.get_stats()["endpoint_switches"] == 2


def test_dead_primary_costs_one_probe_per_interval(tds_server_factory: Any,
                                                   tcp_proxy_factory: Any) -> None:  # noqa: F811
    partner = tds_server_factory(server_name="PARTNER")
    dead = tcp_proxy_factory(("127.0.0.1", 1))           # accepts, then resets: a dead host
    with ConnectionPool(url_for(partner, dead.port), servers=[
            f"127.0.0.1:{dead.port}", f"127.0.0.1:{partner.port}"],
            min_size=0, max_size=2, timeout=5.0, name="probe",
            endpoint_breaker={"failure_threshold": 1, "reset_timeout": 30.0}) as pool:
        for _ in range(5):
            assert node_of(pool) == "PARTNER"
            pool.drain()
        partner.stop()
        # both down: fast failures within the caller's timeout (PoolTimeout, or the open
        # circuit itself when its next probe is due after the caller's deadline)
        with pytest.raises((PoolTimeout, CircuitOpenError)) as ei:
            pool.getconn(timeout=1.0)
        assert ei.value.last_error is not None
    assert dead.stats()["accepted"] == 1                 # the dead primary: dialled once


# ----------------------------------------------------------------------------- redirects


def test_gateway_redirect_then_node_failover(tds_server_factory: Any) -> None:
    gateway = tds_server_factory(server_name="GATEWAY")
    node_a = tds_server_factory(server_name="NODEA")
    node_b = tds_server_factory(server_name="NODEB", share_data_with=node_a)
    gateway.redirect_to(node_a)
    with ConnectionPool(gateway.url, min_size=2, max_size=4, timeout=10.0, identify=True,
                        name="gw") as pool:
        pool.wait(5.0)
        with pool.connection() as conn:
            landing = conn.landing
            assert landing is not None and landing.redirected is True
            assert landing.endpoint == Endpoint("127.0.0.1", gateway.port)
            assert landing.node == f"NODEA (127.0.0.1:{node_a.port})"
        assert gateway.stats()["logins"] >= 2 and node_a.stats()["logins"] >= 2
        node_a.stop()                                    # the node goes away
        gateway.redirect_to(node_b)                      # the gateway learns the new primary
        start = time.monotonic()
        assert node_of(pool) == "NODEB"
        assert time.monotonic() - start < 3.0
        st = pool.get_stats()
        assert st["redirects"] >= 3 and st["failovers"] >= 1
        assert st["endpoint_switches"] == 0


def test_routed_node_down_is_transient_and_reconnects_through_the_gateway(
        tds_server_factory: Any) -> None:
    gateway = tds_server_factory(server_name="GATEWAY")
    node_a = tds_server_factory(server_name="NODEA")
    node_b = tds_server_factory(server_name="NODEB", share_data_with=node_a)
    gateway.redirect_to(node_a)
    node_a.stop()
    with ConnectionPool(gateway.url, min_size=0, max_size=2, timeout=10.0, name="gw2") as pool:
        with pytest.raises((PoolTimeout, CircuitOpenError)) as ei:   # a dead node: retried
            pool.getconn(timeout=0.5)
        err = ei.value.last_error
        if isinstance(err, CircuitOpenError):            # the circuit opened: its cause
            err = err.last_error
        assert isinstance(err, pymssql.OperationalError)
        assert f"127.0.0.1,{node_a.port}" in str(err)   # FreeTDS names the routed node
        gateway.redirect_to(node_b)
        assert node_of(pool) == "NODEB"


def test_second_hop_raises_redirect_error_at_once(tds_server_factory: Any) -> None:
    gateway = tds_server_factory(server_name="GATEWAY")
    node_a = tds_server_factory(server_name="NODEA")
    node_b = tds_server_factory(server_name="NODEB")
    gateway.redirect_to(node_a)
    node_a.redirect_to(node_b)
    with ConnectionPool(gateway.url, min_size=0, timeout=10.0, name="hops") as pool:
        start = time.monotonic()
        with pytest.raises(RedirectError) as ei:
            pool.getconn()
        assert time.monotonic() - start < 2.0            # not a 10 s PoolTimeout
        assert ei.value.hops == (f"127.0.0.1:{gateway.port}", f"127.0.0.1:{node_a.port}")
        assert "one routing hop" in str(ei.value)
        assert gateway.password not in str(ei.value)
        assert pool.get_stats()["redirect_errors"] >= 1


def test_routing_loop_raises_redirect_error(tds_server_factory: Any) -> None:
    gateway = tds_server_factory(server_name="GATEWAY")
    gateway.redirect_to(gateway)
    with ConnectionPool(gateway.url, min_size=0, timeout=10.0, name="loop") as pool:
        with pytest.raises(RedirectError, match="routing loop"):
            pool.getconn()


# ----------------------------------------------------------------------------- convergence


def test_failover_error_makes_older_connections_suspect(tds_server: Any) -> None:
    with ConnectionPool(tds_server.url, min_size=3, max_size=3, timeout=10.0,
                        validate_after=60.0, name="conv") as pool:
        pool.wait(5.0)
        conns = [pool.getconn() for _ in range(3)]
        for c in conns:
            pool.putconn(c)
        before = pool.get_stats()["checks_run"]
        tds_server.fail_next(40613, match="FAILOVER_PROBE")
        with pool.connection() as conn:
            with pytest.raises(pymssql.OperationalError):
                conn.cursor().execute("SELECT 'FAILOVER_PROBE'")
        # without the failover error these would skip their check (validate_after=60)
        conns = [pool.getconn() for _ in range(3)]
        for c in conns:
            pool.putconn(c)
        assert pool.get_stats()["checks_run"] - before >= 2
