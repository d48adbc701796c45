"""Fast paths for what a pool sends most: health checks and the reset RPC.

A batch whose text is a constant ``SELECT`` (``SELECT 1``, ``SELECT 1 AS ok``, ``SELECT
'x'``) always gets the same reply for a given TDS version and transaction state, so the reply
is encoded once (through the normal path) and then sent from a cache keyed by the raw request
bytes. The ``sp_reset_connection`` RPC without parameters resets the session and gets a cached
``RETURNSTATUS 0, DONEPROC``. Anything else, or any armed fault, added latency or pending
KILL, takes the normal path, so faults and statistics behave the same either way.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

from . import _protocol as P
from ._results import ReturnStatus

if TYPE_CHECKING:
    from ._session import Session

_CONSTANT = re.compile(
    r"^\s*SELECT\s+(?:-?\d+|N?'[^']{0,50}')(?:\s+(?:AS\s+)?[A-Za-z_]\w*)?\s*;?\s*$", re.I)
_RESET = P.ucs2("sp_reset_connection")
_RESET_BODY = (len(_RESET) // 2).to_bytes(2, "little") + _RESET  # name length in characters
MAX_TEXT = 200  # bytes of batch text worth looking at
MAX_ENTRIES = 1024

_replies: dict[tuple[bytes, int, bool], bytes] = {}
_not_constant: set[bytes] = set()
_lock = threading.Lock()


def _remember(cache_key: tuple[bytes, int, bool], reply: bytes) -> None:
    with _lock:
        if len(_replies) >= MAX_ENTRIES:
            _replies.clear()
        _replies[cache_key] = reply


def reply(session: Session, ptype: int, status: int, payload: bytes) -> bytes | None:
    """The whole reply when the request can take a fast path; None otherwise."""
    srv = session.server
    ex = session.executor
    if (ex is None or status & P.STATUS_RESETCONNECTION or srv.latency > 0
            or session.killed.is_set() or srv._faults.pending()):
        return None
    body = payload[P.skip_all_headers(payload, session.major):]
    if ptype == P.PKT_SQL_BATCH:
        if len(body) > MAX_TEXT or body in _not_constant:
            return None
        key = (body, session.major, ex.state.trancount > 0)
        cached = _replies.get(key)
        if cached is None:
            text = body.decode("utf-16-le", "replace")
            if not _CONSTANT.match(text):
                with _lock:
                    if len(_not_constant) >= MAX_ENTRIES:
                        _not_constant.clear()
                    _not_constant.add(body)
                return None
            cached = session._encode(ex.run_batch(text, session.wait), P.TOK_DONE)
            _remember(key, cached)
        else:
            ex.state.rowcount = 1
            ex.state.error = 0
        srv._count("batches")
        return cached
    if ptype == P.PKT_RPC and body[:40] == _RESET_BODY and len(body) <= 42:
        ex.reset()
        key = (_RESET_BODY, session.major, False)
        cached = _replies.get(key)
        if cached is None:
            cached = session._encode([ReturnStatus(0)], P.TOK_DONEPROC)
            _remember(key, cached)
        srv._count("rpcs")
        return cached
    return None
