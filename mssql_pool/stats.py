"""Pool statistics: the documented keys of ``pool.get_stats()`` / ``pool.pop_stats()``.

Gauges describe the pool now; counters grow from the pool's creation (``get_stats``) or
from the previous ``pop_stats()`` call (which returns them and sets them back to zero;
gauges are never reset).

Gauges:

``pool_min``, ``pool_max``
    configured ``min_size`` / ``max_size``.
``pool_size``
    connections open or being opened.
``pool_available``
    idle connections, ready to hand out.
``requests_waiting``
    callers queued for a connection right now.

Counters:

``requests_num``
    checkouts granted.
``requests_queued``
    checkouts that had to wait in the queue.
``requests_wait_ms``
    total milliseconds spent waiting by queued checkouts.
``requests_timeouts``
    checkouts that ended with ``PoolTimeout``.
``requests_errors``
    checkouts refused with ``TooManyRequests`` or ``PoolClosed``.
``usage_ms``
    total milliseconds connections were held by borrowers.
``connections_num``
    connections opened successfully.
``connections_ms``
    total milliseconds spent opening them (connect + ``configure``).
``connections_errors``
    failed connection attempts (connect or ``configure`` raised).
``connections_lost``
    connections found dead: failed check, failed keepalive, or a disconnect error.
``connections_discarded``
    connections closed instead of reused (dead, failed reset, invalidated, failed check).
``connections_expired``
    connections retired after ``max_lifetime`` (or by ``drain()``).
``connections_idle_closed``
    idle connections above ``min_size`` closed after ``max_idle``.
``connections_leaked``
    proxies garbage-collected without being returned.
``connections_replaced``
    connections found dead by the first statement of a checkout that ran no check
    (``validate_after`` window) and replaced under the caller, the statement replayed
    once (see :func:`mssql_pool.health.may_replay`). Each is also counted in
    ``connections_lost`` and ``connections_discarded``, and its replacement's checkout in
    ``requests_num``.
``checks_run``, ``checks_skipped``, ``checks_failed``
    health checks on checkout: run, bypassed (``validate_after`` window), failed.
``keepalives_run``
    keepalive pings of idle connections.
``resets_rollback``, ``resets_full``
    returns that needed a rollback / a full session reset (``resets_none``: neither).
"""

from __future__ import annotations

__all__ = ["PoolStats", "COUNTERS", "GAUGES"]

GAUGES = ("pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting")
COUNTERS = (
    "requests_num", "requests_queued", "requests_wait_ms", "requests_timeouts",
    "requests_errors", "usage_ms", "connections_num", "connections_ms", "connections_errors",
    "connections_lost", "connections_discarded", "connections_expired",
    "connections_idle_closed", "connections_leaked", "connections_replaced", "checks_run",
    "checks_skipped", "checks_failed", "keepalives_run", "resets_none", "resets_rollback",
    "resets_full",
)


class PoolStats:
    """The counters (plain int attributes, updated under the pool lock)."""

    __slots__ = COUNTERS

    def __init__(self) -> None:
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

    def snapshot(self, reset: bool = False) -> dict[str, int]:
        out: dict[str, int] = {}
        for key in COUNTERS:
            out[key] = int(getattr(self, key))
            if reset:
                setattr(self, key, 0)
        return out
