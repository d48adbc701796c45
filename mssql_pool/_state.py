"""PoolState: every decision the pool makes, in one place, with no I/O.

A :class:`PoolState` owns the idle stack, the queue of waiting callers, the counts
(open, busy, being opened), the generation, the suspect mark, the connect backoff and
the counters of :mod:`mssql_pool.stats`. Each method is one event (a caller asks, a
connection comes back, a connect ends, a check ends, a maintenance pass, ``drain``,
``close``); it takes the state's lock, decides, and returns what the caller must do
once the lock is released: :class:`Take` a connection (and check it or not), :class:`Wait`
on a :class:`Waiter`, refuse (:class:`Refuse`), close records, start connects
(:class:`Slot`). :class:`~mssql_pool.pool.ConnectionPool` does that I/O; nothing here
touches a socket, a clock or a thread other than its own lock and the waiters' locks.

The rules every method keeps (``tests/unit/test_state_machine.py`` checks them after
every step of random interleavings):

* ``open == idle + busy``, ``size == open + connecting <= max_size``;
* idle connections exist only while nobody waits (a connection coming back, or a new
  one, goes to the oldest waiter first);
* waiters are served in arrival order; a waiter that has gone (timed out, interrupted)
  is out of the queue before the lock is released, so nothing is delivered to it;
* no lost wakeup: while callers wait, the pool is open, a slot is free and no backoff
  pause is running, a connect is in flight;
* one connect at a time grows the pool for waiters (a connection returned meanwhile
  serves them; the new one joins the idle set), and after a failed connect no connect
  starts before the pool-wide backoff pause ends, however many callers wait.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from .connection import ConnectionRecord, ConnState
from .reset import Reset
from .stats import PoolStats

__all__ = [
    "PoolState", "Waiter", "Slot", "Take", "Wait", "Refuse", "Effects",
    "REFUSED_CLOSED", "REFUSED_FULL", "REFUSED_TIMEOUT", "REFUSED_LOGIN", "REFUSED_CIRCUIT",
]

_INF = float("inf")
_IDLE = ConnState.IDLE
_BUSY = ConnState.BUSY
_CLOSED = ConnState.CLOSED

#: Why a request was refused (:class:`Refuse.why`, ``Waiter.refused``).
REFUSED_CLOSED = "closed"        # the pool is (or was, while waiting) closed
REFUSED_FULL = "full"            # max_waiting callers wait already
REFUSED_TIMEOUT = "timeout"      # the caller's deadline came
REFUSED_LOGIN = "login"          # the connect policy gave up (18456, attempts, deadline)
REFUSED_CIRCUIT = "circuit"      # nothing open, the circuit's next probe is past the deadline


class Slot:
    """A reserved place for one connection being opened (returned to start a connect)."""

    __slots__ = ("grow", "started_at")

    def __init__(self, grow: bool, now: float) -> None:
        self.grow = grow            # opened for waiters (else: refill to min_size)
        self.started_at = now

    def __repr__(self) -> str:
        return f"<Slot {'grow' if self.grow else 'refill'}>"


class Waiter:
    """One queued caller. Whoever has something for it completes it under the state lock
    and releases its lock; the caller sleeps on :meth:`sleep`."""

    __slots__ = ("seq", "start", "deadline", "rec", "check", "fresh", "refused", "error",
                 "counted", "waited", "_lock", "_signalled")

    def __init__(self, seq: int, start: float, deadline: float) -> None:
        self.seq = seq              # arrival order
        self.start = start
        self.deadline = deadline
        self.rec: ConnectionRecord | None = None   # delivered connection
        self.check = False          # run the check on it first
        self.fresh = False          # the delivered connection was opened for the queue
        self.refused: str | None = None            # or why it was refused
        self.error: BaseException | None = None    # the connect error behind a refusal
        self.counted = False        # counted in requests_queued
        self.waited = 0.0           # the wait counted in requests_wait_ms (s)
        self._lock = threading.Lock()
        self._lock.acquire()
        self._signalled = False

    @property
    def done(self) -> bool:
        return self.rec is not None or self.refused is not None

    def sleep(self, timeout: float) -> bool:
        """Block until signalled (True) or ``timeout`` seconds pass (False). Called by the
        waiting caller, holding no lock."""
        return self._lock.acquire(True, min(max(timeout, 0.0), threading.TIMEOUT_MAX))

    def _signal(self) -> None:
        # Under the state lock. One release per sleep: a second signal before the
        # waiter ran would release an unlocked lock.
        if not self._signalled:
            self._signalled = True
            self._lock.release()

    def _rearm(self) -> None:
        # Under the state lock, by the waiter itself after it woke.
        if self._signalled:
            self._signalled = False
            self._lock.acquire(False)   # a signal that arrived after the wait timed out

    def __repr__(self) -> str:
        return f"<Waiter {self.seq}{' done' if self.done else ''}>"


class Effects:
    """What the caller must do after the lock is released: close these records (with a
    reason and whether to log at WARNING) and start these connects. (Lists are made on
    the first entry: most decisions have no effects.)"""

    __slots__ = ("close", "connect")

    def __init__(self, close: list[tuple[ConnectionRecord, str, bool]] | None = None,
                 connect: list[Slot] | None = None) -> None:
        self.close: list[tuple[ConnectionRecord, str, bool]] | tuple[()] = close or ()
        self.connect: list[Slot] | tuple[()] = connect or ()

    def add_close(self, rec: ConnectionRecord, reason: str, warn: bool) -> None:
        if not self.close:
            self.close = []
        self.close.append((rec, reason, warn))

    def add_connect(self, slot: Slot) -> None:
        if not self.connect:
            self.connect = []
        self.connect.append(slot)

    def __bool__(self) -> bool:
        return bool(self.close or self.connect)

    def __repr__(self) -> str:
        return f"Effects(close={list(self.close)!r}, connect={list(self.connect)!r})"


@dataclass(slots=True)
class Take:
    """Use ``rec`` (busy now); run the check on it first when ``check``."""

    rec: ConnectionRecord
    check: bool
    effects: Effects
    waiter: Waiter | None = None    # the request's waiter when it was queued
    fresh: bool = False             # opened for the queue (not checked: the login proved it)


@dataclass(slots=True)
class Wait:
    """Start ``effects.connect``, close ``effects.close``, then sleep on ``waiter`` until
    ``until`` (a deadline or the end of the connect backoff) and call
    :meth:`PoolState.wait_over`."""

    waiter: Waiter
    until: float
    effects: Effects


@dataclass(slots=True)
class Refuse:
    """The request ends here: ``why`` is one of the ``REFUSED_*`` strings; ``error`` is
    the connect error behind it (or None)."""

    why: str
    error: BaseException | None
    waited: float
    effects: Effects
    wait: float | None = None       # the wait counted in requests_wait_ms, when it queued


class PoolState:
    """The pool's state and decisions (see the module docstring). Thread-safe: every
    public method takes :attr:`lock` (a plain ``threading.Lock``, never held across I/O).

    ``has_check``: the pool runs a check on checkout; ``validate_after``: the bypass
    window; ``max_waiting``: 0 = no cap; ``circuit_wait``: callers wait for an open
    circuit's probe instead of failing at once when nothing is open (see :meth:`acquire`);
    ``track_busy``: keep the busy set for ``leak_timeout``.
    """

    def __init__(self, *, min_size: int, max_size: int, has_check: bool = True,
                 validate_after: float = 0.5, max_waiting: int = 0,
                 circuit_wait: bool = False, track_busy: bool = False) -> None:
        self.lock = threading.Lock()
        self.min_size = min_size
        self.max_size = max_size
        self.has_check = has_check
        self.validate_after = validate_after
        self.max_waiting = max_waiting
        self.circuit_wait = circuit_wait
        self.idle: deque[ConnectionRecord] = deque()   # LIFO: the right end is the hottest
        self.waiters: deque[Waiter] = deque()          # FIFO by Waiter.seq
        self.n_open = 0          # open connections: idle + busy
        self.n_busy = 0          # lent out, or out for a check or a ping
        self.n_connecting = 0    # connects in flight (reserved slots)
        self.n_growing = 0       # of which opened for waiters (at most one)
        self.closed = False
        self.generation = 0
        self.suspect_before = 0  # records whose .vouched is below this are suspect
        self.ordinal = 0         # last .vouched handed out
        self.seq = 0             # last record number
        self.waiter_seq = 0
        self.next_connect_at = -_INF   # no connect starts before this (backoff)
        self.circuit_until = -_INF     # the open circuit's next probe (when known)
        self.failing_since: float | None = None   # first failed connect of this outage
        self.last_error: BaseException | None = None
        self.busy: set[ConnectionRecord] | None = set() if track_busy else None
        self.stats = PoolStats(has_check)

    # ------------------------------------------------------------------ views
    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return self.n_open + self.n_connecting

    def counts(self) -> tuple[int, int, int, int]:
        """(idle, busy, waiting, size), read under the lock."""
        with self.lock:
            return len(self.idle), self.n_busy, len(self.waiters), self.n_open + self.n_connecting

    # ------------------------------------------------------------------ checkout
    def take_fast(self, now: float, replay_timeout: float | None) -> ConnectionRecord | None:
        """The hot path: the most recently returned idle connection when it needs no
        check (bypass window, not suspect, not expired, not drained); else None.
        ``replay_timeout``: the caller's timeout, kept on the record (health.may_replay)."""
        lock = self.lock
        lock.acquire()               # (try/finally: cheaper than ``with`` on the hot path)
        try:
            idle = self.idle
            if idle:
                rec = idle[-1]
                if (now - rec.returned_at < self.validate_after
                        and rec.vouched >= self.suspect_before and now < rec.expires_at
                        and rec.generation == self.generation):
                    idle.pop()
                    rec.state = _BUSY
                    rec.checkout_at = now
                    rec.replay_timeout = replay_timeout
                    self.n_busy += 1
                    self.stats.fast += 1     # requests_num and checks_skipped (stats.fold)
                    if self.busy is not None:
                        self.busy.add(rec)
                    return rec
            return None
        finally:
            lock.release()

    def acquire(self, now: float, deadline: float, waiter: Waiter | None = None
                ) -> Take | Wait | Refuse:
        """A caller asks for a connection (``waiter``: the caller's waiter, back after a
        failed check: it keeps its place in the queue).

        Take the most recently returned idle connection (stale ones are closed on the
        way); else refuse when closed or the queue is full; else queue and, if allowed,
        start a connect for the queue. Refuses at once with ``REFUSED_CIRCUIT`` only
        when the pool has no connection at all (none idle, busy or being opened), the
        circuit's next probe is due after ``deadline`` and ``circuit_wait`` is off."""
        fx = Effects()
        lock = self.lock
        lock.acquire()
        try:
            st = self.stats
            while self.idle and not self.closed:
                rec = self.idle.pop()
                if now >= rec.expires_at or rec.generation != self.generation:
                    self._drop(rec)
                    st.connections_expired += 1
                    fx.add_close(rec, "past its lifetime" if rec.generation ==
                                 self.generation else "the pool was drained", False)
                    continue
                rec.state = _BUSY
                rec.checkout_at = now
                self.n_busy += 1
                if self.busy is not None:
                    self.busy.add(rec)
                check = self._needs_check(rec, now)
                if not check:
                    st.requests_num += 1
                    if waiter is not None:
                        self._count_wait(waiter, now)
                self._assign(now, fx)
                return Take(rec, check, fx, waiter)
            start = now if waiter is None else waiter.start
            if self.closed:
                st.requests_errors += 1
                return Refuse(REFUSED_CLOSED, None, now - start, fx,
                              None if waiter is None else self._count_wait(waiter, now))
            if waiter is None:
                if self.max_waiting and len(self.waiters) >= self.max_waiting:
                    st.requests_errors += 1
                    return Refuse(REFUSED_FULL, None, 0.0, fx)
                self.waiter_seq += 1
                waiter = Waiter(self.waiter_seq, now, deadline)
            if now >= deadline:
                st.requests_timeouts += 1
                self._assign(now, fx)
                return Refuse(REFUSED_TIMEOUT, self.last_error, now - start, fx,
                              self._count_wait(waiter, now) if waiter.counted else None)
            if (not self.circuit_wait and self.circuit_until > deadline
                    and self.n_open + self.n_connecting == 0):
                st.requests_errors += 1
                return Refuse(REFUSED_CIRCUIT, self.last_error, now - start, fx,
                              self._count_wait(waiter, now) if waiter.counted else None)
            self._enqueue(waiter)
            if not waiter.counted:
                waiter.counted = True
                st.requests_queued += 1
            self._assign(now, fx)
            return Wait(waiter, self._wake_time(waiter, now), fx)
        finally:
            lock.release()

    def wait_over(self, waiter: Waiter, now: float) -> Take | Wait | Refuse:
        """The waiter woke (signalled, or its sleep ran out at ``now``): what it got, a
        refusal (timeout, closed, login refused), or wait again (a backoff pause ended:
        a connect may start now)."""
        fx = Effects()
        lock = self.lock
        lock.acquire()
        try:
            waiter._rearm()
            st = self.stats
            if waiter.rec is not None:
                rec = waiter.rec
                waiter.rec = None
                return Take(rec, waiter.check, fx, waiter, waiter.fresh)
            if waiter.refused is not None:
                return Refuse(waiter.refused, waiter.error, now - waiter.start, fx,
                              waiter.waited)
            if now >= waiter.deadline:
                self._remove(waiter)
                st.requests_timeouts += 1
                self._assign(now, fx)
                return Refuse(REFUSED_TIMEOUT, self.last_error, now - waiter.start, fx,
                              self._count_wait(waiter, now))
            self._assign(now, fx)
            return Wait(waiter, self._wake_time(waiter, now), fx)
        finally:
            lock.release()

    def cancel(self, waiter: Waiter, now: float) -> Effects:
        """The waiting caller was interrupted (KeyboardInterrupt, a gevent timeout...):
        out of the queue; a connection delivered meanwhile goes on to the next waiter."""
        fx = Effects()
        with self.lock:
            waiter._rearm()
            rec = waiter.rec
            st = self.stats
            if rec is not None:
                waiter.rec = None
                if waiter.check:
                    st.checks_run -= 1     # delivered for a check that never ran
                    self._count_wait(waiter, now)
                else:                      # granted, then abandoned unseen (its wait
                    st.requests_num -= 1   # was counted when it was granted)
                    if self.has_check and not waiter.fresh:
                        st.checks_skipped -= 1
                self._give(rec, now)
            elif waiter.refused is None:
                self._remove(waiter)
                self._count_wait(waiter, now)
            else:
                return fx      # already refused and counted
            st.requests_errors += 1
            self._assign(now, fx)
        return fx

    def checked(self, rec: ConnectionRecord, now: float, mark: int,
                error: str | None, waiter: Waiter | None) -> Effects:
        """The check on checkout ended (``mark``: the suspect mark when it began;
        ``error``: why it failed, or None). Passed: the request is granted. Failed: the
        connection is discarded, the caller asks again (keeping its place)."""
        fx = Effects()
        with self.lock:
            st = self.stats
            if error is None:
                if self.suspect_before == mark:
                    self.ordinal += 1
                    rec.vouched = self.ordinal
                rec.returned_at = now
                st.requests_num += 1
                if waiter is not None:
                    self._count_wait(waiter, now)
                return fx
            st.checks_failed += 1
            st.connections_lost += 1
            self._discard_busy(rec, f"its check failed: {error}", fx)
            self._assign(now, fx)
        return fx

    def abandon(self, rec: ConnectionRecord, now: float, reason: str,
                waiter: Waiter | None = None) -> Effects:
        """The caller was interrupted while checking ``rec``: the session's state is
        unknown, so it is discarded; the request ends with an error (its check, which
        never ended, is not counted; ``waiter``: the request's, when it queued)."""
        fx = Effects()
        with self.lock:
            self.stats.requests_errors += 1
            self.stats.checks_run -= 1
            if waiter is not None:
                self._count_wait(waiter, now)
            self._discard_busy(rec, reason, fx)
            self._assign(now, fx)
        return fx

    # ------------------------------------------------------------------ checkin
    def release(self, rec: ConnectionRecord, now: float, reason: str | None = None,
                reset: Reset = Reset.NONE) -> Effects | None:
        """A borrower gave ``rec`` back, reset (``reset``: :class:`~mssql_pool.reset.Reset`:
        none, a rollback, or a full or callback reset) or to be discarded (``reason``).
        Reused: to the oldest waiter, else idle (None returned: nothing to do). Else
        closed, its slot passed on."""
        lock = self.lock
        lock.acquire()
        try:
            st = self.stats
            st.usage_s += now - rec.checkout_at
            if reset == Reset.NONE:
                st.resets_none += 1
            elif reset == Reset.ROLLBACK:
                st.resets_rollback += 1
            else:
                st.resets_full += 1
            if self.busy is not None:
                self.busy.discard(rec)
            if reason is None:
                if now < rec.expires_at and rec.generation == self.generation \
                        and not self.closed:
                    rec.returned_at = now
                    if self.waiters:
                        self._deliver(self.waiters.popleft(), rec, now)
                    else:
                        self.n_busy -= 1
                        rec.state = _IDLE
                        self.idle.append(rec)
                    return None
                warn = False                 # retired, nothing wrong with it
                if self.closed:
                    reason = "the pool is closed"
                else:
                    st.connections_expired += 1
                    reason = ("the pool was drained" if rec.generation != self.generation
                              else "past its lifetime")
            else:
                warn = True
                st.connections_discarded += 1
            fx = Effects()
            self.n_busy -= 1
            self._drop(rec)
            fx.add_close(rec, reason, warn)
            self._assign(now, fx)
            return fx
        finally:
            lock.release()

    def leaked(self, rec: ConnectionRecord, now: float) -> Effects:
        """A proxy was garbage-collected while ``rec`` was lent out: discard it."""
        fx = Effects()
        with self.lock:
            if rec.state is not _BUSY:
                return fx
            if self.busy is not None:
                self.busy.discard(rec)
            self.stats.connections_leaked += 1
            self._discard_busy(rec, "leaked", fx)
            self._assign(now, fx)
        return fx

    # ------------------------------------------------------------------ connecting
    def reserve_refill(self, now: float) -> Slot | None:
        """A slot to open a connection towards ``min_size`` (maintenance, ``wait()``),
        when none is in flight, no backoff pause runs and the pool is open."""
        with self.lock:
            if (self.closed or self.n_open + self.n_connecting >= self.min_size
                    or self.n_connecting or now < self.next_connect_at):
                return None
            self.n_connecting += 1
            return Slot(False, now)

    def number(self, rec: ConnectionRecord) -> int:
        """Give a new record its number (the #n of logs and events) before
        :meth:`connected` hands it out, so its ``connect`` event can come first."""
        with self.lock:
            if not rec.seq:
                self.seq += 1
                rec.seq = self.seq
            return rec.seq

    def connected(self, slot: Slot, rec: ConnectionRecord, now: float) -> Effects:
        """A connect succeeded: number the record (unless :meth:`number` did), give it to
        the oldest waiter (not checked: the login just proved it) or make it idle; the
        backoff ends."""
        fx = Effects()
        with self.lock:
            self._end_connect(slot)
            self.failing_since = None
            self.next_connect_at = self.circuit_until = -_INF
            if not rec.seq:
                self.seq += 1
                rec.seq = self.seq
            self.ordinal += 1
            rec.vouched = self.ordinal
            rec.generation = self.generation
            rec.returned_at = rec.pinged_at = now
            st = self.stats
            st.connections_num += 1
            st.connections_ms += (now - slot.started_at) * 1000.0
            if self.closed:
                rec.state = _CLOSED
                fx.add_close(rec, "the pool is closed", False)
                return fx
            self.n_open += 1
            self.n_busy += 1
            rec.state = _BUSY
            self._give(rec, now, fresh=True)
            self._assign(now, fx)
        return fx

    def connect_failed(self, slot: Slot, now: float, error: BaseException, delay: float,
                       *, give_up: BaseException | None = None,
                       circuit: bool = False) -> Effects:
        """A connect failed. No connect starts for ``delay`` seconds (the pool-wide
        backoff pause; for an open circuit, until its next probe). ``give_up``: the
        connect policy will not retry (18456, attempts or deadline used up): while no
        connection is open, every waiter is refused with it now. ``circuit``: refused by
        an open circuit without a login (not counted in ``connections_errors``)."""
        fx = Effects()
        with self.lock:
            self._end_connect(slot)
            if not circuit:
                self.stats.connections_errors += 1
            self.last_error = error
            if self.failing_since is None:
                self.failing_since = now
            self.next_connect_at = max(self.next_connect_at, now + delay)
            if circuit:
                self.circuit_until = now + delay
            if give_up is not None and self.n_open == 0:
                while self.waiters:
                    self._refuse(self.waiters.popleft(), REFUSED_LOGIN, give_up, now)
                    self.stats.requests_errors += 1
            else:
                for w in self.waiters:   # re-time their sleep to the end of the pause
                    w._signal()
            self._assign(now, fx)
        return fx

    # ------------------------------------------------------------------ maintenance
    def sweep(self, now: float, *, max_idle: float | None, keepalive: float | None,
              leak_timeout: float | None, expire_budget: int
              ) -> tuple[list[tuple[ConnectionRecord, str, bool]], list[ConnectionRecord],
                         list[ConnectionRecord]]:
        """One maintenance pass's decisions: idle connections to close now (past their
        lifetime, at most ``expire_budget``; idle above ``min_size`` for ``max_idle``),
        idle ones due for a keepalive ping (left idle: take them one at a time with
        :meth:`take_for_ping`), and busy ones held past ``leak_timeout`` (each reported
        once per checkout)."""
        fx = Effects()
        to_ping: list[ConnectionRecord] = []
        leaks: list[ConnectionRecord] = []
        with self.lock:
            st = self.stats
            keep: list[ConnectionRecord] = []
            # oldest-returned first, so max_idle reaps the coldest connections
            for rec in sorted(self.idle, key=lambda r: r.returned_at):
                if now >= rec.expires_at and expire_budget > 0:
                    expire_budget -= 1
                    st.connections_expired += 1
                    self._drop(rec)
                    fx.add_close(rec, "past its lifetime", False)
                elif (max_idle is not None and now - rec.returned_at >= max_idle
                      and self.n_open + self.n_connecting > self.min_size):
                    st.connections_idle_closed += 1
                    self._drop(rec)
                    fx.add_close(rec, f"idle for more than {max_idle} s", False)
                else:
                    if keepalive is not None \
                            and now - max(rec.returned_at, rec.pinged_at) >= keepalive:
                        to_ping.append(rec)
                    keep.append(rec)
            if fx.close:
                self.idle.clear()
                self.idle.extend(sorted(keep, key=lambda r: r.returned_at))
                self._assign(now, fx)
            if self.busy and leak_timeout is not None:
                for rec in self.busy:
                    if not rec.leak_warned and now - rec.checkout_at >= leak_timeout:
                        rec.leak_warned = True
                        leaks.append(rec)
        return list(fx.close), to_ping, leaks

    def idle_records(self) -> list[ConnectionRecord]:
        """The idle connections now, oldest-returned first (for ``pool.check()``)."""
        with self.lock:
            return list(self.idle)

    def take_for_ping(self, rec: ConnectionRecord) -> bool:
        """Take ``rec`` out of the idle stack for a keepalive ping or a check, if it is
        still idle (one at a time: the others stay available to callers)."""
        with self.lock:
            if rec.state is not _IDLE or self.closed:
                return False
            try:
                self.idle.remove(rec)
            except ValueError:
                return False
            rec.state = _BUSY
            self.n_busy += 1
            return True

    def pinged(self, rec: ConnectionRecord, now: float, error: str | None, *,
               keepalive: bool, mark: int) -> Effects:
        """A ping (``keepalive``) or a ``pool.check()`` of ``rec`` ended. Passed: back to
        the oldest waiter, or idle at the cold end (its ``returned_at`` unchanged, so
        ``max_idle`` still counts from its last use). Failed: discarded."""
        fx = Effects()
        with self.lock:
            st = self.stats
            if keepalive:
                st.keepalives_run += 1
            else:
                st.checks_run += 1
            if error is None:
                rec.pinged_at = now
                if self.suspect_before == mark:
                    self.ordinal += 1
                    rec.vouched = self.ordinal
                if self.closed:
                    self.n_busy -= 1
                    self._drop(rec)
                    fx.add_close(rec, "the pool is closed", False)
                elif self.waiters:
                    self._deliver(self.waiters.popleft(), rec, now)
                else:
                    self.n_busy -= 1
                    rec.state = _IDLE
                    self.idle.appendleft(rec)
                return fx
            if not keepalive:
                st.checks_failed += 1
            st.connections_lost += 1
            self._discard_busy(rec, ("keepalive failed: " if keepalive else
                                     "its check failed: ") + error, fx)
            self._assign(now, fx)
        return fx

    def reconnect_overdue(self, now: float, reconnect_timeout: float) -> float | None:
        """Seconds connecting has failed when that is ``reconnect_timeout`` or more
        (else None)."""
        with self.lock:
            since = self.failing_since
        if since is None or now - since < reconnect_timeout:
            return None
        return now - since

    # ------------------------------------------------------------------ suspects
    def mark_suspects(self) -> int | None:
        """A disconnect was seen: every connection opened or last checked before now is
        suspect (checked on its next checkout). Returns the open count when the mark
        moved (for the log line), else None."""
        with self.lock:
            if self.ordinal + 1 > self.suspect_before:
                self.suspect_before = self.ordinal + 1
                return self.n_open
        return None

    def count(self, counter: str, n: int = 1) -> None:
        """Add ``n`` to a counter of :mod:`mssql_pool.stats` (for events the pool sees
        outside a decision: a disconnect during use, a replaced connection)."""
        with self.lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + n)

    # ------------------------------------------------------------------ pool-wide
    def drain(self, now: float) -> Effects:
        """Retire every connection: idle ones now, busy ones when they come back."""
        fx = Effects()
        with self.lock:
            self.generation += 1
            while self.idle:
                rec = self.idle.pop()
                self._drop(rec)
                self.stats.connections_expired += 1
                fx.add_close(rec, "drained", False)
            self._assign(now, fx)
        return fx

    def close(self, now: float) -> tuple[bool, Effects]:
        """Close: waiters are refused (``REFUSED_CLOSED``), idle connections close now,
        busy ones as they come back, connects in flight when they end. Returns whether
        it was open."""
        fx = Effects()
        with self.lock:
            was_open = not self.closed
            self.closed = True
            while self.waiters:
                self._refuse(self.waiters.popleft(), REFUSED_CLOSED, None, now)
                self.stats.requests_errors += 1
            while self.idle:
                rec = self.idle.pop()
                self._drop(rec)
                fx.add_close(rec, "the pool is closed", False)
        return was_open, fx

    def forget_after_fork(self) -> list[ConnectionRecord]:
        """In a forked child: start afresh. Returns the parent's idle connections (never
        to be used or closed here); busy ones may still come back and are dropped."""
        self.lock = threading.Lock()
        idle = list(self.idle)
        self.idle.clear()
        self.waiters.clear()
        self.n_open = self.n_busy
        self.n_connecting = self.n_growing = 0
        self.generation += 1
        if self.busy is not None:
            self.busy = set()
        return idle

    def snapshot(self, reset: bool) -> dict[str, int]:
        """The gauges and counters of :mod:`mssql_pool.stats`."""
        with self.lock:
            out = {
                "pool_min": self.min_size,
                "pool_max": self.max_size,
                "pool_size": self.n_open + self.n_connecting,
                "pool_available": len(self.idle),
                "requests_waiting": len(self.waiters),
            }
            out.update(self.stats.snapshot(reset))
        return out

    # ------------------------------------------------------------------ internals
    # (every one below runs under self.lock)
    def _needs_check(self, rec: ConnectionRecord, now: float) -> bool:
        if not self.has_check:
            return False
        if rec.vouched < self.suspect_before or now - rec.returned_at >= self.validate_after:
            self.stats.checks_run += 1
            return True
        self.stats.checks_skipped += 1
        return False

    def _deliver(self, waiter: Waiter, rec: ConnectionRecord, now: float,
                 fresh: bool = False) -> None:
        """Hand busy ``rec`` to ``waiter`` (already out of the queue); a ``fresh`` one is
        not checked (its login just proved it)."""
        rec.checkout_at = now
        if self.busy is not None:
            self.busy.add(rec)
        check = False if fresh else self._needs_check(rec, now)
        waiter.rec = rec
        waiter.check = check
        waiter.fresh = fresh
        if not check:
            self.stats.requests_num += 1
            self._count_wait(waiter, now)
        waiter._signal()

    def _give(self, rec: ConnectionRecord, now: float, fresh: bool = False) -> None:
        """Busy ``rec`` is free: the oldest waiter gets it, else it goes idle."""
        if self.waiters:
            self._deliver(self.waiters.popleft(), rec, now, fresh)
        else:
            self.n_busy -= 1
            rec.state = _IDLE
            self.idle.append(rec)

    def _refuse(self, waiter: Waiter, why: str, error: BaseException | None,
                now: float) -> None:
        waiter.refused = why
        waiter.error = error
        self._count_wait(waiter, now)
        waiter._signal()

    def _count_wait(self, waiter: Waiter, now: float) -> float:
        """Count a queued request's wait, once it ended (granted or refused); returns it
        (the ``wait`` of its event)."""
        waited = waiter.waited = now - waiter.start
        self.stats.requests_wait_ms += waited * 1000.0
        return waited

    def _drop(self, rec: ConnectionRecord) -> None:
        """Forget an open connection (out of the idle stack or the busy count already)."""
        rec.state = _CLOSED
        self.n_open -= 1

    def _discard_busy(self, rec: ConnectionRecord, reason: str, fx: Effects) -> None:
        self.stats.connections_discarded += 1
        self.n_busy -= 1
        if self.busy is not None:
            self.busy.discard(rec)
        self._drop(rec)
        fx.add_close(rec, reason, True)

    def _end_connect(self, slot: Slot) -> None:
        self.n_connecting -= 1
        if slot.grow:
            self.n_growing -= 1

    def _enqueue(self, waiter: Waiter) -> None:
        waiters = self.waiters
        if not waiters or waiters[-1].seq < waiter.seq:
            waiters.append(waiter)
            return
        for i, other in enumerate(waiters):    # back after a failed check: its old place
            if other.seq > waiter.seq:
                waiters.insert(i, waiter)
                return
        waiters.append(waiter)  # pragma: no cover - the loop always finds a place

    def _remove(self, waiter: Waiter) -> None:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass

    def _wake_time(self, waiter: Waiter, now: float) -> float:
        """Sleep until the deadline, or until the backoff pause ends when a connect is
        what the queue waits for (the woken waiter then starts it)."""
        if self.next_connect_at > now and self.n_growing == 0 and not self.closed:
            return min(waiter.deadline, self.next_connect_at)
        return waiter.deadline

    def _assign(self, now: float, fx: Effects) -> None:
        """The one growth decision: callers wait, none of the in-flight connects is for
        them, a slot is free, and no backoff pause runs: open one connection for them.
        (Returned connections reach waiters directly in :meth:`_give`.)"""
        if (self.waiters and not self.closed and self.n_growing == 0
                and len(self.waiters) > self.n_connecting
                and self.n_open + self.n_connecting < self.max_size
                and now >= self.next_connect_at):
            self.n_connecting += 1
            self.n_growing += 1
            fx.add_connect(Slot(True, now))
