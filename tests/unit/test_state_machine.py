"""A model of the pool's decision core: random interleavings against the invariants.

A hypothesis ``RuleBasedStateMachine`` plays callers, connectors, checks, keepalive pings,
the maintenance sweep, ``drain`` and ``close`` against one
:class:`~mssql_pool._state.PoolState` under a fake clock, in any order, with spurious
wakeups and interrupts (``BaseException``) anywhere a thread can be interrupted. After
every step it checks what the pool promises:

* ``open == idle + busy``; every connection is in exactly one place (idle, held by a
  caller, out for a check or a ping, delivered to a waiter); ``size <= max_size``;
  the connects in flight are exactly the slots handed out;
* idle connections exist only while nobody waits;
* waiters leave the queue in arrival order (a timed-out one may leave from anywhere),
  never stay past their deadline, and nothing is delivered to one that has gone;
* no lost wakeup: callers wait, the pool is open, a slot is free and no backoff pause
  runs means a connect is in flight; no connect starts during a backoff pause;
* the counters match the events the model saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mssql_pool._state import (
    REFUSED_CIRCUIT,
    REFUSED_CLOSED,
    REFUSED_LOGIN,
    REFUSED_TIMEOUT,
    Effects,
    PoolState,
    Refuse,
    Slot,
    Take,
    Wait,
    Waiter,
)
from mssql_pool.connection import ConnectionRecord, ConnState

MAX_SIZE = 2
RARE = st.sampled_from([False] * 7 + [True])     # close, drain, leaks, interrupts: now and then
MIN_SIZE = 1
LIFETIME = 50.0


@dataclass
class Caller:
    ident: int
    deadline: float
    waiter: Waiter | None = None
    until: float = 0.0
    rec: ConnectionRecord | None = None
    checking: bool = False          # holds rec, check not run yet
    mark: int = 0


@dataclass
class Model:
    granted: int = 0
    timeouts: int = 0
    errors: int = 0
    queued: set[int] = field(default_factory=set)
    opened: int = 0
    connect_errors: int = 0
    discarded: int = 0
    lost: int = 0
    leaked: int = 0
    checks_failed: int = 0


class PoolModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.state = PoolState(min_size=MIN_SIZE, max_size=MAX_SIZE, has_check=True,
                               validate_after=0.2, max_waiting=6)
        self.callers: dict[int, Caller] = {}
        self.next_ident = 0
        self.slots: list[Slot] = []
        self.pinging: list[tuple[ConnectionRecord, int]] = []
        self.closed_recs: list[ConnectionRecord] = []
        self.gone: list[Waiter] = []
        self.model = Model()
        self.no_connect_before = -float("inf")
        self.queue_before: list[Waiter] = []
        self.left_by_delivery: list[Waiter] = []

    # ---------------------------------------------------------------- helpers
    def effects(self, fx: Effects | None) -> None:
        if fx is None:
            return
        for slot in fx.connect:
            assert self.now >= self.no_connect_before, "a connect started during backoff"
            self.slots.append(slot)
        for rec, _reason, _warn in fx.close:
            assert rec.state is ConnState.CLOSED
            assert rec not in self.closed_recs, "a connection closed twice"
            self.closed_recs.append(rec)

    def outcome(self, caller: Caller, result: Take | Wait | Refuse) -> None:
        self.effects(result.effects)
        if isinstance(result, Take):
            assert self.now <= caller.deadline or result.waiter is not None
            caller.rec = result.rec
            caller.checking = result.check
            caller.mark = self.state.suspect_before
            if not result.check:
                self.model.granted += 1
                self.leave(caller)
        elif isinstance(result, Wait):
            assert result.waiter in self.state.waiters
            assert result.until <= caller.deadline
            if caller.waiter is None:
                self.model.queued.add(caller.ident)
            caller.waiter = result.waiter
            caller.until = result.until
        elif caller.waiter is not None and caller.waiter.refused is not None:
            pass        # refused in the queue (closed, login): counted when it happened
        else:
            if result.why == REFUSED_TIMEOUT:
                assert self.now >= caller.deadline, "timed out before its deadline"
                self.model.timeouts += 1
            elif result.why == REFUSED_CIRCUIT:
                assert self.state.n_open + self.state.n_connecting == 0
                self.model.errors += 1
            else:
                self.model.errors += 1
            self.leave(caller)

    def leave(self, caller: Caller) -> None:
        if caller.waiter is not None:
            self.gone.append(caller.waiter)
        if caller.rec is None:
            del self.callers[caller.ident]

    def waiting(self) -> list[Caller]:
        return [c for c in self.callers.values() if c.waiter is not None and c.rec is None]

    def holders(self) -> list[Caller]:
        return [c for c in self.callers.values() if c.rec is not None]

    def pick(self, items: list[Any], i: int) -> Any:
        return items[i % len(items)]

    # ---------------------------------------------------------------- callers
    @rule(timeout=st.sampled_from([0.0, 0.3, 2.0, 30.0]))
    def acquire(self, timeout: float) -> None:
        self.next_ident += 1
        caller = Caller(self.next_ident, self.now + timeout)
        self.callers[caller.ident] = caller
        rec = self.state.take_fast(self.now, timeout)
        if rec is not None:
            caller.rec = rec
            self.model.granted += 1
            return
        self.outcome(caller, self.state.acquire(self.now, caller.deadline))

    @rule()
    def fill(self) -> None:
        """Callers take connections until the pool is full (a shortcut to the states
        where slots are scarce): ask, let the connect succeed, wake."""
        for _ in range(MAX_SIZE):
            s = self.state
            if s.closed or s.n_open + s.n_connecting >= s.max_size or s.waiters \
                    or self.now < s.next_connect_at:
                return
            self.acquire(30.0)
            for _slot in list(self.slots):
                self.connect_ok(0)
            for caller in self.waiting():
                assert caller.waiter is not None
                if caller.waiter._signalled:
                    self.outcome(caller, self.state.wait_over(caller.waiter, self.now))

    @precondition(lambda self: self.state.idle)
    @rule(take_for_check=st.booleans())
    def age_and_ask(self, take_for_check: bool) -> None:
        """Idle connections age past the bypass window, then a caller asks (it gets one
        to check) or ``pool.check()`` takes one first (the caller may have to wait)."""
        self.tick(1.0)
        if take_for_check and self.state.idle:
            self.check_one(0)
        self.acquire(30.0)

    @precondition(lambda self: self.waiting())
    @rule(i=st.integers(0, 50), spurious=st.booleans())
    def wake(self, i: int, spurious: bool) -> None:
        """A waiter runs: it was signalled, its sleep ran out, or (spurious) neither."""
        caller = self.pick(self.waiting(), i)
        w = caller.waiter
        assert w is not None
        if not (spurious or w._signalled or self.now >= caller.until):
            return
        self.outcome(caller, self.state.wait_over(w, self.now))

    @precondition(lambda self: self.waiting())
    @rule(i=st.integers(0, 50), rare=RARE)
    def interrupt_waiter(self, i: int, rare: bool) -> None:
        if not rare:
            return
        caller = self.pick(self.waiting(), i)
        assert caller.waiter is not None
        already = caller.waiter.refused is not None
        self.effects(self.state.cancel(caller.waiter, self.now))
        if not already:   # refused just before the interrupt: counted as that refusal
            self.model.errors += 1
        self.leave(caller)

    @precondition(lambda self: any(c.checking for c in self.holders()))
    @rule(i=st.integers(0, 50), ok=st.booleans(), interrupted=st.booleans())
    def check_done(self, i: int, ok: bool, interrupted: bool) -> None:
        caller = self.pick([c for c in self.holders() if c.checking], i)
        rec = caller.rec
        assert rec is not None
        if interrupted:
            self.effects(self.state.abandon(rec, self.now, "interrupted"))
            self.model.errors += 1
            self.model.discarded += 1
            caller.rec = None
            self.leave(caller)
            return
        fx = self.state.checked(rec, self.now, caller.mark, None if ok else "dead",
                                caller.waiter)
        self.effects(fx)
        caller.checking = False
        if ok:
            self.model.granted += 1
            self.leave(caller)
            return
        self.model.checks_failed += 1
        self.model.lost += 1
        self.model.discarded += 1
        caller.rec = None
        self.outcome(caller, self.state.acquire(self.now, caller.deadline, caller.waiter))

    @precondition(lambda self: any(not c.checking for c in self.holders()))
    @rule(i=st.integers(0, 50), dead=st.booleans(), reset=st.sampled_from([0, 1, 2]))
    def release(self, i: int, dead: bool, reset: int) -> None:
        caller = self.pick([c for c in self.holders() if not c.checking], i)
        rec = caller.rec
        assert rec is not None
        caller.rec = None
        del self.callers[caller.ident]
        if dead:
            self.model.discarded += 1
        self.effects(self.state.release(rec, self.now, "dead" if dead else None, reset))

    @precondition(lambda self: any(not c.checking for c in self.holders()))
    @rule(i=st.integers(0, 50), rare=RARE)
    def leak(self, i: int, rare: bool) -> None:
        if not rare:
            return
        caller = self.pick([c for c in self.holders() if not c.checking], i)
        rec = caller.rec
        assert rec is not None
        caller.rec = None
        del self.callers[caller.ident]
        self.model.leaked += 1
        self.model.discarded += 1
        self.effects(self.state.leaked(rec, self.now))

    # ---------------------------------------------------------------- connecting
    @precondition(lambda self: self.slots)
    @rule(i=st.integers(0, 50))
    def connect_ok(self, i: int) -> None:
        slot = self.pick(self.slots, i)
        self.slots.remove(slot)
        rec = ConnectionRecord(object(), 0, 0, self.now, self.now + LIFETIME, None, 0)
        self.model.opened += 1
        self.no_connect_before = -float("inf")
        self.effects(self.state.connected(slot, rec, self.now))

    @precondition(lambda self: self.slots)
    @rule(i=st.integers(0, 50), delay=st.sampled_from([0.1, 1.0, 5.0]),
          kind=st.sampled_from(["transient", "give_up", "circuit", "interrupted"]))
    def connect_fail(self, i: int, delay: float, kind: str) -> None:
        slot = self.pick(self.slots, i)
        self.slots.remove(slot)
        error: BaseException = KeyboardInterrupt() if kind == "interrupted" \
            else OSError("refused")
        if kind != "circuit":
            self.model.connect_errors += 1
        refused_before = {id(w) for w in self.state.waiters}
        give_up = error if kind == "give_up" else None
        self.effects(self.state.connect_failed(slot, self.now, error, delay, give_up=give_up,
                                               circuit=kind == "circuit"))
        self.no_connect_before = max(self.no_connect_before, self.now + delay)
        if give_up is not None and self.state.n_open == 0:
            assert not self.state.waiters
            for c in self.waiting():
                assert c.waiter is not None
                if id(c.waiter) in refused_before:
                    assert c.waiter.refused == REFUSED_LOGIN
                    self.model.errors += 1

    @rule()
    def refill(self) -> None:
        slot = self.state.reserve_refill(self.now)
        if slot is not None:
            assert self.now >= self.no_connect_before
            self.slots.append(slot)

    # ---------------------------------------------------------------- maintenance
    @rule(keepalive=st.sampled_from([0.5, 0.5, None]), max_idle=st.sampled_from([None, 2.0]))
    def sweep(self, keepalive: float | None, max_idle: float | None) -> None:
        close, to_ping, _leaks = self.state.sweep(self.now, max_idle=max_idle,
                                                  keepalive=keepalive, leak_timeout=None,
                                                  expire_budget=1)
        self.effects(Effects(close=close))
        for rec in to_ping[:1]:          # one at a time, as the maintenance does
            if self.state.take_for_ping(rec):
                self.pinging.append((rec, self.state.suspect_before))

    @precondition(lambda self: self.state.idle)
    @rule(i=st.integers(0, 50))
    def check_one(self, i: int) -> None:
        """``pool.check()`` takes one idle connection out to check it."""
        rec = self.pick(list(self.state.idle), i)
        assert self.state.take_for_ping(rec)
        self.pinging.append((rec, self.state.suspect_before))

    @precondition(lambda self: self.pinging)
    @rule(i=st.integers(0, 50), ok=st.booleans(), keepalive=st.booleans())
    def ping_done(self, i: int, ok: bool, keepalive: bool) -> None:
        rec, mark = self.pick(self.pinging, i)
        self.pinging.remove((rec, mark))
        if not ok:
            self.model.lost += 1
            self.model.discarded += 1
            if not keepalive:
                self.model.checks_failed += 1
        self.effects(self.state.pinged(rec, self.now, None if ok else "dead",
                                       keepalive=keepalive, mark=mark))

    @rule(dt=st.sampled_from([0.05, 0.3, 1.0, 3.0, 20.0]))
    def tick(self, dt: float) -> None:
        """Time passes: signalled waiters have run by then, and every waiter whose sleep
        runs out wakes (in arrival order)."""
        for caller in sorted(self.waiting(), key=lambda c: c.waiter.seq if c.waiter else 0):
            if caller.waiter is not None and caller.rec is None \
                    and caller.ident in self.callers and caller.waiter._signalled:
                self.outcome(caller, self.state.wait_over(caller.waiter, self.now))
        self.now += dt
        for caller in sorted(self.waiting(), key=lambda c: c.waiter.seq if c.waiter else 0):
            if caller.waiter is not None and caller.rec is None \
                    and caller.ident in self.callers and self.now >= caller.until:
                self.outcome(caller, self.state.wait_over(caller.waiter, self.now))

    @rule(rare=RARE)
    def suspects(self, rare: bool) -> None:
        if not rare:
            return
        self.state.mark_suspects()

    @rule(rare=RARE)
    def drain(self, rare: bool) -> None:
        if not rare:
            return
        self.effects(self.state.drain(self.now))

    @rule(rare=RARE)
    def close(self, rare: bool) -> None:
        if not rare:
            return
        queued = [c for c in self.waiting() if c.waiter in self.state.waiters]
        _was_open, fx = self.state.close(self.now)
        self.effects(fx)
        for c in queued:
            assert c.waiter is not None and c.waiter.refused == REFUSED_CLOSED
            self.model.errors += 1

    # ---------------------------------------------------------------- invariants
    @invariant()
    def counts_add_up(self) -> None:
        s = self.state
        assert s.n_open == len(s.idle) + s.n_busy
        assert 0 <= s.n_connecting == len(self.slots)
        assert 0 <= s.n_growing <= 1
        assert s.n_open + s.n_connecting <= s.max_size
        if s.closed:
            assert not s.idle and not s.waiters

    @invariant()
    def every_connection_in_one_place(self) -> None:
        s = self.state
        held = [c.rec for c in self.callers.values() if c.rec is not None]
        delivered = [c.waiter.rec for c in self.waiting()
                     if c.waiter is not None and c.waiter.rec is not None]
        pinging = [rec for rec, _ in self.pinging]
        places = list(s.idle) + held + delivered + pinging
        assert len(places) == len({id(r) for r in places}), "a connection in two places"
        assert len(places) == s.n_open, (len(places), s.n_open)
        assert len(held) + len(delivered) + len(pinging) == s.n_busy
        for rec in s.idle:
            assert rec.state is ConnState.IDLE
        for rec in held + delivered + pinging:
            assert rec.state is ConnState.BUSY
        assert not any(r.state is not ConnState.CLOSED for r in self.closed_recs)

    @invariant()
    def fifo_and_no_one_past_the_deadline(self) -> None:
        s = self.state
        seqs = [w.seq for w in s.waiters]
        assert seqs == sorted(seqs)
        assert not (s.idle and s.waiters), "idle connections while callers wait"
        for w in s.waiters:
            assert not w.done
            assert w.deadline > w.start or w.deadline >= w.start
        for c in self.waiting():
            assert c.until <= c.deadline
        # deliveries and refusals to the queue happen at its head, in arrival order
        served = [w for w in self.queue_before if w not in s.waiters and w.done]
        if served:
            order = [w for w in self.queue_before if w not in s.waiters]
            timed_out_or_gone = [w for w in order if not w.done]
            prefix = [w for w in self.queue_before if w not in timed_out_or_gone]
            assert served == prefix[:len(served)], "a waiter served out of order"
        self.queue_before = list(s.waiters)

    @invariant()
    def nothing_for_the_gone(self) -> None:
        for w in self.gone:
            assert w.rec is None, "a connection delivered to a caller that has gone"
            assert w not in self.state.waiters

    @invariant()
    def no_lost_wakeup(self) -> None:
        s = self.state
        if (s.waiters and not s.closed and s.n_open + s.n_connecting < s.max_size
                and self.now >= s.next_connect_at):
            assert s.n_connecting > 0, "callers wait, a slot is free, nobody connects"
        if s.waiters and not s.closed and s.next_connect_at > self.now and s.n_growing == 0:
            # someone wakes when the pause ends, to start the connect
            assert any(c.until <= s.next_connect_at or c.waiter._signalled
                       for c in self.waiting() if c.waiter in s.waiters), \
                "nobody wakes when the backoff ends"

    @invariant()
    def counters_match_the_events(self) -> None:
        st_ = self.state.stats
        st_.fold()
        m = self.model
        # a delivery without a check is granted when it happens (the caller may still
        # be asleep)
        pending = sum(1 for c in self.waiting() if c.waiter is not None
                      and c.waiter.rec is not None and not c.waiter.check)
        assert st_.requests_num == m.granted + pending
        assert st_.requests_timeouts == m.timeouts
        assert st_.requests_errors == m.errors
        assert st_.requests_queued == len(m.queued)
        assert st_.connections_num == m.opened
        assert st_.connections_errors == m.connect_errors
        assert st_.connections_discarded == m.discarded
        assert st_.connections_lost == m.lost
        assert st_.connections_leaked == m.leaked
        assert st_.checks_failed == m.checks_failed
        assert st_.requests_wait_ms >= -1e-6


PoolModel.TestCase.settings = settings(
    max_examples=600, stateful_step_count=50, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestPoolModel = PoolModel.TestCase
