"""What happens when a connection comes back: the cheapest reset that is still complete.

The proxy records, per connection, a small bit set (:data:`WORK`, :data:`TXN`,
:data:`SESSION`, :data:`DISCARD`; see :mod:`mssql_pool._scan`) from the statements it saw.
On return the pool picks:

==========================  ====================================================================
what happened               reset="auto" (default)
==========================  ====================================================================
nothing executed since the  nothing: no round trip
last commit/rollback, and
no transaction control
(statements that leave
nothing behind are not
recorded: pure reads read
to the end on SQL Server,
any statement without
transaction control under
autocommit; see
connection.quiet_mask)
statements executed, or     rollback, one round trip (:func:`rollback_work`): ``IF @@TRANCOUNT >
transactions controlled     0 ROLLBACK TRAN`` asks the server, so a hand-written BEGIN TRAN (in
(BEGIN/COMMIT/ROLLBACK/     autocommit mode, or nested under pymssql's own) is ended even when
SAVE TRAN, procedures,      ``commit()``/``rollback()`` were called after it
dynamic SQL)
session state changed       full reset (below)
(SET option, ``#temp``,
USE, CONTEXT_INFO,
sp_set_session_context,
isolation level, DECLARE
CURSOR, autocommit toggled,
dynamic SQL from a
variable)
impersonation (EXECUTE AS,  discard the connection (``sp_reset_connection`` cannot undo them)
SETUSER), app role, app
lock, read-only session
context key
==========================  ====================================================================

On a server without ``sp_reset_connection`` (Babelfish for PostgreSQL) the first full
reset raises :class:`ResetUnsupported`; the pool logs it once at INFO and from then on
closes, instead of resetting, a connection whose session state changed (rollbacks are
unaffected). No checkout or return fails because of it.

``reset="full"`` does the full reset on every return; ``reset="rollback"`` never sends
``sp_reset_connection``: work is rolled back and a connection whose session state
changed is discarded instead (the next borrower must never see it). A callable
``reset(raw_conn)`` replaces the built-in logic and runs whenever anything was executed;
if it raises, the connection is discarded.

**Full reset on pymssql** (:func:`mssql_pool._driver.reset_rpc` can send the RPC):

1. if the borrower toggled ``autocommit``, put it back first (pymssql sends ROLLBACK TRAN
   or BEGIN TRAN for the toggle; doing it before step 2 keeps that valid);
2. ``sp_reset_connection`` as an RPC: aborts the transaction (including pymssql's own
   BEGIN TRAN), drops #temp tables, closes cursors, resets SET options and CONTEXT_INFO,
   returns to the login database;
3. one batch restoring what the reset does not: ``SET TRANSACTION ISOLATION LEVEL READ
   COMMITTED``, pymssql's SET baseline (or the ``conn_properties`` given at connect), and
   ``BEGIN TRAN`` when autocommit is off: pymssql's contract is that a transaction is
   always open in that mode (its ``commit()``/``rollback()`` end one and begin the next),
   so we re-open the one the reset aborted rather than leaving the driver out of step;
4. ``configure(raw)`` again.

**Full reset on other drivers** (``connect=factory`` without ``_conn``): ``rollback()``,
then the hook ``raw.reset_session()`` if the connection has one (the fake driver in
tests/unit/fakedb.py does), then ``configure``. Without a hook the session state cannot
be cleared and the connection is discarded.

The scan (:func:`mssql_pool._scan.scan`, also ``scan_sql`` here) is a dict lookup for a
statement text seen before and a small tokenizer otherwise: cheap enough for every
``execute``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from ._driver import autocommit_state, non_query, reset_rpc, reset_unsupported
from ._scan import DISCARD, FAILED, HELD, PENDING, SESSION, TXN, WORK, scan

__all__ = [
    "WORK", "SESSION", "DISCARD", "TXN", "scan_sql", "PYMSSQL_BASELINE", "full_reset",
    "rollback_work", "plan", "Reset", "NONE", "ROLLBACK", "FULL", "CALLBACK", "ResetUnsupported",
    "NO_FULL_RESET", "HELD", "PENDING", "FAILED", "LEARN_BATCH",
]

class Reset(enum.IntEnum):
    """The reset :func:`plan` picks for a returned connection (an int: the state machine
    counts them as ``resets_none``, ``resets_rollback`` and ``resets_full``)."""

    NONE = 0        #: nothing to undo: no round trip
    ROLLBACK = 1    #: roll back the work (:func:`rollback_work`)
    FULL = 2        #: reset the session (:func:`full_reset`)
    CALLBACK = 3    #: the user's ``reset(raw_conn)`` callable


#: The members under their short names (``reset.FULL`` is ``Reset.FULL``).
NONE, ROLLBACK, FULL, CALLBACK = Reset.NONE, Reset.ROLLBACK, Reset.FULL, Reset.CALLBACK

#: What pymssql sends after login (``_mssql.pyx``), restored after sp_reset_connection.
PYMSSQL_BASELINE = (
    "SET ARITHABORT ON;SET CONCAT_NULL_YIELDS_NULL ON;SET ANSI_NULLS ON;"
    "SET ANSI_NULL_DFLT_ON ON;SET ANSI_PADDING ON;SET ANSI_WARNINGS ON;"
    "SET CURSOR_CLOSE_ON_COMMIT ON;SET QUOTED_IDENTIFIER ON;SET TEXTSIZE 2147483647;"
)

#: The old name of :func:`mssql_pool._scan.scan`.
scan_sql = scan


def plan(flags: int, mode: str | Callable[[Any], object]) -> Reset | str:
    """Decide the reset for a returned connection. A str result is a reason to discard."""
    if flags & DISCARD:
        return "it holds session state no reset can clear (app role, app lock, read-only key)"
    if mode == "auto":
        return FULL if flags & SESSION else (ROLLBACK if flags else NONE)
    if mode == "full":
        return FULL
    if mode == "rollback":
        if flags & SESSION:
            return "its session state changed and reset='rollback' forbids a full reset"
        return ROLLBACK if flags else NONE
    return CALLBACK if flags else NONE


#: One round trip instead of pymssql's two (ROLLBACK TRAN, then BEGIN TRAN); also ends a
#: transaction the user opened by hand in autocommit mode, where pymssql's rollback() is a
#: no-op.
ROLLBACK_BATCH = "IF @@TRANCOUNT > 0 ROLLBACK TRAN"


#: The rollback batch that also asks which engine this is (once per connection).
LEARN_BATCH = ROLLBACK_BATCH + ";BEGIN TRAN;SELECT @@VERSION"


def rollback_work(raw: Any, rec: Any = None) -> None:
    """Roll back whatever the borrower left open and restore the driver's transaction state.

    pymssql: one batch, ``IF @@TRANCOUNT > 0 ROLLBACK TRAN`` plus ``BEGIN TRAN`` when
    autocommit is off (pymssql keeps a transaction open in that mode). Other drivers:
    ``raw.rollback()``.

    ``rec`` is the connection's record. When it asks to learn the engine
    (:func:`mssql_pool.connection.quiet_mask`), the same batch ends with
    ``SELECT @@VERSION``: on SQL Server and Azure SQL (``Microsoft SQL ...``) a pure read
    leaves nothing in pymssql's open transaction under READ COMMITTED, so from then on the
    proxy no longer records one (:data:`WORK` becomes a quiet bit for this connection).
    """
    execute_non_query = non_query(raw)
    if execute_non_query is None:
        raw.rollback()
    elif autocommit_state(raw):
        execute_non_query(ROLLBACK_BATCH)
    elif rec is not None and rec.learn:
        cur = raw.cursor(as_dict=False)
        try:
            cur.execute(LEARN_BATCH)
            rows = cur.fetchall()
        finally:
            cur.close()
        version = str(rows[0][0]) if rows and rows[0] else ""
        rec.learn = False
        rec.free = WORK if version.startswith("Microsoft SQL") else 0
    else:
        execute_non_query(ROLLBACK_BATCH + ";BEGIN TRAN")


class ResetUnsupported(Exception):
    """The server has no ``sp_reset_connection`` (Babelfish for PostgreSQL resets only on the
    TDS header's RESETCONNECTION flag, which FreeTDS cannot send). The pool then discards,
    instead of resetting, a connection whose session state changed."""


#: Why a connection is closed instead of fully reset on such a server.
NO_FULL_RESET = "its session state changed and the server has no sp_reset_connection"


def full_reset(raw: Any, *, autocommit: bool | None, conn_properties: str | None,
               configure: Callable[[Any], None] | None) -> None:
    """Full session reset; see the module docstring. Raises on any failure (-> discard).

    ``autocommit`` is the mode the connection was created in (None when unknown).
    """
    send_reset = reset_rpc(raw)
    if send_reset is not None:
        if autocommit is not None and bool(autocommit_state(raw)) != autocommit:
            raw.autocommit(autocommit)
        try:
            send_reset()
        except Exception as exc:
            if reset_unsupported(exc):
                raise ResetUnsupported(str(exc)) from exc
            raise
        batch = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED;" + (
            PYMSSQL_BASELINE if conn_properties is None else conn_properties
        )
        if autocommit is False or (autocommit is None and not autocommit_state(raw)):
            batch += " BEGIN TRAN"
        execute_non_query = non_query(raw)
        if execute_non_query is None:
            raise RuntimeError("the driver connection sends RPCs but has no execute_non_query")
        execute_non_query(batch)
    else:
        hook = getattr(raw, "reset_session", None)
        if hook is None:
            raise RuntimeError("the driver connection has neither sp_reset_connection support "
                               "nor a reset_session() hook")
        raw.rollback()
        hook()
    if configure is not None:
        configure(raw)
