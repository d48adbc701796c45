"""Events from the breaker, the endpoints and run_transaction (fakes, a fake clock).

Each test records a bus's events and asserts on the kinds, their order and their fields.
"""

from __future__ import annotations

import threading
from typing import Any

import pymssql
import pytest
from fakedb import FakeClock
from test_endpoints import KW, FakeNet, endpoints, refused
from test_transaction import FakePool, FakeServer, dead, err, fast_policy, work

from mssql_pool.breaker import CircuitBreaker, ConnectGuard
from mssql_pool.classify import ErrorKind
from mssql_pool.errors import CircuitOpenError, CommitUnknownError
from mssql_pool.events import EventBus, EventRecorder
from mssql_pool.transaction import run, run_transaction

WAIT = 10.0


@pytest.fixture
def recorded() -> Any:
    clock = FakeClock()
    bus = EventBus("t", clock=clock)
    rec = EventRecorder()
    bus.add(rec)
    yield clock, bus, rec
    bus.close()


def done(bus: EventBus, rec: EventRecorder) -> list[str]:
    assert bus.flush(WAIT)
    return rec.kinds()


# --------------------------------------------------------------------------- breaker
def test_circuit_opens_half_opens_closes_and_reopens_longer(recorded: Any) -> None:
    clock, bus, rec = recorded
    b = CircuitBreaker(failure_threshold=2, reset_timeout=1.0, max_reset_timeout=4.0,
                       clock=clock, events=bus, endpoint="db1:1433")
    for _ in range(2):
        b.before_attempt()
        b.record_failure(refused("db1"))
    assert done(bus, rec) == ["circuit_opened"]
    opened = rec.events[0]
    assert (opened.endpoint, opened.attempt, opened.delay) == ("db1:1433", 2, 1.0)
    assert opened.error_info is not None and opened.error_info.number == 20009
    with pytest.raises(CircuitOpenError):
        b.before_attempt()               # fast failure: no event
    clock.advance(1.0)
    b.before_attempt()                   # the probe
    b.record_failure(refused("db1"))     # fails: open again, twice as long
    clock.advance(2.0)
    b.before_attempt()
    clock.advance(0.5)
    b.record_success()
    assert done(bus, rec) == ["circuit_opened", "circuit_half_open", "circuit_opened",
                              "circuit_half_open", "circuit_closed"]
    assert rec.events[2].delay == 2.0 and rec.events[2].attempt == 3
    assert rec.events[4].duration == pytest.approx(3.5)   # open since the first opening
    b.record_success()                   # already closed: nothing
    b.reset()
    assert done(bus, rec)[-1] == "circuit_closed" and len(rec.events) == 5


def test_reset_of_an_open_circuit_is_a_close(recorded: Any) -> None:
    clock, bus, rec = recorded
    b = CircuitBreaker(failure_threshold=1, clock=clock, events=bus)
    b.record_failure(refused("x"))
    b.reset()
    assert done(bus, rec) == ["circuit_opened", "circuit_closed"]
    assert rec.events[0].endpoint is None     # the pool-wide circuit names no endpoint


def test_waiting_for_permission_emits_the_half_open(recorded: Any) -> None:
    clock, bus, rec = recorded
    b = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock, events=bus)
    b.record_failure(refused("x"))
    clock.advance(1.0)
    b.wait_for_permission(0.0)
    assert done(bus, rec) == ["circuit_opened", "circuit_half_open"]


def test_transitions_are_emitted_after_the_breaker_lock_is_released(recorded: Any) -> None:
    # A listener called under the breaker's lock from another thread would deadlock on
    # stats(); after close() listeners run inline on the emitting thread, which is where a
    # lock held across the call would show.
    clock, bus, rec = recorded
    bus.close()
    b = CircuitBreaker(failure_threshold=1, clock=clock, events=bus)
    seen: list[str] = []
    bus.add(lambda ev: seen.append(b.stats()["state"]), kinds=["circuit_opened"])
    t = threading.Thread(target=b.record_failure, args=(refused("x"),), daemon=True)
    t.start()
    t.join(WAIT)
    assert not t.is_alive() and seen == ["open"]


def test_connect_guard_binds_the_pool_circuit(recorded: Any) -> None:
    clock, bus, rec = recorded
    guard = ConnectGuard.from_options(circuit_breaker={"failure_threshold": 1}, clock=clock)
    guard.bind_events(bus)
    assert guard.breaker is not None and guard.breaker.events is bus
    guard.breaker.record_failure(refused("x"))
    assert done(bus, rec) == ["circuit_opened"]
    own = EventBus("own")
    mine = ConnectGuard(None, CircuitBreaker(events=own))
    mine.bind_events(bus)                 # a breaker with a bus of its own keeps it
    assert mine.breaker is not None and mine.breaker.events is own
    own.close()


# --------------------------------------------------------------------------- endpoints
def test_failover_to_the_partner_and_the_endpoint_circuits(recorded: Any) -> None:
    clock, bus, rec = recorded
    net = FakeNet()
    eps = endpoints(clock, "partner:1433")
    eps.bind_events(bus)
    eps.connect(KW, net.dial)
    assert done(bus, rec) == []
    net.behaviour["primary"] = refused("primary")
    eps.connect(KW, net.dial)
    assert done(bus, rec) == ["circuit_opened", "failover"]
    opened, failover = rec.events
    assert opened.endpoint == "primary:1433"
    assert (failover.from_endpoint, failover.to_endpoint) == ("primary:1433", "partner:1433")
    assert failover.error_info is not None and failover.error_info.number == 20009
    # sticky on the partner: no more failovers while it works
    clock.advance(60)
    net.behaviour["primary"] = "up"
    eps.connect(KW, net.dial)
    assert done(bus, rec) == ["circuit_opened", "failover"]
    # the partner fails (its circuit opens): back to the primary, whose circuit lets
    # the probe through (half-open) and closes
    net.behaviour["partner"] = refused("partner")
    eps.connect(KW, net.dial)
    assert done(bus, rec)[2:] == ["circuit_opened", "circuit_half_open", "circuit_closed",
                                  "failover"]
    assert [e.endpoint for e in rec.events[2:5]] == ["partner:1433"] + ["primary:1433"] * 2
    assert rec.events[-1].to_endpoint == "primary:1433"
    assert eps.counters()["failovers"] == len(rec.of("failover"))


def test_redirect_and_failover_behind_the_gateway(recorded: Any) -> None:
    clock, bus, rec = recorded
    net = FakeNet()
    eps = endpoints(clock, identify=True)
    eps.bind_events(bus)
    net.nodes["primary"] = ("NODEA", 11001)
    eps.connect(KW, net.dial)
    net.nodes["primary"] = ("NODEB", 11003)
    eps.connect(KW, net.dial)
    assert done(bus, rec) == ["redirect", "failover", "redirect"]
    first, moved, second = rec.events
    assert (first.endpoint, first.node) == ("primary:1433", "NODEA (10.0.0.5:11001)")
    assert moved.from_endpoint == moved.to_endpoint == "primary:1433"
    assert moved.node == "NODEB (10.0.0.5:11003)" and "NODEA" in (moved.reason or "")
    c = eps.counters()
    assert c["redirects"] == len(rec.of("redirect")) and c["failovers"] == 1


def test_breakers_made_by_a_factory_are_bound_too(recorded: Any) -> None:
    clock, bus, rec = recorded
    made: list[CircuitBreaker] = []

    def factory(ep: Any) -> CircuitBreaker:
        made.append(CircuitBreaker(failure_threshold=1, clock=clock))
        return made[-1]

    eps = endpoints(clock, breaker=factory)
    eps.bind_events(bus)
    net = FakeNet()
    net.behaviour["primary"] = refused("primary")
    with pytest.raises(pymssql.OperationalError):
        eps.connect(KW, net.dial)
    assert done(bus, rec) == ["circuit_opened"] and rec.events[0].endpoint == "primary:1433"


# --------------------------------------------------------------------------- transactions
class EventPool(FakePool):
    def __init__(self, bus: EventBus) -> None:
        super().__init__(FakeServer())
        self.events = bus


def test_run_transaction_retry_attempts_carry_classification_and_delay(recorded: Any) -> None:
    clock, bus, rec = recorded
    pool = EventPool(bus)
    pool.server.fault("execute", err(1205), dead())
    assert run_transaction(pool, work, "u1", policy=fast_policy(name="orders")) == "done u1"
    assert done(bus, rec) == ["retry_attempt", "retry_attempt"]
    first, second = rec.events
    assert (first.attempt, second.attempt) == (1, 2)
    assert first.error_info is not None and first.error_info.kind is ErrorKind.DEADLOCK
    assert second.error_info is not None and second.error_info.kind is ErrorKind.DISCONNECT
    assert first.delay == second.delay == 0.01 and first.reason == "orders"


def test_no_retry_attempt_for_the_final_failure(recorded: Any) -> None:
    clock, bus, rec = recorded
    pool = EventPool(bus)
    pool.server.fault("execute", err(1205), err(1205))
    with pytest.raises(Exception, match="gave up"):
        run_transaction(pool, work, "u1", policy=fast_policy(max_attempts=2))
    assert done(bus, rec) == ["retry_attempt"]


def test_lost_commit_is_a_commit_unknown_event(recorded: Any) -> None:
    clock, bus, rec = recorded
    pool = EventPool(bus)
    pool.server.fault("commit_after", dead())
    with pytest.raises(CommitUnknownError):
        run_transaction(pool, work, "u1", policy=fast_policy())
    assert done(bus, rec) == ["commit_unknown"]
    ev = rec.events[0]
    assert ev.reason == "raised" and ev.attempt == 1
    assert ev.error_info is not None and ev.error_info.kind is ErrorKind.DISCONNECT


def test_idempotent_rerun_after_a_lost_commit(recorded: Any) -> None:
    clock, bus, rec = recorded
    pool = EventPool(bus)
    pool.server.fault("commit_before", dead())
    run_transaction(pool, work, "u1", idempotent=True, policy=fast_policy())
    assert done(bus, rec) == ["commit_unknown", "retry_attempt"]
    assert rec.events[0].reason == "rerun"


def test_run_retries_are_events_too(recorded: Any) -> None:
    clock, bus, rec = recorded
    pool = EventPool(bus)
    pool.server.fault("execute", err(1205))
    run(pool, work, "u1", idempotent=True, policy=fast_policy())
    assert done(bus, rec) == ["retry_attempt"]


def test_a_pool_without_events_still_retries() -> None:
    pool = FakePool(FakeServer())
    pool.server.fault("execute", err(1205))
    assert run_transaction(pool, work, "u1", policy=fast_policy()) == "done u1"


def test_identify_reads_the_session_id_for_landing_and_events(recorded: Any) -> None:
    from test_endpoints import FakeRaw

    class WithSpid(FakeRaw):
        def execute(self, sql: str) -> None:
            assert sql.endswith("@@SPID")
            self.rows = [(self.node, "10.0.0.5", self.port, 57)]

    clock, bus, rec = recorded
    eps = endpoints(clock, identify=True)
    eps.bind_events(bus)
    _, landing = eps.connect(KW, lambda **kw: WithSpid("NODEA", 11001))
    assert landing.spid == 57 and landing.node == "NODEA (10.0.0.5:11001)"
    assert done(bus, rec) == ["redirect"] and rec.events[0].spid == 57
    _, landing = eps.connect(KW, lambda **kw: FakeRaw("NODEA", 11001))   # no 4th column
    assert landing.spid is None
