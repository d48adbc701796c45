"""Pool statistics: the one table of the keys of ``pool.get_stats()`` / ``pool.pop_stats()``.

:data:`STATS` lists every key once: whether it is a gauge or a counter, its unit, what it
counts, and its Prometheus metric. :mod:`mssql_pool.metrics` exports from it and the
tables of docs/operations.md are checked against it (tests/test_docs.py), so the code,
the metrics and the docs cannot drift apart.

Gauges describe the pool now; counters grow from the pool's creation (``get_stats``) or
from the previous ``pop_stats()`` call (which returns them and sets them back to zero;
gauges are never reset). Every checkout ends in exactly one of ``requests_num``,
``requests_timeouts`` and ``requests_errors``; ``requests_wait_ms`` adds the wait of every
queued checkout, however it ended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PoolStats", "Stat", "STATS", "COUNTERS", "GAUGES", "ENDPOINT_KEYS"]


@dataclass(frozen=True)
class Stat:
    """One key of ``get_stats()``: ``kind`` "gauge" or "counter"; ``meaning`` is the
    docs' text (Markdown); ``metric`` the Prometheus name after the namespace (None: not
    exported on its own); ``scale`` turns ms into seconds; ``otel`` names the
    OpenTelemetry instrument it corresponds to; ``source`` "pool" or "endpoints"."""

    key: str
    kind: str
    unit: str
    meaning: str
    metric: str | None = None
    scale: float = 1.0
    otel: str = ""
    source: str = "pool"

    @property
    def help(self) -> str:
        """The meaning as plain text (Prometheus HELP)."""
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", self.meaning)
        return text.replace("`", "")


_C = "counter"
STATS: tuple[Stat, ...] = (
    Stat("pool_min", "gauge", "connections", "the configured `min_size`", "min_size",
         otel="db.client.connection.idle.min"),
    Stat("pool_max", "gauge", "connections", "the configured `max_size`", "max_size",
         otel="db.client.connection.max"),
    Stat("pool_size", "gauge", "connections", "connections open or being opened", "size",
         otel="sum of db.client.connection.count"),
    Stat("pool_available", "gauge", "connections", "idle connections, ready to hand out"),
    Stat("requests_waiting", "gauge", "callers", "callers queued for a connection right now",
         "requests_waiting", otel="db.client.connection.pending_requests"),
    Stat("requests_num", _C, "checkouts", "checkouts granted", "requests",
         otel="count of db.client.connection.wait_time"),
    Stat("requests_queued", _C, "checkouts",
         "checkouts that had to wait, for a returned connection or a new one",
         "requests_queued"),
    Stat("requests_wait_ms", _C, "ms",
         "total time queued checkouts waited, those that timed out or were refused included",
         "requests_wait_seconds", 0.001, otel="sum of db.client.connection.wait_time"),
    Stat("requests_timeouts", _C, "checkouts",
         "checkouts that ended with `PoolTimeout` at their timeout", "requests_timeouts",
         otel="db.client.connection.timeouts"),
    Stat("requests_errors", _C, "checkouts",
         "checkouts refused before their timeout: `TooManyRequests`, `PoolClosed`, a login "
         "the connect policy gave up on (`PoolTimeout`), an open circuit while no connection "
         "is open (`PoolCircuitOpen`), or a caller interrupted while waiting or checking",
         "requests_errors"),
    Stat("usage_ms", _C, "ms", "total time connections were held by borrowers",
         "usage_seconds", 0.001, otel="sum of db.client.connection.use_time"),
    Stat("connections_num", _C, "connections", "connections opened successfully",
         "connections_opened", otel="count of db.client.connection.create_time"),
    Stat("connections_ms", _C, "ms", "total time spent opening them (login + `configure`)",
         "connections_open_seconds", 0.001, otel="sum of db.client.connection.create_time"),
    Stat("connections_errors", _C, "attempts",
         "failed connection attempts (a login failed, or `configure` raised); refusals of an "
         "open circuit, which send no login, are not counted", "connections_errors"),
    Stat("connections_lost", _C, "connections",
         "connections found dead: by a check on checkout, by `pool.check()`, by a keepalive "
         "ping, or by a disconnect error in use", "connections_lost"),
    Stat("connections_discarded", _C, "connections",
         "connections closed instead of reused because something was wrong with them: dead "
         "(however it was found), failed or impossible reset, invalidated, leaked, or "
         "interrupted during a check or a reset; each once", "connections_discarded"),
    Stat("connections_expired", _C, "connections",
         "connections retired after `max_lifetime`, or by `drain()`", "connections_expired"),
    Stat("connections_idle_closed", _C, "connections",
         "idle connections above `min_size` closed after `max_idle`",
         "connections_idle_closed"),
    Stat("connections_leaked", _C, "connections",
         "proxies garbage-collected without being returned", "connections_leaked"),
    Stat("connections_replaced", _C, "connections",
         "connections found dead by the first statement of an unchecked checkout (bypass "
         "window) and replaced under the caller, the statement run once more on the "
         "replacement; each is also counted in `connections_lost` and "
         "`connections_discarded`", "connections_replaced"),
    Stat("checks_run", _C, "checks", "health checks run on checkout and by `pool.check()`",
         "checks"),
    Stat("checks_skipped", _C, "checks", "checks bypassed (returned within `validate_after`)",
         "checks_skipped"),
    Stat("checks_failed", _C, "checks", "checks that failed", "checks_failed"),
    Stat("keepalives_run", _C, "pings", "keepalive pings of idle connections", "keepalives"),
    Stat("resets_none", _C, "returns", "returns that needed no round trip", "resets_none"),
    Stat("resets_rollback", _C, "returns", "returns that needed a rollback",
         "resets_rollback"),
    Stat("resets_full", _C, "returns",
         "returns that needed a full session reset (`sp_reset_connection`)", "resets_full"),
    Stat("redirects", _C, "connections",
         "new connections found to have been routed to another node (Azure gateway "
         "redirect; needs [`identify`](configuration.md#identify))", "redirects",
         source="endpoints"),
    Stat("failovers", _C, "events",
         "the pool moved: to another endpoint because the current one failed, or to another "
         "node behind the same endpoint", "failovers", source="endpoints"),
    Stat("endpoint_switches", _C, "events", "the endpoint new connections go to first changed",
         "endpoint_switches", source="endpoints"),
    Stat("redirect_errors", _C, "logins",
         "`RedirectError` raised (a second routing hop or a routing loop)", "redirect_errors",
         source="endpoints"),
    Stat("connects_rejected", _C, "attempts",
         "connect attempts refused without a login: an endpoint's circuit was open or it "
         "asked for a throttling pause", "connects_rejected", source="endpoints"),
)

GAUGES = tuple(s.key for s in STATS if s.kind == "gauge")
#: The pool's own counters (the fields of :class:`PoolStats`).
COUNTERS = tuple(s.key for s in STATS if s.kind == "counter" and s.source == "pool")
#: Counters kept by the pool's endpoints (mssql_pool.endpoints.ENDPOINT_COUNTERS).
ENDPOINT_KEYS = tuple(s.key for s in STATS if s.source == "endpoints")


class PoolStats:
    """The counters (plain attributes, updated under the pool lock). Two are kept folded
    for the hot path and unfolded by :meth:`snapshot`: ``fast`` (checkouts handed out
    without a check: each is one ``requests_num`` and, when the pool has a check, one
    ``checks_skipped``) and ``usage_s`` (``usage_ms`` in seconds)."""

    __slots__ = (*COUNTERS, "fast", "usage_s", "has_check")

    def __init__(self, has_check: bool = True) -> None:
        self.has_check = has_check
        self.fast = 0
        self.usage_s = 0.0
        self.requests_num = 0
        self.requests_queued = 0
        self.requests_wait_ms = 0.0
        self.requests_timeouts = 0
        self.requests_errors = 0
        self.usage_ms = 0.0      # float internally; whole ms in snapshots
        self.connections_num = 0
        self.connections_ms = 0.0
        self.connections_errors = 0
        self.connections_lost = 0
        self.connections_discarded = 0
        self.connections_expired = 0
        self.connections_idle_closed = 0
        self.connections_leaked = 0
        self.connections_replaced = 0
        self.checks_run = 0
        self.checks_skipped = 0
        self.checks_failed = 0
        self.keepalives_run = 0
        self.resets_none = 0
        self.resets_rollback = 0
        self.resets_full = 0

    def fold(self) -> None:
        """Move the hot path's folded counts into their counters."""
        if self.fast:
            self.requests_num += self.fast
            if self.has_check:
                self.checks_skipped += self.fast
            self.fast = 0
        if self.usage_s:
            self.usage_ms += self.usage_s * 1000.0
            self.usage_s = 0.0

    def snapshot(self, reset: bool = False) -> dict[str, int]:
        self.fold()
        out: dict[str, int] = {}
        for key in COUNTERS:
            out[key] = int(getattr(self, key))
            if reset:
                setattr(self, key, 0)
        return out
