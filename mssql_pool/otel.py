"""OpenTelemetry bridge: a pool's events as spans (needs the ``otel`` extra).

``pip install 'mssql_pool[otel]'`` installs opentelemetry-api; bring your own SDK and
exporter. Then::

    from mssql_pool.otel import instrument
    instrument(pool)                  # the global tracer provider

What becomes what (every span carries ``db.system.name = "microsoft.sql_server"`` and
``db.client.connection.pool.name``):

=====================  ==========================================================
event                  in the trace
=====================  ==========================================================
checkout that waited   span ``mssql_pool.checkout``, from when the caller asked to when
                       it got the connection (only waits of ``min_wait`` s or more;
                       default: every wait above zero), child of the caller's span
checkout_failed        span ``mssql_pool.checkout`` over the whole wait, status ERROR
                       with the reason (timeout, full, closed, login, circuit...)
retry_attempt          span ``mssql_pool.retry_attempt`` over the failed attempt, status
                       ERROR, with ``error.type`` (our classification), the error number,
                       the attempt and the backoff delay; child of the caller's span
commit_unknown         span ``mssql_pool.commit_unknown`` (status ERROR), child of the
                       caller's span
reconnect_started      opens span ``mssql_pool.reconnect`` (a root span: recovery runs
                       in the background) ...
reconnect_attempt,     ... which gets one span event per failed attempt, per circuit
circuit_*, failover,   transition, failover, redirect and failed connect while it is
redirect,              open; ``reconnect_failed`` also sets its status to ERROR ...
connect_failed,
connect_rejected
reconnect_succeeded,   ... and ends it (aborted: status ERROR)
reconnect_aborted
failover, redirect,    outside an outage: a span of their own, ``mssql_pool.<kind>``
circuit_*              (a redirect whose routed login failed: status ERROR)
=====================  ==========================================================

The bridge is a pool listener like any other: it runs on its own thread, in a copy of
the emitting thread's context (so ``checkout`` and ``retry_attempt`` spans are children
of the span that was current where the pool was called), with the start and end times
the events carry (wall clock), so delivery lag never distorts a span.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from .events import EventKind, PoolEvent

try:
    from opentelemetry import trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mssql_pool.otel needs opentelemetry-api: pip install 'mssql_pool[otel]'"
    ) from exc

__all__ = ["OtelBridge", "instrument", "uninstrument", "BRIDGED_KINDS"]

#: The kinds the bridge listens to.
BRIDGED_KINDS: frozenset[EventKind] = frozenset({
    EventKind.CHECKOUT, EventKind.CHECKOUT_FAILED, EventKind.RETRY_ATTEMPT,
    EventKind.COMMIT_UNKNOWN, EventKind.CONNECT_REJECTED,
    EventKind.RECONNECT_STARTED, EventKind.RECONNECT_ATTEMPT, EventKind.RECONNECT_SUCCEEDED,
    EventKind.RECONNECT_FAILED, EventKind.RECONNECT_ABORTED, EventKind.CONNECT_FAILED,
    EventKind.FAILOVER, EventKind.REDIRECT, EventKind.CIRCUIT_OPENED,
    EventKind.CIRCUIT_HALF_OPEN, EventKind.CIRCUIT_CLOSED,
})
_OWN_SPAN = frozenset({EventKind.FAILOVER, EventKind.REDIRECT, EventKind.CIRCUIT_OPENED,
                       EventKind.CIRCUIT_HALF_OPEN, EventKind.CIRCUIT_CLOSED})
_SCOPE = "mssql_pool"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _attributes(event: PoolEvent) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "db.system.name": "microsoft.sql_server",
        "db.client.connection.pool.name": event.pool_name,
        "mssql_pool.event": event.kind.value,
    }
    for name in ("conn_id", "attempt", "delay", "duration", "wait", "reason", "reset", "node",
                 "from_endpoint", "to_endpoint"):
        value = getattr(event, name)
        if value is not None:
            attrs[f"mssql_pool.{name}"] = value
    if event.endpoint is not None:
        attrs["server.address"] = event.endpoint
    info = event.error_info
    if info is not None:
        attrs["error.type"] = info.kind.value
        if info.number is not None:
            attrs["db.response.status_code"] = str(info.number)
        if info.message:
            attrs["mssql_pool.error"] = info.message
    return attrs


class OtelBridge:
    """The listener that turns events into spans (see the module docstring).

    ``tracer_provider``: None for the global one. ``min_wait``: checkouts that waited
    less (seconds) make no span."""

    def __init__(self, tracer_provider: Any = None, *, min_wait: float = 0.0) -> None:
        if min_wait < 0:
            from .errors import ConfigError

            raise ConfigError("min_wait", f"must be >= 0, got {min_wait!r}")
        self.tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        self.min_wait = min_wait
        self._lock = threading.Lock()
        self._outages: dict[str, Span] = {}   # pool name -> its open reconnect span

    def __call__(self, event: PoolEvent) -> None:
        kind = event.kind
        if kind is EventKind.CHECKOUT:
            # the whole checkout (queued, connecting, checked); its queued part, if any, is
            # the span's mssql_pool.wait
            took = max(event.duration or 0.0, event.wait or 0.0)
            if took > 0 and took >= self.min_wait:
                self._span("mssql_pool.checkout", event, event.wall - took)
        elif kind is EventKind.CHECKOUT_FAILED:
            self._span("mssql_pool.checkout", event, event.wall - (event.duration or 0.0),
                       error=True)
        elif kind is EventKind.RETRY_ATTEMPT:
            self._span("mssql_pool.retry_attempt", event,
                       event.wall - (event.duration or 0.0), error=True)
        elif kind is EventKind.COMMIT_UNKNOWN:
            self._span("mssql_pool.commit_unknown", event, event.wall, error=True)
        elif kind is EventKind.RECONNECT_STARTED:
            self._start_outage(event)
        elif kind in (EventKind.RECONNECT_SUCCEEDED, EventKind.RECONNECT_ABORTED):
            self._end_outage(event)
        else:
            with self._lock:
                outage = self._outages.get(event.pool_name)
            if outage is not None:
                outage.add_event(kind.value, _attributes(event), _ns(event.wall))
                if kind is EventKind.RECONNECT_FAILED:
                    outage.set_status(Status(StatusCode.ERROR, "reconnect_failed"))
            elif kind in _OWN_SPAN:
                self._span(f"mssql_pool.{kind.value}", event, event.wall,
                           error=kind is EventKind.REDIRECT and event.error_info is not None)

    def _span(self, name: str, event: PoolEvent, start: float, error: bool = False) -> None:
        span = self.tracer.start_span(name, kind=SpanKind.INTERNAL,
                                      attributes=_attributes(event), start_time=_ns(start))
        if error:
            info = event.error_info
            what = event.kind.value if event.reason is None else \
                f"{event.kind.value}: {event.reason}"
            span.set_status(Status(StatusCode.ERROR,
                                   info.describe() if info is not None else what))
        span.end(end_time=_ns(event.wall))

    def _start_outage(self, event: PoolEvent) -> None:
        span = self.tracer.start_span("mssql_pool.reconnect", context=_root(),
                                      kind=SpanKind.INTERNAL, attributes=_attributes(event),
                                      start_time=_ns(event.wall))
        with self._lock:
            old = self._outages.pop(event.pool_name, None)
            self._outages[event.pool_name] = span
        if old is not None:   # a start without an end (events dropped): close the old one
            old.end(end_time=_ns(event.wall))

    def _end_outage(self, event: PoolEvent) -> None:
        with self._lock:
            span = self._outages.pop(event.pool_name, None)
        if span is None:
            return
        span.add_event(event.kind.value, _attributes(event), _ns(event.wall))
        if event.attempt is not None:
            span.set_attribute("mssql_pool.attempts", event.attempt)
        if event.kind is EventKind.RECONNECT_ABORTED:
            span.set_status(Status(StatusCode.ERROR, "the pool was closed during the outage"))
        span.end(end_time=_ns(event.wall))


def _root() -> Any:
    from opentelemetry import context

    return context.Context()


def instrument(pool: Any, tracer_provider: Any = None, *, min_wait: float = 0.0,
               kinds: Iterable[EventKind | str] | None = None) -> OtelBridge:
    """Bridge ``pool``'s events (a pool, or an :class:`~mssql_pool.events.EventBus`) into
    traces; returns the listener (give it to :func:`uninstrument` to stop)."""
    bridge = OtelBridge(tracer_provider, min_wait=min_wait)
    add = getattr(pool, "add_listener", None) or pool.add
    add(bridge, kinds=BRIDGED_KINDS if kinds is None else kinds)
    return bridge


def uninstrument(pool: Any, bridge: OtelBridge) -> None:
    """Stop bridging ``pool``'s events (an open reconnect span is ended now)."""
    remove = getattr(pool, "remove_listener", None) or pool.remove
    remove(bridge)
    with bridge._lock:
        spans = list(bridge._outages.values())
        bridge._outages.clear()
    for span in spans:
        span.end()
