"""Connecting and closing: the pool's I/O around the decisions of :mod:`mssql_pool._state`.

:class:`Connector` is the only place where a pool opens or closes a driver connection:

* :meth:`Connector.open` opens one for a reserved :class:`~mssql_pool._state.Slot`:
  resolves ``conninfo`` (a callable is called on every connect), dials through the
  connect guard (circuits) and the endpoints (or calls the ``connect=`` factory), runs
  ``configure``, and reports the outcome to the state;
* :meth:`Connector.apply` carries out :class:`~mssql_pool._state.Effects`: closes
  records and starts connects, each on its own named daemon thread
  (``mssql_pool-<name>-connect``), so the caller that asked keeps its place in the queue
  and takes the first connection that comes, new or returned;
* :class:`ConnectBackoff` turns a failed connect into the pool-wide pause before the next
  one, following the ``connect_policy``: its backoff (and the server's hints, 40501: 10 s),
  its ``max_attempts`` and its ``deadline`` (counted from the first failure of an outage);
  when it gives up (or never retries the error, 18456), the callers waiting for a new
  connection are told at once. Without a policy the pause is 50 ms doubling to 2 s.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._dsn import parse_conninfo, redact
from ._state import Effects, PoolState, Slot
from .connection import ConnectionRecord
from .errors import CircuitOpenError, RetryExhausted
from .events import EventBus, EventKind, discard_reason, error_info
from .reset import NO_FULL_RESET

if TYPE_CHECKING:
    from .breaker import ConnectGuard
    from .config import PoolConfig
    from .endpoints import EndpointRouter
    from .retry import RetryPolicy

__all__ = ["Connector", "ConnectBackoff", "inherited"]

logger = logging.getLogger("mssql_pool.pool")

_INF = float("inf")
FALLBACK_BACKOFF = (0.05, 2.0)   # without a connect policy: first and largest pause

#: The parent's connections in a forked child: never used, never closed.
inherited: list[Any] = []


class ConnectBackoff:
    """The connect policy applied pool-wide (see the module docstring). Thread-safe."""

    def __init__(self, policy: RetryPolicy | None, random: Callable[[], float]) -> None:
        self.policy = policy
        self.random = random
        self._lock = threading.Lock()
        self._episode: RetryPolicy | None = None   # the policy's state in this outage
        self._floor = 0.0      # after the policy gave up: the least pause, until a success
        self._fallback = FALLBACK_BACKOFF[0]

    def failed(self, exc: BaseException, now: float
               ) -> tuple[float, BaseException | None, bool]:
        """(pause before the next connect, the error to refuse waiters with or None,
        whether an open circuit refused it without a login)."""
        circuit = isinstance(exc, CircuitOpenError)
        if circuit:   # be there when the circuit's next probe is due
            assert isinstance(exc, CircuitOpenError)
            return max(exc.retry_in, 0.0) + 0.02 * self.random(), None, True
        with self._lock:
            policy = self.policy
            if policy is None or not isinstance(exc, Exception):
                delay = self._fallback * (0.5 + self.random())
                self._fallback = min(self._fallback * 2, FALLBACK_BACKOFF[1])
                return delay, None, False
            episode = self._episode if self._episode is not None else policy.begin(now)
            try:
                episode = episode.increment(exc, now=now)
            except RetryExhausted as gave_up:
                # The callers waiting now are told; the pause stays at this length until
                # a connect succeeds, so later callers cost one login per pause.
                self._episode = None
                self._floor = max(self._floor, self._pause(policy, len(gave_up.attempts)))
                return self._floor, gave_up, False
            except Exception as not_retried:   # raised as is: the policy never retries it
                self._episode = None
                return max(self._floor, self._pause(policy, 1)), not_retried, False
            self._episode = episode.begin(now + episode.next_delay)
            return max(self._floor, episode.next_delay), None, False

    def _pause(self, policy: RetryPolicy, attempt: int) -> float:
        try:
            return float(policy.backoff.delay(max(attempt, 1), self.random()))
        except Exception:  # pragma: no cover - a user backoff that raises
            return FALLBACK_BACKOFF[1]

    def succeeded(self) -> None:
        with self._lock:
            self._episode = None
            self._floor = 0.0
            self._fallback = FALLBACK_BACKOFF[0]


class Connector:
    """Opens and closes the driver connections of one pool (see the module docstring)."""

    def __init__(self, config: PoolConfig, state: PoolState, guard: ConnectGuard,
                 endpoints: EndpointRouter | None, wake_maintenance: Callable[[], None],
                 events: EventBus | None = None) -> None:
        self.config = config
        #: Where connect, connect_failed, reconnect_*, reap_idle, retire_lifetime and
        #: discard events go (the pool's bus).
        self.events = events
        self._outage_lock = threading.Lock()
        self._outage: list[float] | None = None   # [first failure at, failed logins]
        self.state = state
        self.guard = guard
        self.endpoints = endpoints
        self.name = config.name
        self.backoff = ConnectBackoff(guard.policy, config.random)
        self._wake_maintenance = wake_maintenance
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        #: Records of proxies garbage-collected unreturned (appended from ``__del__``).
        self.orphans: deque[ConnectionRecord] = deque()

    # ------------------------------------------------------------------ effects
    def apply(self, fx: Effects | None) -> None:
        """Close what the state said to close, start the connects it asked for."""
        if fx is None:
            return
        for rec, reason, warn in fx.close:
            self.close_record(rec, reason, warn)
        for slot in fx.connect:
            self.start(slot)
        if fx.close and self.state.size < self.state.min_size and not self.state.closed:
            self._wake_maintenance()

    def start(self, slot: Slot) -> None:
        """Open a connection for ``slot`` on a named daemon thread."""
        thread = threading.Thread(target=self._run, args=(slot,), daemon=True,
                                  name=f"mssql_pool-{self.name}-connect")
        with self._threads_lock:
            self._threads.add(thread)
        try:
            thread.start()
        except BaseException as exc:   # no thread: the slot must not be lost
            with self._threads_lock:
                self._threads.discard(thread)
            if self.events is not None:   # counted as a failed connect: told as one
                self.events.emit(EventKind.CONNECT_FAILED, error_info=error_info(exc),
                                 delay=0.1, duration=0.0)
            self.apply(self.state.connect_failed(slot, self.config.clock(), exc, 0.1))
            raise

    def _run(self, slot: Slot) -> None:
        try:
            self.open(slot)
        except BaseException:   # reported to the state already; a thread has no caller
            pass
        finally:
            with self._threads_lock:
                self._threads.discard(threading.current_thread())

    def join(self, timeout: float | None) -> None:
        """Wait for connects in flight (``pool.close``)."""
        with self._threads_lock:
            threads = list(self._threads)
        deadline = None if timeout is None else self.config.clock() + timeout
        for thread in threads:
            left = None if deadline is None else max(deadline - self.config.clock(), 0.0)
            thread.join(left)

    # ------------------------------------------------------------------ connecting
    def open(self, slot: Slot) -> tuple[BaseException | None, BaseException | None]:
        """Open a connection for ``slot`` and report it to the state. Returns (the
        connect error or None, the error the policy gave up with or None). A
        ``BaseException`` is reported (the slot freed) and raised."""
        clock = self.config.clock
        # connections_ms and the connect event's duration time the same span
        begun = slot.started_at = clock()
        try:
            rec = self._dial(begun)
        except BaseException as exc:
            now = clock()
            delay, give_up, circuit = self.backoff.failed(exc, now)
            fx = self.state.connect_failed(slot, now, exc, delay, give_up=give_up,
                                           circuit=circuit)
            logger.log(logging.DEBUG if circuit else logging.WARNING,
                       "pool %r: connecting failed (next attempt in %.2f s): %s",
                       self.name, delay, redact(exc))
            if self.events is not None:
                self._failed_events(exc, now, now - begun, delay, circuit)
            self.apply(fx)
            if not isinstance(exc, Exception):
                raise
            return exc, give_up
        self.backoff.succeeded()
        now = clock()
        if self.events is not None:
            # numbered and announced before the state hands it to anyone
            self.state.number(rec)
            self._connected_events(rec, now, now - begun)
        fx = self.state.connected(slot, rec, now)
        logger.debug("pool %r: opened connection #%d in %.1f ms", self.name, rec.seq,
                     (now - slot.started_at) * 1000)
        self.apply(fx)
        return None, None

    # ------------------------------------------------------------------ events
    def _failed_events(self, exc: BaseException, now: float, took: float, delay: float,
                       circuit: bool) -> None:
        bus = self.events
        assert bus is not None
        cause = getattr(exc, "last_error", None) or exc
        info = error_info(cause)
        endpoint = getattr(exc, "endpoint", None)
        bus.emit(EventKind.CONNECT_FAILED, error_info=info, endpoint=endpoint, duration=took,
                 delay=delay, reason="circuit_open" if circuit else None)
        if circuit:      # refused without a login: the outage goes on, no attempt made
            return
        with self._outage_lock:
            outage = self._outage
            if outage is None:
                self._outage = [now, 1.0]
            else:
                outage[1] += 1
                since, attempt = outage
        if outage is None:
            bus.emit(EventKind.RECONNECT_STARTED, error_info=info, endpoint=endpoint,
                     delay=delay)
        else:
            bus.emit(EventKind.RECONNECT_ATTEMPT, attempt=int(attempt), error_info=info,
                     endpoint=endpoint, delay=delay, duration=now - since)

    def _connected_events(self, rec: ConnectionRecord, now: float, took: float) -> None:
        bus = self.events
        assert bus is not None
        landing = rec.landing
        endpoint = None if landing is None else str(landing.endpoint)
        node = None if landing is None else landing.node
        moved = landing is not None and landing.switched
        with self._outage_lock:
            outage, self._outage = self._outage, None
        bus.emit(EventKind.CONNECT, conn_id=rec.seq, spid=rec.spid, endpoint=endpoint, node=node,
                 duration=took, to_endpoint=endpoint if moved else None,
                 from_endpoint=str(landing.switched_from) if moved and landing is not None
                 and landing.switched_from is not None else None)
        if outage is not None:
            bus.emit(EventKind.RECONNECT_SUCCEEDED, conn_id=rec.seq, spid=rec.spid,
                     endpoint=endpoint,
                     attempt=int(outage[1]), duration=now - outage[0])

    def outage(self) -> tuple[float, int] | None:
        """(when the current outage began, failed logins so far), or None."""
        with self._outage_lock:
            outage = self._outage
            return None if outage is None else (outage[0], int(outage[1]))

    def abort_outage(self) -> None:
        """The pool is closing: an outage in progress ends unresolved."""
        with self._outage_lock:
            outage, self._outage = self._outage, None
        if outage is not None and self.events is not None:
            self.events.emit(EventKind.RECONNECT_ABORTED, attempt=int(outage[1]),
                             duration=self.config.clock() - outage[0])

    def refill(self) -> tuple[BaseException | None, BaseException | None]:
        """Open connections one at a time up to ``min_size`` in this thread (maintenance,
        ``pool.wait()``); stops at the first failure and returns it as :meth:`open`."""
        while True:
            slot = self.state.reserve_refill(self.config.clock())
            if slot is None:
                return None, None
            error, give_up = self.open(slot)
            if error is not None:
                return error, give_up

    def _dial(self, start: float) -> ConnectionRecord:
        cfg = self.config
        conn_properties = None
        landing = None
        guard = self.guard
        if cfg.connect is not None:
            raw = guard.connect(cfg.connect)
        else:
            info = cfg.conninfo
            resolved: str | Mapping[str, Any] = info() if callable(info) else info  # type: ignore[assignment]
            kwargs = parse_conninfo(resolved)
            props = kwargs.get("conn_properties")
            conn_properties = props if props is None or isinstance(props, str) \
                else " ".join(props)
            import pymssql  # the hard dependency, imported when first needed

            endpoints = self.endpoints
            assert endpoints is not None
            raw, landing = guard.connect(lambda: endpoints.connect(kwargs, pymssql.connect))
        if cfg.configure is not None:
            try:
                cfg.configure(raw)
            except BaseException:
                try:
                    raw.close()
                except Exception:
                    pass
                raise
        now = cfg.clock()
        autocommit = getattr(raw, "autocommit_state", None)
        lifetime = cfg.max_lifetime
        expires = _INF if lifetime is None else now + lifetime * (1.0 - 0.05 * cfg.random())
        rec = ConnectionRecord(raw, 0, 0, now, expires,
                               None if autocommit is None else bool(autocommit), os.getpid())
        rec.conn_properties = conn_properties
        rec.landing = landing
        return rec

    # ------------------------------------------------------------------ closing
    def close_record(self, rec: ConnectionRecord, reason: str, warn: bool = False) -> None:
        """Close a record's driver connection (never under the state lock)."""
        if reason is NO_FULL_RESET:
            level = logging.DEBUG     # said once, at INFO, when the pool found it out
        else:
            level = logging.WARNING if warn else logging.INFO
        logger.log(level, "pool %r: closing connection #%d: %s", self.name, rec.seq, reason)
        if rec.pid != os.getpid():
            inherited.append(rec.raw)   # the parent's socket: leave it alone
            return
        bus = self.events
        if bus is not None:
            code = rec.close_code or discard_reason(reason)
            now = self.config.clock()
            if code == "lifetime":
                bus.emit(EventKind.RETIRE_LIFETIME, conn_id=rec.seq, spid=rec.spid,
                         duration=now - rec.created_at)
            elif code == "idle":
                bus.emit(EventKind.REAP_IDLE, conn_id=rec.seq, spid=rec.spid,
                         duration=now - rec.returned_at)
            bus.emit(EventKind.DISCARD, conn_id=rec.seq, spid=rec.spid, reason=code)
        try:
            rec.raw.close()
        except Exception as exc:
            logger.debug("pool %r: closing connection #%d failed: %s", self.name, rec.seq,
                         redact(exc))

    def reap_orphans(self) -> None:
        """Close the connections of proxies garbage-collected without being returned."""
        while self.orphans:
            try:
                rec = self.orphans.popleft()
            except IndexError:  # pragma: no cover - another thread took it
                return
            fx = self.state.leaked(rec, self.config.clock())
            if fx.close:
                logger.warning("pool %r: connection #%d was garbage-collected without being "
                               "returned; closing it%s", self.name, rec.seq,
                               f"; checked out at:\n{rec.stack}" if rec.stack else "")
            self.apply(fx)
