"""Health checks: whether a connection is checked on checkout, and how.

On checkout the pool runs ``check`` unless the connection came back less than
``validate_after`` seconds ago (HikariCP's bypass window) *and* nothing marked it
suspect. A connection is suspect when a disconnect error was seen (on any connection of
the pool, or by a failed check) after it was opened: after a server restart the first
error marks every connection opened before it, so the pool checks (and replaces) them
all in one pass instead of failing once per stale connection. Connections opened after
the error are not suspect, a connection that passes that check is trusted again (its
window applies until the next disconnect), and a brand-new connection is never checked.

The window is a trade: a connection whose server died less than ``validate_after``
seconds after it came back can reach a caller unchecked. Its first error marks it dead
(discarded on return) and every older connection suspect. The pool then hides that
error when it safely can (:func:`may_replay`): if the *first* statement of a checkout
that ran no check fails because the connection was already dead, the proxy discards the
driver connection, takes a validated replacement within the caller's checkout timeout,
swaps it in (a new driver cursor under the same :class:`~mssql_pool.connection.PooledCursor`)
and runs the statement once more (stat ``connections_replaced``). Otherwise, or if no
replacement comes in time, the caller sees the original error: one failed statement,
which the transaction layer retries. ``validate_after=0`` checks every checkout (one
extra round trip each) and never needs the replay.

What "safely" means, from pymssql's behaviour (seen with FreeTDS packet traces and a TCP
proxy cutting the exchange at each point): pymssql *does* send the batch on a connection
whose peer already closed; the write succeeds and the read fails, reported as 20047
"DBPROCESS is dead or not enabled". A reset before the request reached the server, after
the server ran it, after its reply began and a peer that closed while the connection was
idle are all reported exactly the same way. So 20047 never proves the statement did not
run; a replay is safe only where either

* the statement certainly never left the client: ``InterfaceError('Not connected to any
  MS SQL server')`` is raised before any I/O (replayed in either autocommit mode); or
* running it cannot have changed anything that outlives the dead session: the driver
  connection is in pymssql's default mode (``autocommit`` off: pymssql's own ``BEGIN
  TRAN`` is open, and the server rolls back the work of a session that dies
  uncommitted), the checkout started at that baseline (the reset on return guarantees
  it), and the scan (:mod:`mssql_pool._scan`) finds no transaction control in the batch
  (no ``COMMIT``, ``ROLLBACK``, ``BEGIN/SAVE TRAN``), no procedure call (``EXEC``, or a
  bare procedure name as the batch's first statement: a procedure may commit) and no
  dynamic SQL.

``ROLLBACK; INSERT ...`` (the INSERT then runs in autocommit), ``p_move 1, 2`` (a
procedure called without EXEC) and anything in autocommit mode are therefore never
replayed after a 20047. Errors that name any other DB-Library number (20017 unexpected
EOF, 20004 read failed, 20006 write failed, 20003 timeout) are never replayed. Only
``cursor.execute`` is replayed (not ``executemany`` or ``callproc``); other cursors opened
on the proxy before that statement stay on the dead connection, and a ``raw`` reference
taken before it goes stale (``conn.raw`` is updated).

``check`` is SQL text (default ``SELECT 1``, run on a cursor and fetched), a callable
``check(raw_conn)`` that raises (or returns ``False``) on failure, or ``None`` (no check).
Keepalive pings run the same check (``SELECT 1`` when ``check`` is None).

pymssql has no per-connection timeout: ``timeout`` and ``login_timeout`` are process-wide
(FreeTDS's dbsettime/dbsetlogintime; the last connection's value applies to every open
connection, see docs/configuration.md). A check on a connection whose peer vanished
without a FIN waits for the driver's ``timeout``.
Use ``keepalive`` and a finite pymssql ``timeout`` if that matters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._driver import DEAD, NOT_SENT, autocommit_state, dead_on_arrival
from ._scan import TXN, scan
from .errors import ConnectionCheckFailed

__all__ = ["check_connection", "DEFAULT_CHECK", "may_replay"]

DEFAULT_CHECK = "SELECT 1"


def check_connection(check: str | Callable[[Any], object] | None, raw: Any) -> None:
    """Run the pool's health ``check`` on the driver connection ``raw``; raise if it fails.

    (Not the ``mssql-pool check`` command: that is :func:`mssql_pool._check.diagnose`.)
    """
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


#: The old name of :func:`check_connection`.
run_check = check_connection


def may_replay(exc: BaseException, raw: Any, operation: object) -> bool:
    """Whether a failed first statement may run again on a replacement connection.

    True when the driver says the statement never left the client
    (:data:`mssql_pool._driver.NOT_SENT`), and when it failed on a connection that was
    already dead (:data:`mssql_pool._driver.DEAD`) while the connection was in pymssql's
    default mode (autocommit off: the work of a session that died is rolled back by the
    server) and the scan of ``operation`` finds nothing that could end or escape that
    transaction (:data:`mssql_pool._scan.TXN`: transaction control, a procedure call,
    dynamic SQL). Everything else is False. The caller guarantees the rest: the statement
    is the first of an unchecked checkout that began at the baseline transaction count
    (nothing else ran on the connection).
    """
    shape = dead_on_arrival(exc)
    if shape == NOT_SENT:
        return True
    if shape != DEAD or autocommit_state(raw) is not False:
        return False
    return not scan(operation) & TXN
