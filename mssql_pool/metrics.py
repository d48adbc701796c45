"""Prometheus metrics for mssql_pool pools (optional; needs the ``metrics`` extra).

``pip install 'mssql_pool[metrics]'`` installs prometheus-client. Then::

    from mssql_pool.metrics import register
    register(pool)                      # the default registry; label pool="<pool.name>"
    register(other_pool)                # same collector, second label value

or, for full control::

    from prometheus_client import CollectorRegistry, generate_latest
    from mssql_pool.metrics import PoolCollector
    registry = CollectorRegistry()
    registry.register(PoolCollector([orders_pool, reports_pool]))
    print(generate_latest(registry).decode())

**Where the values come from.** The collector is a listener of each pool's events
(:mod:`mssql_pool.events`), added by :meth:`PoolCollector.add` (and :func:`register`)
and removed by :meth:`PoolCollector.remove` (and :func:`unregister`). Every *counter*
is counted from those events (:data:`COUNTED_FROM` says from which), the one record
that the alerts, the traces and the demo's report read too; the pool's own
``get_stats()`` counts the same decisions apart, and the two agree (the project's
tests compare them after every step of random runs). The *gauges* describe the
present (``size``, ``connections{state}``, ``min_size``, ``max_size``,
``requests_waiting``) and are read from ``pool.get_stats()`` at each scrape.

* Counters start at 0 when the pool is added: a collector attached to a pool that has
  been running counts from then on (Prometheus takes a counter's start as a reset),
  while ``get_stats()`` counts from the pool's creation.
* ``pop_stats()`` does not reset the exported counters.
* The collector's listener runs inline (``EventBus.add(..., inline=True)``): on the
  emitting thread, after the pool released its lock, so a scrape counts every event
  emitted before it and no full queue can drop one. (An object that only has
  ``add_listener`` gets an ordinary, threaded listener.)
* An object with only a ``name`` and ``get_stats()`` (no ``add_listener``) is still
  exported, every counter then read from ``get_stats()``.
* Known corners where the two records part (none reachable without an interrupt or a
  failing ``configure``): a connection found dead in use whose proxy is then never
  given back (``connections_lost`` counted, no ``checkin`` to tell it); an endpoint
  switch whose connection then fails in ``configure`` (``endpoint_switches`` counted,
  no ``connect`` event); a caller interrupted between being handed an unchecked
  connection and its ``checkout`` event.

Each sample carries the label ``pool`` with the pool's ``name``; several pools
(:class:`~mssql_pool.ConnectionPool` or :class:`~mssql_pool.AsyncConnectionPool`) may
share one collector, but their names must differ.

Metric table. Names are shown without the namespace prefix (default ``mssql_pool_``,
so ``size`` is scraped as ``mssql_pool_size``); Prometheus appends ``_total`` to
counters, shown here. The last column names the OpenTelemetry semantic-convention
instrument each corresponds to (database client metrics, ``db.client.connection.*``;
OTel attribute ``db.client.connection.pool.name`` = our label ``pool``, and
``db.client.connection.state`` = our label ``state``), for users who bridge the data
into an OpenTelemetry pipeline or name their own instruments after it.

=================================  =======  =======================  =============================
name (after ``mssql_pool_``)       type     ``get_stats()`` key      OpenTelemetry instrument
=================================  =======  =======================  =============================
connections{state="idle"}          gauge    pool_available           db.client.connection.count
connections{state="used"}          gauge    pool_size-pool_available db.client.connection.count
size                               gauge    pool_size                (sum of the two above)
min_size                           gauge    pool_min                 db.client.connection.idle.min
max_size                           gauge    pool_max                 db.client.connection.max
requests_waiting                   gauge    requests_waiting         ...connection.pending_requests
requests_total                     counter  requests_num             count of ...wait_time
requests_queued_total              counter  requests_queued          --
requests_errors_total              counter  requests_errors          --
requests_wait_seconds_total        counter  requests_wait_ms / 1000  sum of ...wait_time
requests_timeouts_total            counter  requests_timeouts        db.client.connection.timeouts
connections_opened_total           counter  connections_num          count of ...create_time
connections_open_seconds_total     counter  connections_ms / 1000    sum of ...create_time
usage_seconds_total                counter  usage_ms / 1000          sum of ...use_time
connections_errors_total           counter  connections_errors       --
connections_lost_total             counter  connections_lost         --
checks_total                       counter  checks_run               --
checks_skipped_total               counter  checks_skipped           --
checks_failed_total                counter  checks_failed            --
resets_rollback_total              counter  resets_rollback          --
resets_full_total                  counter  resets_full              --
connections_discarded_total        counter  connections_discarded    --
connections_expired_total          counter  connections_expired      --
connections_idle_closed_total      counter  connections_idle_closed  --
connections_leaked_total           counter  connections_leaked       --
connections_replaced_total         counter  connections_replaced     --
keepalives_total                   counter  keepalives_run           --
resets_none_total                  counter  resets_none              --
redirects_total                    counter  redirects                --
failovers_total                    counter  failovers                --
endpoint_switches_total            counter  endpoint_switches        --
redirect_errors_total              counter  redirect_errors          --
connects_rejected_total            counter  connects_rejected        --
=================================  =======  =======================  =============================

``...`` abbreviates ``db.client.connection.``; ``wait_time``, ``create_time`` and
``use_time`` are OTel histograms in seconds, of which these counters carry the count
and the sum (rate(sum) / rate(count) = the mean). ``connections_ms`` and ``usage_ms``
are exported only when the pool reports them.

**Event metrics.** For a pool with events (a :class:`~mssql_pool.ConnectionPool`), the
collector is also a listener of every event (:mod:`mssql_pool.events`) and exports what
happened from the events themselves, the one record of recovery that the alerts, traces
and the demo's report read too:

=================================  =======  =============================================
name (after ``mssql_pool_``)       type     meaning
=================================  =======  =============================================
events_total{kind="..."}           counter  events of each kind (every kind, from 0)
discards_total{reason="..."}       counter  ``discard`` events by reason (dead, idle...)
reconnecting                       gauge    1 from ``reconnect_started`` until
                                            ``reconnect_succeeded``/``_aborted``, else 0
reconnect_failed_total             counter  ``reconnect_failed`` events: alert on its rate
=================================  =======  =============================================

Keys that a pool reports but this table does not know are exported as gauges named
``mssql_pool_<key>`` (a gauge is never wrong about a value that may go down; a
counter that went down would be). Keys absent from a pool's stats are simply not
exported for it. Milliseconds become seconds, per Prometheus convention.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ConfigError
from .events import DISCARD_REASONS, EventBus, EventKind, PoolEvent
from .stats import STATS

__all__ = ["PoolCollector", "EventCounts", "register", "unregister", "METRICS", "EVENT_COUNTERS",
           "COUNTED_FROM"]


class _StatsSource(Protocol):
    """What the collector needs from a pool: a name and a stats dict."""

    name: str

    def get_stats(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class MetricSpec:
    """How one ``get_stats()`` key is exported."""

    key: str
    name: str  # without namespace and without the ``_total`` suffix
    kind: str  # "gauge" or "counter"
    help: str
    scale: float = 1.0
    otel: str = ""


#: Built from :data:`mssql_pool.stats.STATS`, the one table of stats keys (the table in
#: this module's docstring and in docs/operations.md show the same).
METRICS: tuple[MetricSpec, ...] = tuple(
    MetricSpec(stat.key, stat.metric, stat.kind, stat.help, stat.scale, stat.otel)
    for stat in STATS if stat.metric is not None
)
_BY_KEY: dict[str, MetricSpec] = {spec.key: spec for spec in METRICS}
# pool_available feeds the state-labelled connections gauge, not a metric of its own.
_CONSUMED = frozenset({"pool_available"})
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


def _prometheus() -> Any:
    """Import prometheus_client's collector core, or explain how to get it."""
    try:
        from prometheus_client import core
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "mssql_pool.metrics needs prometheus-client: pip install 'mssql_pool[metrics]'"
        ) from exc
    return core


#: ``discard`` reasons that are not counted in ``connections_discarded`` (nothing was
#: wrong with the connection), and those counted in ``connections_expired``.
_RETIRED = frozenset({"idle", "lifetime", "drained", "pool_closed"})
_EXPIRED = frozenset({"lifetime", "drained"})
_RESET_KEYS = {"none": "resets_none", "rollback": "resets_rollback", "full": "resets_full",
               "callback": "resets_full"}
#: The ``get_stats()`` counters the collector rebuilds from events: every counter of
#: :data:`mssql_pool.stats.STATS`.
EVENT_COUNTERS: tuple[str, ...] = tuple(spec.key for spec in METRICS if spec.kind == "counter")

#: What each counter is counted from (docs/operations.md shows this table; the rules
#: are ``_STAT_RULES`` below).
COUNTED_FROM: dict[str, str] = {
    "requests_num": "`checkout` events",
    "requests_queued": "`checkout`, `checkout_failed` and `queue_wait` events with a `wait`",
    "requests_wait_ms": "the sum of the `wait` of those events",
    "requests_timeouts": "`checkout_failed` events with `reason` `timeout`",
    "requests_errors": "`checkout_failed` events with another `reason` than `timeout` or "
                       "`cancelled`",
    "usage_ms": "the sum of the `duration` of `checkin` events",
    "connections_num": "`connect` events",
    "connections_ms": "the sum of the `duration` of `connect` events",
    "connections_errors": "`connect_failed` events but those of an open circuit (`reason` "
                          "`circuit_open`)",
    "connections_lost": "`check_failed` and `keepalive_failed` events, and `checkin` events "
                        "with `reason` `lost`",
    "connections_discarded": "`discard` events with a `reason` other than `idle`, "
                             "`lifetime`, `drained` and `pool_closed`",
    "connections_expired": "`discard` events with `reason` `lifetime` or `drained`",
    "connections_idle_closed": "`discard` events with `reason` `idle`",
    "connections_leaked": "`discard` events with `reason` `leaked`",
    "connections_replaced": "`replaced` events",
    "checks_run": "`check` and `check_failed` events",
    "checks_skipped": "`checkout` events with `reason` `skipped`",
    "checks_failed": "`check_failed` events",
    "keepalives_run": "`keepalive` and `keepalive_failed` events",
    "resets_none": "`checkin` events with `reset` `none`",
    "resets_rollback": "`checkin` events with `reset` `rollback`",
    "resets_full": "`checkin` events with `reset` `full` or `callback`",
    "redirects": "`redirect` events without `error_info`",
    "failovers": "`failover` events",
    "endpoint_switches": "`connect` events with a `to_endpoint`",
    "redirect_errors": "`redirect` events with `error_info`",
    "connects_rejected": "`connect_rejected` events",
}


_Rule = Callable[[PoolEvent, dict[str, float]], None]


def _checkout(e: PoolEvent, c: dict[str, float]) -> None:
    c["requests_num"] += 1
    if e.reason == "skipped":
        c["checks_skipped"] += 1
    if e.wait is not None:
        _queued(e, c)


def _checkout_failed(e: PoolEvent, c: dict[str, float]) -> None:
    if e.reason == "timeout":
        c["requests_timeouts"] += 1
    elif e.reason != "cancelled":     # the async pool's requests_cancelled, not an error
        c["requests_errors"] += 1
    if e.wait is not None:
        _queued(e, c)


def _queued(e: PoolEvent, c: dict[str, float]) -> None:
    c["requests_queued"] += 1
    c["requests_wait_ms"] += (e.wait or 0.0) * 1000.0


def _checkin(e: PoolEvent, c: dict[str, float]) -> None:
    c["usage_ms"] += (e.duration or 0.0) * 1000.0
    c[_RESET_KEYS.get(e.reset or "none", "resets_none")] += 1
    if e.reason == "lost":
        c["connections_lost"] += 1


def _connect(e: PoolEvent, c: dict[str, float]) -> None:
    c["connections_num"] += 1
    c["connections_ms"] += (e.duration or 0.0) * 1000.0
    if e.to_endpoint is not None:
        c["endpoint_switches"] += 1


def _redirect(e: PoolEvent, c: dict[str, float]) -> None:
    c["redirects" if e.error_info is None else "redirect_errors"] += 1


def _connect_failed(e: PoolEvent, c: dict[str, float]) -> None:
    if e.reason != "circuit_open":    # refused without a login
        c["connections_errors"] += 1


def _discard(e: PoolEvent, c: dict[str, float]) -> None:
    reason = e.reason
    if reason not in _RETIRED:
        c["connections_discarded"] += 1
    elif reason in _EXPIRED:
        c["connections_expired"] += 1
    elif reason == "idle":
        c["connections_idle_closed"] += 1
    if reason == "leaked":
        c["connections_leaked"] += 1


def _counting(*keys: str) -> _Rule:
    def count(e: PoolEvent, c: dict[str, float]) -> None:
        for key in keys:
            c[key] += 1
    return count


#: How each event moves the ``get_stats()`` counters (in their units: ms for ``*_ms``).
_STAT_RULES: dict[EventKind, _Rule] = {
    EventKind.CHECKOUT: _checkout,
    EventKind.CHECKOUT_FAILED: _checkout_failed,
    EventKind.QUEUE_WAIT: _queued,
    EventKind.CHECKIN: _checkin,
    EventKind.CONNECT: _connect,
    EventKind.CONNECT_FAILED: _connect_failed,
    EventKind.DISCARD: _discard,
    EventKind.CHECK: _counting("checks_run"),
    EventKind.CHECK_FAILED: _counting("checks_run", "checks_failed", "connections_lost"),
    EventKind.KEEPALIVE: _counting("keepalives_run"),
    EventKind.KEEPALIVE_FAILED: _counting("keepalives_run", "connections_lost"),
    EventKind.REPLACED: _counting("connections_replaced"),
    EventKind.REDIRECT: _redirect,
    EventKind.FAILOVER: _counting("failovers"),
    EventKind.CONNECT_REJECTED: _counting("connects_rejected"),
}


_Snapshot = tuple[dict[EventKind, int], dict[str, int], bool, dict[str, float]]


class EventCounts:
    """A listener counting one pool's events: what the collector exports.

    :meth:`stats` gives the ``get_stats()`` counters rebuilt from the events (same keys,
    same units), counted from the moment this listener was added."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.kinds: dict[EventKind, int] = dict.fromkeys(EventKind, 0)
        self.discards: dict[str, int] = dict.fromkeys(sorted(DISCARD_REASONS), 0)
        self.counters: dict[str, float] = dict.fromkeys(EVENT_COUNTERS, 0.0)
        self.reconnecting = False

    def __call__(self, event: PoolEvent) -> None:
        kind = event.kind
        rule = _STAT_RULES.get(kind)
        with self._lock:
            self.kinds[kind] += 1
            if rule is not None:
                rule(event, self.counters)
            if kind is EventKind.DISCARD:
                reason = event.reason if event.reason in self.discards else "other"
                self.discards[reason or "other"] += 1
            elif kind is EventKind.RECONNECT_STARTED:
                self.reconnecting = True
            elif kind in (EventKind.RECONNECT_SUCCEEDED, EventKind.RECONNECT_ABORTED):
                self.reconnecting = False

    def stats(self) -> dict[str, float]:
        """The counters of ``get_stats()`` that events carry, as counted so far."""
        with self._lock:
            return dict(self.counters)

    def snapshot(self) -> _Snapshot:
        with self._lock:
            return dict(self.kinds), dict(self.discards), self.reconnecting, \
                dict(self.counters)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class PoolCollector:
    """A Prometheus collector exporting one or more pools: counters from their events,
    gauges from ``get_stats()`` (see the module docstring).

    ``pools`` is a pool or an iterable of pools (anything with ``name`` and
    ``get_stats()``; with ``add_listener``/``remove_listener`` too for the event
    counters). Register it with ``registry.register(collector)``, or use
    :func:`register`. Pools can be added and removed later with :meth:`add` (which adds
    the collector's listener to the pool) and :meth:`remove` (which removes it); the
    collector is thread-safe.
    """

    def __init__(
        self, pools: _StatsSource | Iterable[_StatsSource] = (), namespace: str = "mssql_pool"
    ) -> None:
        _prometheus()
        if not namespace or _NAME_OK.search(namespace) or namespace[0].isdigit():
            raise ConfigError("namespace", f"must be a Prometheus identifier, got {namespace!r}")
        self.namespace = namespace
        self._lock = threading.Lock()
        self._pools: list[_StatsSource] = []
        self._counts: dict[int, EventCounts] = {}     # id(pool) -> its event listener
        if isinstance(pools, Iterable):
            for pool in pools:
                self.add(pool)
        else:
            self.add(pools)

    @property
    def pools(self) -> tuple[_StatsSource, ...]:
        with self._lock:
            return tuple(self._pools)

    def add(self, pool: _StatsSource) -> None:
        """Export ``pool`` too. Its name must differ from every pool already exported."""
        name = getattr(pool, "name", None)
        if not callable(getattr(pool, "get_stats", None)) or not isinstance(name, str):
            raise ConfigError("pool", f"needs a str .name and a .get_stats() method, got {pool!r}")
        with self._lock:
            if any(p is pool for p in self._pools):
                return
            if any(p.name == name for p in self._pools):
                raise ConfigError("pool", f"another exported pool is already named {name!r}")
            self._pools.append(pool)
            bus = getattr(pool, "events", None)
            add_listener = getattr(pool, "add_listener", None)
            if isinstance(bus, EventBus):
                # inline: counting takes a few microseconds and never blocks; on the pool's
                # threads it sees every event at once (no queue to lag or overflow)
                counts = EventCounts()
                bus.add(counts, inline=True)
                self._counts[id(pool)] = counts
            elif add_listener is not None:
                counts = EventCounts()
                add_listener(counts)
                self._counts[id(pool)] = counts

    def remove(self, pool: _StatsSource) -> None:
        """Stop exporting ``pool`` (no error if it was not exported)."""
        with self._lock:
            self._pools = [p for p in self._pools if p is not pool]
            counts = self._counts.pop(id(pool), None)
        if counts is not None:
            getattr(pool, "remove_listener", lambda fn: None)(counts)

    def _full(self, name: str) -> str:
        return f"{self.namespace}_{name}"

    def describe(self) -> list[Any]:
        """The metric families this collector can produce (without samples)."""
        return list(self._families([], []))

    def collect(self) -> Iterator[Any]:
        """Called by prometheus_client on every scrape."""
        samples: list[tuple[str, Mapping[str, Any]]] = []
        events: list[tuple[str, _Snapshot]] = []
        with self._lock:
            pools = list(self._pools)
            counts = dict(self._counts)
        for pool in pools:
            stats = dict(pool.get_stats())
            listener = counts.get(id(pool))
            if listener is not None:
                snap = listener.snapshot()
                # The counters come from the events; get_stats() gives the gauges.
                stats.update(snap[3])
                events.append((pool.name, snap))
            samples.append((pool.name, stats))
        return self._families(samples, events)

    def _event_families(self, events: list[tuple[str, _Snapshot]]) -> Iterator[Any]:
        core = _prometheus()
        by_kind = core.CounterMetricFamily(
            self._full("events"), "Pool events by kind (see mssql_pool.events).",
            labels=["pool", "kind"])
        discards = core.CounterMetricFamily(
            self._full("discards"), "Connections discarded, by reason (discard events).",
            labels=["pool", "reason"])
        reconnecting = core.GaugeMetricFamily(
            self._full("reconnecting"),
            "1 while the pool cannot connect (reconnect_started until it ends), else 0.",
            labels=["pool"])
        failed = core.CounterMetricFamily(
            self._full("reconnect_failed"),
            "reconnect_failed events: connecting failed for reconnect_timeout seconds.",
            labels=["pool"])
        for pool_name, (kinds, reasons, on, _) in events:
            for kind, n in kinds.items():
                by_kind.add_metric([pool_name, kind.value], float(n))
            for reason, n in reasons.items():
                discards.add_metric([pool_name, reason], float(n))
            reconnecting.add_metric([pool_name], 1.0 if on else 0.0)
            failed.add_metric([pool_name], float(kinds[EventKind.RECONNECT_FAILED]))
        yield from (by_kind, discards, reconnecting, failed)

    def _families(self, samples: list[tuple[str, Mapping[str, Any]]],
                  events: list[tuple[str, _Snapshot]]) -> Iterator[Any]:
        yield from self._event_families(events)
        core = _prometheus()
        conns = core.GaugeMetricFamily(
            self._full("connections"),
            "Connections in the pool by state (idle = available, used = borrowed).",
            labels=["pool", "state"],
        )
        for pool_name, stats in samples:
            size, idle = _number(stats.get("pool_size")), _number(stats.get("pool_available"))
            if size is not None and idle is not None:
                conns.add_metric([pool_name, "idle"], idle)
                conns.add_metric([pool_name, "used"], max(size - idle, 0.0))
        yield conns
        for spec in METRICS:
            family_cls = (
                core.CounterMetricFamily if spec.kind == "counter" else core.GaugeMetricFamily
            )
            family = family_cls(self._full(spec.name), spec.help, labels=["pool"])
            for pool_name, stats in samples:
                value = _number(stats.get(spec.key))
                if value is not None:
                    family.add_metric([pool_name], value * spec.scale)
            yield family
        # Keys this version does not know: gauges, one family per key.
        extra: dict[str, list[tuple[str, float]]] = {}
        for pool_name, stats in samples:
            for key, raw in stats.items():
                value = _number(raw)
                if key in _BY_KEY or key in _CONSUMED or value is None:
                    continue
                extra.setdefault(_NAME_OK.sub("_", str(key)), []).append((pool_name, value))
        for key, values in sorted(extra.items()):
            gauge = core.GaugeMetricFamily(
                self._full(key), f"Pool statistic {key!r} (see get_stats()).", labels=["pool"]
            )
            for pool_name, value in values:
                gauge.add_metric([pool_name], value)
            yield gauge


_registered: weakref.WeakKeyDictionary[Any, dict[str, PoolCollector]] = weakref.WeakKeyDictionary()
_registered_lock = threading.Lock()


def _resolve_registry(registry: Any) -> Any:
    if registry is None:
        return _prometheus().REGISTRY
    return registry


def register(
    pool: _StatsSource, registry: Any = None, *, namespace: str = "mssql_pool"
) -> PoolCollector:
    """Export ``pool`` in ``registry`` (default: prometheus_client's global REGISTRY).

    One collector per registry and namespace is created on first use and reused, so
    calling this for several pools adds them under the same metric names with their
    own ``pool`` label. Returns that collector.
    """
    registry = _resolve_registry(registry)
    with _registered_lock:
        per_registry = _registered.setdefault(registry, {})
        collector = per_registry.get(namespace)
        if collector is None:
            collector = PoolCollector((), namespace=namespace)
            collector.add(pool)
            registry.register(collector)
            per_registry[namespace] = collector
        else:
            collector.add(pool)
    return collector


def unregister(pool: _StatsSource, registry: Any = None, *, namespace: str = "mssql_pool") -> None:
    """Stop exporting ``pool`` from ``registry`` (e.g. after ``pool.close()``)."""
    registry = _resolve_registry(registry)
    with _registered_lock:
        collector = _registered.get(registry, {}).get(namespace)
    if collector is not None:
        collector.remove(pool)
