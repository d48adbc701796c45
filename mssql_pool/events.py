"""Pool events: one listener API for every lifecycle and recovery event.

``pool.add_listener(fn, kinds=None)`` (or ``listeners=[...]`` at construction) makes
``fn(event)`` receive a frozen :class:`PoolEvent` for every event of the given kinds
(all kinds when ``kinds`` is None). The kinds are the members of :class:`EventKind`;
each one's docstring says when it fires and which fields it carries (every other field
is None). ``docs/events.md`` lists them as a table.

How listeners are run (:class:`EventBus`):

* **Never under a lock, never on the pool's path.** Emitting an event appends it to a
  bounded queue per listener and returns; each listener has its own named daemon thread
  (``mssql_pool-<pool>-listener-<n>``), started at its first event, that takes events
  off its queue in order and calls it. A checkout never waits for a listener, and a slow
  listener delays only itself: the others, and the pool, go on.
* **Bounded.** A listener that falls ``queue_size`` events behind (default 10 000) loses
  the newest ones: they are counted in :attr:`EventBus.dropped` and a WARNING says so once
  per overflow; nothing blocks.
* **An exception in a listener is logged** (``mssql_pool.events``, with the traceback)
  **and swallowed**; the listener keeps receiving events.
* **The emitter's context goes along.** Each event carries a copy of the emitting
  thread's :mod:`contextvars` context and the listener runs inside it, so a tracing
  listener sees the caller's current span (see :mod:`mssql_pool.otel`).
* ``remove_listener(fn)`` takes effect at once: events still queued for ``fn`` are
  dropped, and it is safe to call from inside ``fn`` itself. ``flush(timeout)`` waits
  until every queued event has been delivered (tests, a report at the end of a run).
* ``close(timeout)`` (from ``pool.close()``) delivers what is queued, then stops and joins
  the threads. Events that happen after that (a connection returned to a closed pool, a
  connect that was in flight) are delivered on the emitting thread, exceptions swallowed.
* A pool dropped without ``close()`` takes its bus along, and each listener thread ends
  within a second of that (a listener that refers to the pool keeps it alive, though).

Times: :attr:`PoolEvent.time` is the pool's clock (monotonic; the injected clock in
tests), :attr:`PoolEvent.wall` is ``time.time()`` (for exporters and log lines).

:func:`life_errors` checks that a recorded log gives every connection a valid life
(connect first, nothing after its discard, checkout only while idle...);
:class:`EventRecorder` is a listener that records events for tests.
"""

from __future__ import annotations

import contextvars
import enum
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from ._fork import ForkRegistry
from .classify import ErrorInfo, classify
from .errors import ConfigError

__all__ = [
    "EventKind",
    "PoolEvent",
    "EventBus",
    "EventRecorder",
    "Listener",
    "DISCARD_REASONS",
    "life_errors",
    "error_info",
    "discard_reason",
    "listener_pairs",
]

logger = logging.getLogger("mssql_pool.events")

T = TypeVar("T")


class EventKind(str, enum.Enum):
    """What happened. A ``str`` enum: ``event.kind == "checkout"`` works."""

    CONNECT = "connect"
    """A new connection is open (login and ``configure`` done). ``conn_id``, ``endpoint``,
    ``node`` and ``spid`` (where it landed, when identified), ``duration`` (seconds the
    connect took); ``to_endpoint`` (and ``from_endpoint``, the previous one) when new
    connections go first to this endpoint from now on."""

    CONNECT_FAILED = "connect_failed"
    """A login (or ``configure``) failed, or an open circuit refused it without a login.
    ``error_info``, ``endpoint`` (when known), ``duration``, ``delay`` (the pool's pause
    before its next connect, when it decided one)."""

    CHECKOUT = "checkout"
    """A caller got a connection. ``conn_id``, ``duration`` (seconds since the request,
    0.0 on the fast path), ``reason``: ``"checked"`` (a check ran first), ``"skipped"``
    (the check was bypassed: ``validate_after``), ``"new"`` (opened for this caller: the
    login proved it), None (the pool has no check); ``wait`` (seconds queued, when the
    caller had to queue, else None)."""

    CHECKOUT_FAILED = "checkout_failed"
    """A checkout ended without a connection. ``reason``: ``"timeout"`` (``PoolTimeout``
    at its timeout), ``"full"`` (``TooManyRequests``), ``"closed"`` (``PoolClosed``),
    ``"login"`` (the connect policy gave up), ``"circuit"`` (``PoolCircuitOpen``),
    ``"interrupted"`` (the caller was interrupted while waiting or checking),
    ``"cancelled"`` (an asyncio task cancelled in the async pool's queue); ``duration``
    (seconds since the request), ``wait`` (seconds queued, when it queued)."""

    QUEUE_WAIT = "queue_wait"
    """A task of an :class:`~mssql_pool.AsyncConnectionPool` waited for its turn in the
    pool's asyncio queue and got it (its checkout follows, with its own events).
    ``wait`` (seconds queued). A wait there that ends otherwise is a
    ``checkout_failed``."""

    CHECKIN = "checkin"
    """A connection came back (every return fires one). ``conn_id``, ``duration``
    (seconds it was held), ``reset`` (the reset it needed: ``"none"``, ``"rollback"``,
    ``"full"``, ``"callback"``), ``reason`` None when it may be reused, else why it is
    discarded: ``"lost"`` (found dead in use), ``"invalidated"`` (``invalidate()``),
    ``"reset_failed"`` (a ``discard`` follows then)."""

    CHECK = "check"
    """A check (on checkout, or ``pool.check()``) passed. ``conn_id``."""

    CHECK_FAILED = "check_failed"
    """The check on checkout (or ``pool.check()``) failed; a ``discard`` follows.
    ``conn_id``, ``error_info``."""

    RESET = "reset"
    """A connection coming back needed a reset round trip, and it ran. ``conn_id``,
    ``reset`` (``"rollback"``, ``"full"`` or ``"callback"``), ``duration``,
    ``error_info`` when it failed (a ``discard`` follows then)."""

    DISCARD = "discard"
    """A connection is closed for good: every connection's last event. ``conn_id``,
    ``reason`` (one of :data:`DISCARD_REASONS`); the event before it (``check_failed``,
    ``keepalive_failed``, ``reset``...) carries the error when one caused it."""

    REPLACED = "replaced"
    """The first statement of an unchecked checkout found its connection dead and ran
    again on a replacement (``health.may_replay``). ``conn_id`` (the replacement),
    ``error_info`` (the error that showed the old one dead)."""

    REAP_IDLE = "reap_idle"
    """Maintenance closes an idle connection above ``min_size`` unused for ``max_idle``
    seconds; a ``discard`` follows. ``conn_id``, ``duration`` (seconds idle)."""

    RETIRE_LIFETIME = "retire_lifetime"
    """A connection reached its (jittered) ``max_lifetime``: retired when idle or when it
    comes back; a ``discard`` follows. ``conn_id``, ``duration`` (its age)."""

    KEEPALIVE = "keepalive"
    """A keepalive ping of an idle connection passed. ``conn_id``."""

    KEEPALIVE_FAILED = "keepalive_failed"
    """A keepalive ping of an idle connection failed; a ``discard`` follows. ``conn_id``,
    ``error_info``."""

    LEAK_SUSPECTED = "leak_suspected"
    """A connection has been checked out longer than ``leak_timeout`` (once per checkout).
    ``conn_id``, ``duration`` (seconds held so far)."""

    RECONNECT_STARTED = "reconnect_started"
    """The pool could not open a connection it needed (the first failure of an outage):
    recovery begins. ``error_info``, ``endpoint``."""

    RECONNECT_ATTEMPT = "reconnect_attempt"
    """Another connect during the outage failed. ``attempt`` (2, 3...), ``error_info``,
    ``delay`` (the pause before the next one), ``duration`` (seconds since the outage
    began)."""

    RECONNECT_SUCCEEDED = "reconnect_succeeded"
    """A connect worked again after an outage. ``attempt`` (failed attempts it took),
    ``duration`` (the outage's length), ``conn_id`` of the new connection."""

    RECONNECT_FAILED = "reconnect_failed"
    """Connecting has failed for ``reconnect_timeout`` seconds (once per outage; the pool
    keeps trying). ``attempt``, ``duration``, ``error_info``. Alert on this one."""

    RECONNECT_ABORTED = "reconnect_aborted"
    """The pool was closed during an outage. ``attempt``, ``duration``."""

    FAILOVER = "failover"
    """The pool moved: to another endpoint because the current one failed
    (``from_endpoint`` != ``to_endpoint``), or to another node behind the same endpoint
    (``node`` is the new node, ``reason`` names the old one)."""

    REDIRECT = "redirect"
    """A new connection was routed by the server (Azure gateway redirect) to another node.
    ``endpoint`` (dialled), ``node`` (reached), ``spid``. With ``error_info``: the routed
    login failed (a second routing hop or a loop: ``RedirectError``), ``node`` is the
    address it was routed to."""

    CONNECT_REJECTED = "connect_rejected"
    """A connect found no endpoint that would take a login, and skipped this one without
    one (its circuit was open, or it asked for a throttling pause). ``endpoint``,
    ``delay`` (seconds until it may be tried), ``error_info`` (its last failure)."""

    CIRCUIT_OPENED = "circuit_opened"
    """A circuit breaker opened (or re-opened after a failed probe): logins there fail fast.
    ``endpoint`` (None for the pool-wide circuit), ``attempt`` (consecutive failures),
    ``delay`` (seconds until the next probe), ``error_info`` (the last failure)."""

    CIRCUIT_HALF_OPEN = "circuit_half_open"
    """An open circuit lets one probe login through. ``endpoint``."""

    CIRCUIT_CLOSED = "circuit_closed"
    """A circuit closed: its probe (or any login) succeeded. ``endpoint``, ``duration``
    (seconds since it opened)."""

    RETRY_ATTEMPT = "retry_attempt"
    """``run_transaction``/``run`` (or a :class:`~mssql_pool.retry.RetryPolicy` whose
    ``on_retry`` is :meth:`EventBus.on_retry`) will run the unit again. ``attempt`` (the
    one that failed), ``error_info`` (its classification), ``delay`` (the backoff before
    the next), ``duration`` (how long the failed attempt took), ``reason`` (the policy's
    name)."""

    COMMIT_UNKNOWN = "commit_unknown"
    """The connection died while COMMIT was in flight: the unit may or may not have been
    applied. ``error_info``, ``attempt``, ``reason`` (what happens next: ``"raised"``,
    ``"rerun"`` for an idempotent unit, ``"verify"``)."""

    def __str__(self) -> str:
        return self.value


#: ``reason`` of a ``discard`` event.
DISCARD_REASONS: frozenset[str] = frozenset({
    "dead",            # a disconnect error while in use, or invalidate()
    "check_failed",    # the check on checkout failed
    "keepalive_failed",
    "reset_failed",    # the reset on return failed, or no reset could clean it
    "idle",            # max_idle (after a reap_idle event)
    "lifetime",        # max_lifetime (after a retire_lifetime event)
    "drained",         # pool.drain()
    "leaked",          # its proxy was garbage-collected unreturned
    "pool_closed",     # the pool is closed
    "other",
})


def discard_reason(text: str) -> str:
    """The :data:`DISCARD_REASONS` code of a pool's close reason (its log text)."""
    t = text.lower()
    for prefix, code in _REASON_PREFIXES:
        if t.startswith(prefix):
            return code
    return "other"


_REASON_PREFIXES = (
    ("its check failed", "check_failed"),
    ("keepalive failed", "keepalive_failed"),
    ("past its lifetime", "lifetime"),
    ("idle for more than", "idle"),
    ("drained", "drained"),
    ("the pool was drained", "drained"),
    ("the pool is closed", "pool_closed"),
    ("leaked", "leaked"),
    ("disconnected", "dead"),
    ("dead at its first statement", "dead"),
    ("invalidated", "dead"),
    ("its reset failed", "reset_failed"),
    ("interrupted during its reset", "reset_failed"),
    ("it holds session state no reset can clear", "reset_failed"),
    ("its session state changed", "reset_failed"),
)


def error_info(exc: BaseException | None) -> ErrorInfo | None:
    """Our classification of ``exc`` for an event (None for None; never raises)."""
    if exc is None:
        return None
    try:
        return classify(exc)
    except Exception:  # a classifier bug must not break the pool's path
        logger.exception("classifying an error for an event failed")
        return None


class PoolEvent(NamedTuple):
    """One event, immutable. Only ``kind``, ``time``, ``wall`` and ``pool_name`` are
    always set; the others are None where they do not apply (see :class:`EventKind`).
    (A named tuple: the cheapest immutable record to build on the pool's path.)"""

    kind: EventKind
    time: float                          # the pool's clock (monotonic)
    wall: float                          # time.time() when it was emitted
    pool_name: str
    conn_id: int | None = None           # the pool's number of the connection (#n in logs)
    endpoint: str | None = None          # host:port dialled (or the circuit's endpoint)
    node: str | None = None              # the server node reached (when identified)
    spid: int | None = None              # the server session id (identify asks for it)
    attempt: int | None = None
    delay: float | None = None           # seconds until the next try / probe
    duration: float | None = None        # seconds (waited, held, took, outage length...)
    error_info: ErrorInfo | None = None  # our classification of the error involved
    reason: str | None = None
    reset: str | None = None             # "none", "rollback", "full", "callback"
    from_endpoint: str | None = None
    to_endpoint: str | None = None
    wait: float | None = None            # seconds a checkout queued (None: it did not)

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, JSON-friendly (``error_info`` as kind/number/message)."""
        out: dict[str, Any] = {}
        value: Any
        for name, value in zip(self._fields, self, strict=True):
            if value is None:
                continue
            if isinstance(value, EventKind):
                value = value.value
            elif isinstance(value, ErrorInfo):
                value = {"kind": value.kind.value, "number": value.number,
                         "message": value.message}
            out[name] = value
        return out

    def __repr__(self) -> str:
        shown = [f"{self.kind.value}", f"pool={self.pool_name!r}", f"time={self.time:.3f}"]
        for name, value in zip(self._fields[4:], self[4:], strict=True):
            if value is None:
                continue
            if isinstance(value, ErrorInfo):
                shown.append(f"error={value.describe()}")
            elif isinstance(value, float):
                shown.append(f"{name}={value:.3f}")
            else:
                shown.append(f"{name}={value!r}")
        return "<PoolEvent " + " ".join(shown) + ">"


Listener = Callable[[PoolEvent], object]
_ALL = frozenset(EventKind)


def _kinds(kinds: Iterable[EventKind | str] | EventKind | str | None) -> frozenset[EventKind]:
    if kinds is None:
        return _ALL
    if isinstance(kinds, (str, EventKind)):
        kinds = (kinds,)
    out = set()
    try:
        items = list(kinds)
    except TypeError:
        raise ConfigError("kinds", f"must be None, a kind or an iterable of kinds, "
                                   f"got {kinds!r}") from None
    for k in items:
        try:
            out.add(EventKind(k))
        except ValueError:
            raise ConfigError("kinds", f"unknown event kind {k!r}; known: "
                                       f"{', '.join(sorted(e.value for e in EventKind))}"
                              ) from None
    if not out:
        raise ConfigError("kinds", "is empty: the listener would never be called")
    return frozenset(out)


_QUEUED, _FULL, _STOPPED = 0, 1, 2
_ORPHAN_CHECK = 1.0   # seconds between an idle listener thread's looks at its bus


class _Worker:
    """One listener, its bounded queue and its thread."""

    __slots__ = ("fn", "kinds", "bus_name", "number", "maxsize", "cond", "items", "busy",
                 "stopping", "removed", "thread", "overflowing", "dropped", "owner",
                 "sleeping", "inline")

    def __init__(self, fn: Listener, kinds: frozenset[EventKind], bus_name: str,
                 number: int, maxsize: int, owner: EventBus | None = None,
                 inline: bool = False) -> None:
        self.fn = fn
        self.inline = inline       # called on the emitting thread: no queue, no thread
        # The bus, weakly: a pool dropped without close() takes its bus with it, and
        # the thread then ends by itself.
        self.owner = None if owner is None else weakref.ref(owner)
        self.kinds = kinds
        self.bus_name = bus_name
        self.number = number
        self.maxsize = maxsize
        self.cond = threading.Condition(threading.Lock())
        self.items: deque[tuple[PoolEvent, contextvars.Context]] = deque()
        self.busy = False          # a batch is being delivered
        self.sleeping = False      # the thread waits for events (only then is it notified)
        self.stopping = False
        self.removed = False
        self.overflowing = False
        self.dropped = 0
        self.thread: threading.Thread | None = None

    def offer(self, event: PoolEvent, ctx: contextvars.Context) -> int:
        """Queue ``event`` (never blocks): _QUEUED, _FULL (dropped), or _STOPPED (the
        thread is stopping: the caller delivers it itself)."""
        with self.cond:
            if self.removed:
                return _QUEUED
            if self.stopping:
                return _STOPPED
            if len(self.items) >= self.maxsize:
                self.dropped += 1
                first = not self.overflowing
                self.overflowing = True
            else:
                self.overflowing = False
                self.items.append((event, ctx))
                if self.thread is None:
                    self.busy = True       # until it finds the queue empty
                    self._start()
                elif self.sleeping:
                    self.cond.notify()     # a busy thread takes it with its next batch
                return _QUEUED
        if first:
            logger.warning("pool %r: listener %s is %d events behind; dropping new events "
                           "until it catches up", self.bus_name, _fn_name(self.fn),
                           self.maxsize)
        return _FULL

    def _start(self) -> None:
        name = f"mssql_pool-{self.bus_name}-listener-{self.number}"
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        cond = self.cond
        fn = self.fn
        while True:
            with cond:
                if not self.items:
                    self.busy = False
                    cond.notify_all()              # flush() waiters
                    self.sleeping = True
                    while not self.items and not self.stopping and not self.removed:
                        if not cond.wait(_ORPHAN_CHECK) and self._orphaned():
                            self.stopping = True
                    self.sleeping = False
                if self.removed or not self.items:
                    self.items.clear()
                    self.busy = False
                    cond.notify_all()
                    return
                batch, self.items = self.items, deque()   # everything queued so far
                self.busy = True
            for event, ctx in batch:
                if self.removed:
                    break
                try:
                    ctx.run(fn, event)
                except Exception:
                    logger.exception("pool %r: listener %s raised on %r; ignored",
                                     self.bus_name, _fn_name(fn), event)

    def _orphaned(self) -> bool:
        return self.owner is not None and self.owner() is None

    def idle_within(self, deadline: float) -> bool:
        """Wait (real time) until the queue is empty and nothing runs."""
        with self.cond:
            while (self.items or self.busy) and not self.removed:
                if self.thread is threading.current_thread():
                    return not self.items   # flush from inside the listener itself
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def stop(self, remove: bool) -> None:
        with self.cond:
            if remove:
                self.removed = True
                self.items.clear()
            self.stopping = True
            self.cond.notify_all()

    def join(self, deadline: float) -> bool:
        thread = self.thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(max(deadline - time.monotonic(), 0.0))
        return not thread.is_alive()


def _fn_name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


class EventBus:
    """The listener registry and dispatcher of one pool (see the module docstring).

    ``pool_name`` goes into every event; ``clock`` gives :attr:`PoolEvent.time` (the
    pool's injected clock); ``queue_size`` bounds each listener's backlog. ``listeners``
    is what ``ConnectionPool(listeners=[...])`` takes: callables, or ``(fn, kinds)``
    pairs. Thread-safe; :meth:`emit` never blocks and never raises.
    """

    def __init__(self, pool_name: str, *, clock: Callable[[], float] = time.monotonic,
                 listeners: Iterable[Any] = (), queue_size: int = 10_000) -> None:
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ConfigError("queue_size", f"must be an int >= 1, got {queue_size!r}")
        self.pool_name = pool_name
        self.clock = clock
        self.queue_size = queue_size
        self._lock = threading.Lock()           # registry changes only
        self._workers: tuple[_Worker, ...] = ()
        self._by_kind: dict[EventKind, tuple[_Worker, ...]] = {}
        self._numbers = 0
        self._closed = False
        self._dropped_removed = 0
        for item in _listener_items(listeners):
            self.add(*item)
        _buses.add(self)

    # -- registry ----------------------------------------------------------------------
    def add(self, fn: Listener, kinds: Iterable[EventKind | str] | EventKind | str | None = None,
            *, inline: bool = False) -> Listener:
        """Call ``fn(event)`` for every event of ``kinds`` (all when None); returns ``fn``
        (usable as a decorator). Raises ConfigError for a non-callable, an unknown kind,
        or an ``fn`` already added.

        ``inline=True`` calls ``fn`` on the emitting thread instead of a listener thread,
        as soon as the event is emitted (always after the pool released its lock): no
        queue, so nothing is dropped and nothing lags, but the pool's caller waits for
        ``fn``. It is for listeners that only count, in a few microseconds and without
        blocking, such as :class:`mssql_pool.metrics.PoolCollector`'s."""
        if not callable(fn):
            raise ConfigError("listener", f"must be callable(event), got {fn!r}")
        wanted = _kinds(kinds)
        with self._lock:
            if any(w.fn is fn or w.fn == fn for w in self._workers):
                raise ConfigError("listener", f"{_fn_name(fn)} is already added; "
                                              "remove_listener() it first")
            self._numbers += 1
            worker = _Worker(fn, wanted, self.pool_name, self._numbers, self.queue_size, self,
                             inline=inline)
            self._workers = (*self._workers, worker)
            self._index_locked()
        return fn

    def remove(self, fn: Listener) -> bool:
        """Stop calling ``fn``: events queued for it are dropped, and its thread ends
        after the call in progress, if any (this never waits for it, so it is safe from
        inside ``fn``). Returns whether ``fn`` was registered."""
        with self._lock:
            found = [w for w in self._workers if w.fn is fn or w.fn == fn]
            if not found:
                return False
            self._workers = tuple(w for w in self._workers if w not in found)
            self._dropped_removed += sum(w.dropped for w in found)
            self._index_locked()
        for w in found:
            w.stop(remove=True)
        return True

    @property
    def dropped(self) -> int:
        """Events lost because a listener's queue was full."""
        return self._dropped_removed + sum(w.dropped for w in self._workers)

    @property
    def listeners(self) -> tuple[tuple[Listener, frozenset[EventKind]], ...]:
        """The registered listeners and their kinds, in the order they were added."""
        return tuple((w.fn, w.kinds) for w in self._workers)

    def _index_locked(self) -> None:
        by_kind: dict[EventKind, list[_Worker]] = {}
        for w in self._workers:
            for k in w.kinds:
                by_kind.setdefault(k, []).append(w)
        self._by_kind = {k: tuple(v) for k, v in by_kind.items()}

    # -- emitting ----------------------------------------------------------------------
    def wants(self, kind: EventKind) -> bool:
        """Does any listener want ``kind``? (Cheap: emitters skip building an event.)"""
        return kind in self._by_kind

    def emit(self, kind: EventKind, **values: Any) -> PoolEvent | None:
        """Build the event and queue it for each listener that wants it; returns the
        event (None when nobody listens). Never blocks, never raises: call it after
        releasing any lock. ``values`` are :class:`PoolEvent` fields."""
        workers = self._by_kind.get(kind)
        if not workers:
            return None
        try:
            event = PoolEvent(kind, self.clock(), time.time(), self.pool_name, **values)
        except Exception:
            logger.exception("pool %r: building a %s event failed", self.pool_name, kind)
            return None
        self.deliver(event, workers)
        return event

    def deliver(self, event: PoolEvent, workers: Sequence[_Worker] | None = None) -> None:
        """Queue an already-built ``event`` (e.g. one made under a lock) for its listeners."""
        if workers is None:
            workers = self._by_kind.get(event.kind, ())
        if self._closed:
            for w in workers:       # after close: on the emitting thread
                self._call_inline(w, event)
            return
        ctx: contextvars.Context | None = None
        for w in workers:
            if w.inline:
                self._call_inline(w, event)
                continue
            # one copy each: a context cannot be entered by two threads at once
            ctx = contextvars.copy_context() if ctx is None else ctx.copy()
            if w.offer(event, ctx) == _STOPPED:
                self._call_inline(w, event)

    def _call_inline(self, worker: _Worker, event: PoolEvent) -> None:
        if worker.removed:
            return
        try:
            worker.fn(event)
        except Exception:
            logger.exception("pool %r: listener %s raised on %r; ignored",
                             self.pool_name, _fn_name(worker.fn), event)

    def on_retry(self, record: Any) -> None:
        """An ``on_retry`` hook for a :class:`~mssql_pool.retry.RetryPolicy`: each retry
        of the policy becomes a ``retry_attempt`` event of this bus."""
        if not self.wants(EventKind.RETRY_ATTEMPT):
            return
        self.emit(EventKind.RETRY_ATTEMPT, attempt=record.attempt, delay=record.delay,
                  duration=record.duration, error_info=error_info(record.error))

    # -- lifecycle -----------------------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (up to ``timeout`` s of real time) until every event emitted so far has
        been delivered. True when all were."""
        deadline = time.monotonic() + timeout
        return all([w.idle_within(deadline) for w in self._workers])

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (within ``timeout``), then stop and join the threads.
        Listeners stay registered: later events run on the emitting thread."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._lock:
            self._closed = True
            workers = self._workers
        for w in workers:
            w.stop(remove=False)
        for w in workers:
            if not w.join(deadline):
                logger.warning("pool %r: listener %s still running after close(); left "
                               "behind (daemon thread)", self.pool_name, _fn_name(w.fn))

    @property
    def closed(self) -> bool:
        return self._closed

    def _after_fork_in_child(self) -> None:
        """A forked child has none of the parent's threads: fresh queues and locks."""
        self._lock = threading.Lock()
        self._workers = tuple(_Worker(w.fn, w.kinds, self.pool_name, w.number, self.queue_size,
                                      self, inline=w.inline) for w in self._workers)
        self._index_locked()

    def __repr__(self) -> str:
        return (f"<EventBus {self.pool_name!r} listeners={len(self._workers)} "
                f"dropped={self.dropped}{' closed' if self._closed else ''}>")


def listener_pairs(listeners: Iterable[Any]) -> tuple[tuple[Listener, frozenset[EventKind]], ...]:
    """Validate the ``listeners=`` option: ``(fn, kinds)`` pairs, kinds resolved."""
    return tuple((fn, _kinds(kinds)) for fn, kinds in _listener_items(listeners))


def _listener_items(listeners: Iterable[Any]) -> Iterator[tuple[Listener, Any]]:
    if listeners is None:
        return
    if callable(listeners) or isinstance(listeners, (str, bytes)):
        raise ConfigError("listeners", "must be a list of callables or (fn, kinds) pairs")
    try:
        items = list(listeners)
    except TypeError:
        raise ConfigError("listeners", f"must be a list, got {listeners!r}") from None
    for item in items:
        if isinstance(item, tuple) and len(item) == 2 and callable(item[0]):
            yield item[0], item[1]
        elif callable(item):
            yield item, None
        else:
            raise ConfigError("listeners", f"each item must be a callable or a (fn, kinds) "
                                           f"pair, got {item!r}")


_buses: ForkRegistry[EventBus] = ForkRegistry()


# --------------------------------------------------------------------------- for tests


class EventRecorder:
    """A listener that keeps every event it gets, for tests and reports::

        rec = EventRecorder()
        pool.add_listener(rec)
        ...
        pool.events.flush()
        assert rec.kinds()[:2] == ["connect", "checkout"]
    """

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self.events: list[PoolEvent] = []

    def __call__(self, event: PoolEvent) -> None:
        with self._lock:
            self.events.append(event)
            self._lock.notify_all()

    def kinds(self, conn_id: int | None = None) -> list[str]:
        """The kinds recorded so far (of one connection when ``conn_id`` is given)."""
        with self._lock:
            return [e.kind.value for e in self.events
                    if conn_id is None or e.conn_id == conn_id]

    def of(self, *kinds: EventKind | str) -> list[PoolEvent]:
        """The recorded events of these kinds, in order."""
        wanted = {EventKind(k) for k in kinds}
        with self._lock:
            return [e for e in self.events if e.kind in wanted]

    def wait_for(self, kind: EventKind | str, timeout: float = 10.0, count: int = 1) -> bool:
        """Wait (real time) until ``count`` events of ``kind`` were recorded."""
        kind = EventKind(kind)
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(1 for e in self.events if e.kind is kind) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def clear(self) -> None:
        with self._lock:
            self.events.clear()


# Per-connection life: the states a connection's events move it through.
_NEW, _IDLE, _BUSY, _CLOSING, _GONE = "new", "idle", "busy", "closing", "discarded"
# kind -> {state before: state after}
_LIFE: dict[EventKind, dict[str, str]] = {
    EventKind.CONNECT: {_NEW: _IDLE},
    EventKind.CHECKOUT: {_IDLE: _BUSY},
    EventKind.RESET: {_BUSY: _BUSY},
    EventKind.CHECKIN: {_BUSY: _IDLE},
    EventKind.CHECK: {_IDLE: _IDLE},
    EventKind.CHECK_FAILED: {_IDLE: _CLOSING},
    EventKind.KEEPALIVE: {_IDLE: _IDLE},
    EventKind.KEEPALIVE_FAILED: {_IDLE: _CLOSING},
    EventKind.REAP_IDLE: {_IDLE: _CLOSING},
    EventKind.RETIRE_LIFETIME: {_IDLE: _CLOSING, _BUSY: _CLOSING},
    EventKind.DISCARD: {_IDLE: _GONE, _BUSY: _GONE, _CLOSING: _GONE},
}


def life_errors(events: Iterable[PoolEvent], *, complete: bool = False) -> list[str]:
    """Check that every connection's events form a valid life; return what is wrong
    (an empty list when nothing is).

    Per ``conn_id``, in log order: ``connect`` first and once; ``checkout`` only while
    idle (never after ``discard``); ``checkin`` and ``reset`` only while checked out;
    ``check_failed``, ``keepalive_failed``, ``reap_idle`` only while idle,
    ``retire_lifetime`` while idle or coming back, each followed by its ``discard``;
    ``discard`` exactly once and last, with a known reason. Events without a
    ``conn_id`` (pool-wide ones) are ignored, and so is ``leak_suspected``: the
    maintenance thread reports it while the borrower may be giving the connection back.
    ``complete=True`` (the pool was closed with every connection returned) also
    requires every life to have ended.

    One caveat for logs recorded from several threads: the log is in emission order.
    Emitters in the pool keep a connection's events in the order of its life (each is
    emitted by the thread that holds the connection, before handing it on)."""
    state: dict[int, str] = {}
    errors: list[str] = []
    for i, ev in enumerate(events):
        cid = ev.conn_id
        rule = _LIFE.get(ev.kind)
        if cid is None or rule is None:
            continue
        before = state.get(cid, _NEW)
        after = rule.get(before)
        if after is None:
            errors.append(f"event {i}: {ev.kind.value} of connection #{cid} while {before}")
            continue
        if ev.kind is EventKind.DISCARD and ev.reason not in DISCARD_REASONS:
            errors.append(f"event {i}: discard of connection #{cid} with unknown reason "
                          f"{ev.reason!r}")
        state[cid] = after
    if complete:
        for cid, st in sorted(state.items()):
            if st != _GONE:
                errors.append(f"connection #{cid} never discarded (last {st})")
    return errors
