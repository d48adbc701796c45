"""Health checks: whether a connection is checked on checkout, and how.

On checkout the pool runs ``check`` unless the connection came back less than
``validate_after`` seconds ago (HikariCP's bypass window) *and* nothing marked it
suspect. A connection is suspect when a disconnect error was seen (on any connection of
the pool, or by a failed check) after it was opened: after a server restart the first
error marks every connection opened before it, so the pool checks (and replaces) them
all in one pass instead of failing once per stale connection. Connections opened after
the error are not suspect, and a brand-new connection is never checked.

The window is a trade: a connection whose server died less than ``validate_after``
seconds after it came back can reach a caller unchecked. Its first error marks it dead
(discarded on return) and every older connection suspect, so the damage is one failed
statement, which the transaction layer retries. ``validate_after=0`` checks every
checkout (one extra round trip each).

``check`` is SQL text (default ``SELECT 1``, run on a cursor and fetched), a callable
``check(raw_conn)`` that raises (or returns ``False``) on failure, or ``None`` (no check).
Keepalive pings run the same check (``SELECT 1`` when ``check`` is None).

pymssql has no per-connection timeout (``timeout`` is process-wide, FACTS.md): a check
on a connection whose peer vanished without a FIN waits for the driver's ``timeout``.
Use ``keepalive`` and a finite pymssql ``timeout`` if that matters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ConnectionCheckFailed

__all__ = ["run_check", "DEFAULT_CHECK"]

DEFAULT_CHECK = "SELECT 1"


def run_check(check: str | Callable[[Any], object] | None, raw: Any) -> None:
    """Run ``check`` on the driver connection ``raw``; raise if it fails."""
    if check is None:
        check = DEFAULT_CHECK
    if callable(check):
        if check(raw) is False:
            raise ConnectionCheckFailed("the check callable returned False")
        return
    cur = raw.cursor()
    try:
        cur.execute(check)
        if cur.description is not None:
            cur.fetchall()
    finally:
        cur.close()
