"""The endpoint router: order, stickiness, per-endpoint circuits, throttling holds, redirect errors.

A fake network dials instead of pymssql (no sockets); errors have pymssql's connect shape
``OperationalError((number, b"text"))`` with FreeTDS's real texts, seen against the TDS
test server: ``(host)`` for the address given, ``(host,port)`` for a routed one.
"""

from __future__ import annotations

from typing import Any

import pymssql
import pytest
from fakedb import FakeClock

from mssql_pool.config import make_config
from mssql_pool.endpoints import (
    DEFAULT_ENDPOINT_BREAKER,
    Endpoint,
    EndpointRouter,
    Landing,
    is_failover_error,
    make_endpoints,
    routed_address,
)
from mssql_pool.errors import CircuitOpenError, ConfigError, RedirectError

KW = {"server": "primary", "port": "1433", "user": "u", "password": "pw", "database": "db"}


def refused(host: str, port: int | None = None) -> pymssql.OperationalError:
    where = host if port is None else f"{host},{port}"
    return pymssql.OperationalError((20009, (
        f"DB-Lib error message 20009, severity 9:\nUnable to connect: TDS server is "
        f"unavailable or does not exist ({where})\nNet-Lib error during Connection refused "
        f"(111)\n").encode()))


def bare_routed(host: str, port: int) -> pymssql.OperationalError:
    return pymssql.OperationalError((20002, (
        f"DB-Lib error message 20002, severity 9:\nTDS server connection failed "
        f"({host},{port})\n").encode()))


def server_error(number: int, text: str, severity: int, host: str) -> pymssql.OperationalError:
    return pymssql.OperationalError((number, (
        f"{text}DB-Lib error message 20018, severity {severity}:\nGeneral SQL Server error: "
        f"Check messages from the SQL Server\nDB-Lib error message 20002, severity 9:\n"
        f"TDS server connection failed ({host})\n").encode()))


class FakeRaw:
    def __init__(self, node: str | None, port: int | None = None) -> None:
        self.node = node
        self.port = port
        self.closed = False

    def cursor(self) -> FakeRaw:
        return self

    def execute(self, sql: str) -> None:
        self.rows = [(self.node, "10.0.0.5" if self.port else None, self.port)]

    def fetchone(self) -> Any:
        return self.rows.pop(0) if self.rows else None

    def close(self) -> None:
        pass


class FakeNet:
    """``behaviour[host]`` is "up", an exception, or a list of those (consumed in order)."""

    def __init__(self) -> None:
        self.behaviour: dict[str, Any] = {}
        self.nodes: dict[str, tuple[str | None, int | None]] = {}
        self.dials: list[dict[str, Any]] = []

    def dial(self, **kwargs: Any) -> FakeRaw:
        self.dials.append(kwargs)
        host = kwargs["server"]
        b = self.behaviour.get(host, "up")
        if isinstance(b, list):
            b = b.pop(0) if len(b) > 1 else b[0]
        if isinstance(b, BaseException):
            raise b
        node, port = self.nodes.get(host, (host.upper(), None))
        return FakeRaw(node, port)

    def hosts(self) -> list[str]:
        return [d["server"] for d in self.dials]


def endpoints(clock: FakeClock, *partners: str, **kw: Any) -> EndpointRouter:
    kw.setdefault("breaker", {"failure_threshold": 1, "reset_timeout": 5.0})
    return EndpointRouter([Endpoint.parse(p) for p in partners], primary_from_conninfo=True,
                     clock=clock, name="t", **kw)


def primary_refused_once() -> tuple[EndpointRouter, FakeNet]:
    """A router with the primary alone, whose one login was refused (its circuit opens at
    the first failure), and the network that refused it (still refusing)."""
    net = FakeNet()
    eps = endpoints(FakeClock())
    net.behaviour["primary"] = refused("primary")
    with pytest.raises(pymssql.OperationalError):
        eps.connect(KW, net.dial)
    return eps, net


# ----------------------------------------------------------------------------- Endpoint


@pytest.mark.parametrize(("text", "host", "port"), [
    ("db1", "db1", None), ("db1:1444", "db1", 1444), ("db1,1444", "db1", 1444),
    ("tcp:srv.database.windows.net,1433", "srv.database.windows.net", 1433),
    ("[::1]:1433", "::1", 1433), (("h", 5), "h", 5), ("db1\\inst", "db1\\inst", None),
])
def test_endpoint_parse(text: Any, host: str, port: int | None) -> None:
    ep = Endpoint.parse(text)
    assert (ep.host, ep.port) == (host, port)


@pytest.mark.parametrize("bad", ["", "h:0", "h:99999", "h:x", 42, ("h",), None])
def test_endpoint_parse_rejects_with_parameter_name(bad: Any) -> None:
    with pytest.raises(ConfigError) as ei:
        Endpoint.parse(bad, "failover_partners")
    assert ei.value.parameter == "failover_partners"


def test_endpoint_str_and_apply() -> None:
    ep = Endpoint("h2", 1444)
    assert str(ep) == "h2:1444" and str(Endpoint("::1", 1)) == "[::1]:1"
    out = ep.apply({"server": "h1:1433", "port": "1433", "user": "u"})
    assert out == {"server": "h2", "port": "1444", "user": "u"}
    assert Endpoint.from_kwargs({"server": "h1,1500"}) == Endpoint("h1", 1500)
    assert Endpoint.from_kwargs({"server": "h1", "port": "1501"}) == Endpoint("h1", 1501)
    assert Endpoint("x.database.windows.net").is_azure_gateway
    assert not Endpoint("x.example.com").is_azure_gateway


# ----------------------------------------------------------------------------- order, sticky


def test_primary_first_then_partner_and_sticky_no_flapping() -> None:
    clock, net = FakeClock(), FakeNet()
    eps = endpoints(clock, "partner:1433")
    raw, landing = eps.connect(KW, net.dial)
    assert landing.endpoint == Endpoint("primary", 1433) and eps.current == landing.endpoint
    assert eps.counters()["endpoint_switches"] == 0

    net.behaviour["primary"] = refused("primary")
    raw, landing = eps.connect(KW, net.dial)
    assert landing.endpoint == Endpoint("partner", 1433)
    assert net.hosts()[-2:] == ["primary", "partner"]
    c = eps.counters()
    assert c["endpoint_switches"] == 1 and c["failovers"] == 1

    # the primary is back: the pool stays on the partner while it works
    net.behaviour["primary"] = "up"
    clock.advance(60)
    for _ in range(5):
        _, landing = eps.connect(KW, net.dial)
        assert landing.endpoint == Endpoint("partner", 1433)
    assert net.hosts()[-5:] == ["partner"] * 5

    # the partner fails: back to the primary (its circuit's probe is due by now)
    net.behaviour["partner"] = refused("partner")
    _, landing = eps.connect(KW, net.dial)
    assert landing.endpoint == Endpoint("primary", 1433)
    assert eps.counters()["endpoint_switches"] == 2


def test_dead_primary_is_probed_later_not_on_every_connect() -> None:
    clock, net = FakeClock(), FakeNet()
    eps = endpoints(clock, "partner")
    net.behaviour["primary"] = refused("primary")
    eps.connect(KW, net.dial)                      # primary fails, partner answers
    net.behaviour["partner"] = [refused("partner"), "up"]
    # partner fails: primary's circuit is open (threshold 1), so it is skipped, no login
    with pytest.raises(pymssql.OperationalError):
        eps.connect(KW, net.dial)
    assert net.hosts().count("primary") == 1
    # now both circuits are open: fail fast, no login at all
    with pytest.raises(CircuitOpenError) as ei:
        eps.connect(KW, net.dial)
    assert net.hosts().count("primary") == 1 and net.hosts().count("partner") == 2
    assert ei.value.retry_in > 0
    assert "every endpoint is unavailable" in str(ei.value)
    snap = {s["endpoint"]: s for s in eps.snapshot()}
    assert snap["primary:1433"]["state"] == "open" and snap["partner"]["state"] == "open"
    clock.advance(5.0)                             # probes are due again
    _, landing = eps.connect(KW, net.dial)         # the current one (partner) first: it works
    assert landing.endpoint == Endpoint("partner")
    assert net.hosts().count("primary") == 1
    net.behaviour["partner"] = refused("partner")
    clock.advance(5.0)
    with pytest.raises(pymssql.OperationalError):
        eps.connect(KW, net.dial)
    assert net.hosts()[-2:] == ["partner", "primary"]   # the primary's probe, still dead
    assert eps.counters()["connects_rejected"] >= 2


def test_single_endpoint_open_circuit_fails_fast_naming_it() -> None:
    eps, net = primary_refused_once()
    with pytest.raises(CircuitOpenError) as ei:
        eps.connect(KW, net.dial)
    assert ei.value.endpoint == "primary:1433" and len(net.dials) == 1
    assert isinstance(ei.value.last_error, pymssql.OperationalError)


def test_auth_failure_is_raised_at_once_without_trying_partners() -> None:
    clock, net = FakeClock(), FakeNet()
    eps = endpoints(clock, "partner")
    net.behaviour["primary"] = server_error(
        18456, "Login failed for user 'u'.", 14, "primary")
    with pytest.raises(pymssql.OperationalError):
        eps.connect(KW, net.dial)
    assert net.hosts() == ["primary"]
    assert eps.breaker("primary:1433").state.value == "closed"  # the server did answer


def test_throttled_login_holds_the_endpoint_for_the_hint() -> None:
    clock, net = FakeClock(), FakeNet()
    eps = endpoints(clock, breaker=None)
    net.behaviour["primary"] = [server_error(
        10928, "Resource ID : 1. The request limit for the database is 30 and has been "
        "reached. ", 20, "primary"), "up"]
    with pytest.raises(pymssql.OperationalError):
        eps.connect(KW, net.dial)
    clock.advance(4.9)
    with pytest.raises(CircuitOpenError) as ei:
        eps.connect(KW, net.dial)
    assert len(net.dials) == 1 and 0 < ei.value.retry_in <= 0.1 + 1e-9
    clock.advance(0.2)
    nested: list[BaseException] = []

    def dial(**kw: Any) -> FakeRaw:
        # while the first login after the hold is in flight, others still wait
        try:
            eps.connect(KW, net.dial)
        except CircuitOpenError as exc:
            nested.append(exc)
        return net.dial(**kw)

    eps.connect(KW, dial)
    assert len(net.dials) == 2 and len(nested) == 1
    eps.connect(KW, net.dial)                      # the hold ended with that success
    assert len(net.dials) == 3


# ----------------------------------------------------------------------------- redirects


def test_second_hop_becomes_redirect_error_after_one_confirmation() -> None:
    clock, net = FakeClock(), FakeNet()
    eps = endpoints(clock, breaker=None)
    net.behaviour["primary"] = bare_routed("10.0.0.7", 11002)
    with pytest.raises(RedirectError) as ei:
        eps.connect(KW, net.dial)
    assert len(net.dials) == 2                       # looked twice before saying so
    assert ei.value.hops == ("primary:1433", "10.0.0.7:11002")
    assert "one routing hop" in str(ei.value) and "pw" not in str(ei.value)
    assert isinstance(ei.value.__cause__, pymssql.OperationalError)
    assert eps.counters()["redirect_errors"] == 1


def test_routing_loop_is_named() -> None:
    clock, net = FakeClock(), FakeNet()
    eps = endpoints(clock, breaker=None)
    net.behaviour["primary"] = bare_routed("primary", 1433)
    with pytest.raises(RedirectError, match="routing loop"):
        eps.connect(KW, net.dial)


def test_one_silent_close_after_routing_is_retried_not_reported() -> None:
    clock, net = FakeClock(), FakeNet()
    eps = endpoints(clock, breaker=None)
    net.behaviour["primary"] = [bare_routed("10.0.0.7", 11002), "up"]
    _, landing = eps.connect(KW, net.dial)
    assert len(net.dials) == 2 and landing.endpoint == Endpoint("primary", 1433)


def test_routed_node_gone_stays_a_transient_disconnect() -> None:
    from mssql_pool.classify import classify

    clock, net = FakeClock(), FakeNet()
    eps = endpoints(clock, breaker=None)
    err = refused("10.0.0.7", 11002)
    net.behaviour["primary"] = [err, "up"]
    with pytest.raises(pymssql.OperationalError) as ei:
        eps.connect(KW, net.dial)
    assert ei.value is err and classify(err).retryable
    _, landing = eps.connect(KW, net.dial)           # through the gateway again
    assert net.hosts() == ["primary", "primary"]
    assert eps.snapshot()[0]["redirected"] is True


@pytest.mark.parametrize(("text", "address", "bare"), [
    (b"DB-Lib error message 20002, severity 9:\nTDS server connection failed "
     b"(127.0.0.1,39873)\n", ("127.0.0.1", 39873), True),
    (b"DB-Lib error message 20009, severity 9:\nUnable to connect: TDS server is unavailable "
     b"or does not exist (127.0.0.1,39873)\nNet-Lib error during Connection refused (111)\n",
     ("127.0.0.1", 39873), False),
    (b"DB-Lib error message 20017, severity 9:\nUnexpected EOF from the server "
     b"(127.0.0.1,36507)\nDB-Lib error message 20002, severity 9:\nTDS server connection "
     b"failed (127.0.0.1,36507)\n", ("127.0.0.1", 36507), False),
    (b"Database 'master' on server 'NODEA' is not currently available.DB-Lib error message "
     b"20018, severity 17:\nGeneral SQL Server error: Check messages from the SQL Server\n"
     b"DB-Lib error message 20002, severity 9:\nTDS server connection failed "
     b"(127.0.0.1,44989)\n", ("127.0.0.1", 44989), False),
    (b"DB-Lib error message 20009, severity 9:\nUnable to connect: TDS server is unavailable "
     b"or does not exist (127.0.0.1)\nNet-Lib error during Connection refused (111)\n",
     None, False),
])
def test_routed_address_reads_freetds_texts(text: bytes, address: Any, bare: bool) -> None:
    # after a failed connect pymssql's args[0][0] may be an earlier failure's number (its
    # clr_err() never resets the module globals): only the text counts
    assert routed_address(pymssql.OperationalError((40613, text))) == (address, bare)


# ----------------------------------------------------------------------------- identify


def test_identify_reports_node_redirect_and_failover_behind_the_gateway() -> None:
    clock, net = FakeClock(), FakeNet()
    eps = endpoints(clock, identify=True)
    net.nodes["primary"] = ("NODEA", 11001)
    _, landing = eps.connect(KW, net.dial)
    assert landing == Landing(Endpoint("primary", 1433), "NODEA (10.0.0.5:11001)", True,
                              clock())
    assert str(landing) == "primary:1433 -> NODEA (10.0.0.5:11001)"
    net.nodes["primary"] = ("NODEB", 11003)
    eps.connect(KW, net.dial)
    c = eps.counters()
    assert c["redirects"] == 2 and c["failovers"] == 1 and c["endpoint_switches"] == 0
    assert eps.counters(reset=True)["redirects"] == 2
    assert eps.counters()["redirects"] == 0


def test_identify_falls_back_and_can_be_off_or_custom() -> None:
    clock, net = FakeClock(), FakeNet()
    net.nodes["primary"] = ("SRV", None)
    _, landing = endpoints(clock, identify=True).connect(KW, net.dial)
    assert landing.node == "SRV" and landing.redirected is None
    _, landing = endpoints(clock, identify=False).connect(KW, net.dial)
    assert landing.node is None
    _, landing = endpoints(clock, identify=lambda raw: "custom").connect(KW, net.dial)
    assert landing.node == "custom"
    # auto: off for one plain endpoint, on with partners
    _, landing = endpoints(clock).connect(KW, net.dial)
    assert landing.node is None
    _, landing = endpoints(clock, "partner").connect(KW, net.dial)
    assert landing.node == "SRV"


def test_a_connection_that_dies_while_identifying_is_closed_and_the_next_endpoint_tried() -> None:
    clock, net = FakeClock(), FakeNet()
    eps = endpoints(clock, "partner", identify=True)
    dead = pymssql.OperationalError(20047, b"DB-Lib error message 20047, severity 9:\n"
                                           b"DBPROCESS is dead or not enabled\n")
    closed: list[str] = []

    class DyingCursor:
        def execute(self, sql: str) -> None:
            raise dead

        def close(self) -> None:
            pass

    class Dying(FakeRaw):
        def cursor(self) -> Any:
            return DyingCursor()

        def close(self) -> None:
            closed.append("x")

    def dial(**kw: Any) -> FakeRaw:
        if kw["server"] == "primary":
            net.dials.append(kw)
            return Dying("P")
        return net.dial(**kw)

    _, landing = eps.connect(KW, dial)
    assert closed == ["x"] and landing.endpoint == Endpoint("partner")


# ----------------------------------------------------------------------------- login kwargs


def test_login_carries_tds_74_database_and_read_only_intent() -> None:
    clock, net = FakeClock(), FakeNet()
    kw = {k: v for k, v in KW.items()}
    endpoints(clock, read_only=True).connect(kw, net.dial)
    sent = net.dials[-1]
    assert sent["tds_version"] == "7.4" and sent["read_only"] is True
    assert sent["database"] == "db" and sent["server"] == "primary" and sent["port"] == "1433"
    with pytest.raises(ConfigError) as ei:   # partners: routing needs TDS 7.4
        endpoints(clock, "partner").connect({**KW, "tds_version": "7.1"}, net.dial)
    assert ei.value.parameter == "conninfo.tds_version"
    with pytest.raises(ConfigError):         # read-only routing too
        endpoints(clock, read_only=True).connect({**KW, "tds_version": "7.1"}, net.dial)
    # a single server is spoken to at the version the user chose
    endpoints(clock).connect({**KW, "tds_version": "7.1"}, net.dial)
    assert net.dials[-1]["tds_version"] == "7.1"


# ----------------------------------------------------------------------------- options


def test_pool_options_validated_with_parameter_names() -> None:
    url = "mssql://u:pw@h1:1433/db"
    cfg = make_config(conninfo=url, failover_partners=["h2:1433", ("h3", 1500)])
    assert cfg.failover_partners == (Endpoint("h2", 1433), Endpoint("h3", 1500))
    eps = make_endpoints(cfg)
    assert eps is not None and eps.breaker("h2:1433") is not None  # auto: on with partners
    one = make_endpoints(make_config(conninfo=url))
    assert one is not None and one._breaker_spec == DEFAULT_ENDPOINT_BREAKER  # auto: on
    off = make_endpoints(make_config(conninfo=url, endpoint_breaker=None))
    assert off is not None and off._breaker_spec is None
    cases: list[tuple[dict[str, Any], str]] = [
        ({"failover_partners": "h2"}, "failover_partners"),
        ({"servers": []}, "servers"),
        ({"servers": ["a", "a"]}, "servers"),
        ({"servers": ["a"], "failover_partners": ["b"]}, "failover_partners"),
        ({"read_only": "yes"}, "read_only"),
        ({"identify": 3}, "identify"),
        ({"endpoint_breaker": 5}, "endpoint_breaker"),
        ({"endpoint_breaker": {"failure_threshold": 0}}, "endpoint_breaker.failure_threshold"),
        ({"endpoint_breaker": {"nope": 1}}, "endpoint_breaker"),
    ]
    for opts, param in cases:
        with pytest.raises(ConfigError) as ei:
            make_config(conninfo=url, **opts)
        assert ei.value.parameter == param, opts
    with pytest.raises(ConfigError) as ei:
        make_config(connect=lambda: None, failover_partners=["h2"])
    assert ei.value.parameter == "failover_partners"
    with pytest.raises(ConfigError) as ei:
        make_config(conninfo="mssql://u:pw@h1:1433", failover_partners=["h2"])
    assert ei.value.parameter == "conninfo" and "pw" not in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        make_config(conninfo="mssql://u:pw@h1/db?tds_version=7.2", read_only=True)
    assert ei.value.parameter == "conninfo.tds_version"


def test_forked_child_gets_fresh_locks_and_circuits() -> None:
    import pickle

    from mssql_pool import endpoints as mod

    eps, net = primary_refused_once()
    assert eps.breaker("primary:1433").state.value == "open"  # type: ignore[union-attr]
    eps._lock.acquire()                  # as if another thread held it at fork time
    mod._instances.after_fork()
    assert eps.breaker("primary:1433").state.value == "closed"  # type: ignore[union-attr]
    net.behaviour["primary"] = "up"
    eps.connect(KW, net.dial)            # no deadlock
    err = pickle.loads(pickle.dumps(RedirectError("m", hops=("a:1", "b:2"))))
    assert err.hops == ("a:1", "b:2") and str(err) == "m"
    coe = pickle.loads(pickle.dumps(CircuitOpenError("m", retry_in=1.0, endpoint="a:1")))
    assert coe.endpoint == "a:1" and coe.retry_in == 1.0


def test_failover_class_errors() -> None:
    e40613 = pymssql.OperationalError(40613, b"Database 'db' on server 's' is not currently "
                                             b"available.")
    e1205 = pymssql.OperationalError(1205, b"Transaction (Process ID 5) was deadlocked")
    assert is_failover_error(e40613)
    assert not is_failover_error(e1205)
