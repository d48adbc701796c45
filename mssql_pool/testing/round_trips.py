"""Round trips: how many requests a unit of work costs on the wire, counted exactly.

A round trip is one request message from the client (a SQL batch, an RPC, a Transaction
Manager request) and the server's reply. Round trips are deterministic, so a unit's cost
is an exact number, not a timing. Two ways to count:

* :func:`server_requests`: the :class:`~mssql_pool.testing.TdsServer`'s own ``requests``
  counter, every request it answered (all sessions);
* :class:`RequestTap`: parses a client's byte stream and records each request with its text.
  A TCP proxy feeding it what clients send counts (and traces) the requests sent to any
  server, including one without a counter (Babelfish, SQL Server).

Both are zero-argument callables returning a running total, which is what
:func:`requests_per_unit` takes::

    count = server_requests(server)
    cost = requests_per_unit(count, unit, units=20)   # a Fraction, e.g. Fraction(2, 1)

A unit that must be counted exactly has to be the only client of the counter while it runs
(a pool's background checks would count too: give such pools a clock that does not move).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from . import _protocol as P

if TYPE_CHECKING:
    from .server import TdsServer

__all__ = ["Request", "RequestTap", "requests_per_unit", "server_requests"]

Counter = Callable[[], int]

#: request message types and how a trace names them
_KINDS = {P.PKT_SQL_BATCH: "batch", P.PKT_RPC: "rpc", P.PKT_TRANSACTION: "tm",
          P.PKT_BULK: "bulk"}
_TM_NAMES = {5: "BEGIN TRAN", 7: "COMMIT TRAN", 8: "ROLLBACK TRAN", 9: "SAVE TRAN",
             0: "GET DTC ADDRESS"}
_TLS_CONTENT_TYPES = range(0x14, 0x18)  # change cipher spec, alert, handshake, data
_MAX_MESSAGE = 4 * 1024 * 1024


def server_requests(server: TdsServer) -> Counter:
    """A counter over the server's ``requests`` statistic (batches + RPCs + TM requests)."""

    def count() -> int:
        return server.stats()["requests"]

    return count


def requests_per_unit(count: Counter, unit: Callable[[], object], units: int = 10,
                      warm: int = 1) -> Fraction:
    """Requests per unit over ``units`` runs of ``unit`` after ``warm`` uncounted ones.

    The result is exact (a :class:`~fractions.Fraction`); a deterministic unit gives a whole
    number. ``warm`` runs first so that connecting and first-use work is not counted.
    """
    if units < 1:
        raise ValueError(f"units must be >= 1, got {units!r}")
    if warm < 0:
        raise ValueError(f"warm must be >= 0, got {warm!r}")
    for _ in range(warm):
        unit()
    before = count()
    for _ in range(units):
        unit()
    return Fraction(count() - before, units)


@dataclass(frozen=True)
class Request:
    """One request message: ``kind`` (batch, rpc, tm, bulk), its text and which stream."""

    kind: str
    text: str
    stream: int = 0

    def __str__(self) -> str:
        return self.text if self.kind == "batch" else f"{self.kind}:{self.text}"


class RequestTap:
    """Parse what a client sends (TDS packets) and record each request message.

    :meth:`feed` takes the client-to-server bytes in any chunking. PRELOGIN and LOGIN7 are
    not requests, nor is an ATTENTION (a cancel; counted in :attr:`attentions`); TLS
    records (an encrypted login) are skipped whole, so a login-only
    encryption leaves the requests after it readable. With full encryption nothing after
    the handshake can be read: :attr:`opaque` then turns True and counts stay at zero.
    ``major`` is the TDS version's major byte, taken from LOGIN7 when it is readable.
    Several taps (one per connection) can share a ``sink`` list; appends are locked.
    """

    def __init__(self, sink: list[Request] | None = None, stream: int = 0,
                 major: int = 0x74, lock: threading.Lock | None = None) -> None:
        self.requests: list[Request] = [] if sink is None else sink
        self.stream = stream
        self.major = major
        self.opaque = False
        self.attentions = 0
        self._lock = lock or threading.Lock()
        self._buf = bytearray()
        self._msg = bytearray()
        self._msg_type: int | None = None
        self._count = 0
        self._tls_data_records = 0

    def __call__(self) -> int:
        """Requests this tap has seen (a counter for :func:`requests_per_unit`)."""
        return self._count

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 5:
            if buf[pos] in _TLS_CONTENT_TYPES and buf[pos + 1] == 0x03:
                size = 5 + struct.unpack_from(">H", buf, pos + 3)[0]
                if len(buf) - pos < size:
                    break
                if buf[pos] == 0x17:
                    # application data: the encrypted LOGIN7 of a login-only encryption is
                    # one record; more means the whole stream is encrypted
                    self._tls_data_records += 1
                    self.opaque = self._tls_data_records > 1
                pos += size
                continue
            if len(buf) - pos < 8:
                break
            ptype, status = buf[pos], buf[pos + 1]
            length = struct.unpack_from(">H", buf, pos + 2)[0]
            if length < 8:
                self.opaque = True   # not TDS: stop reading this stream
                buf.clear()
                return
            if len(buf) - pos < length:
                break
            self._packet(ptype, status, bytes(buf[pos + 8: pos + length]))
            pos += length
        del buf[:pos]

    def _packet(self, ptype: int, status: int, payload: bytes) -> None:
        if ptype == P.PKT_LOGIN7:
            if len(payload) >= 8:
                self.major = payload[7]   # TDSVersion, e.g. 0x74000004 little-endian
            return
        if ptype == P.PKT_ATTENTION:
            # a cancel: not a request (the server counts it apart), but a round trip of
            # its own (the client waits for the acknowledgement)
            self._msg.clear()
            self._msg_type = None
            self.attentions += 1
            return
        kind = _KINDS.get(ptype)
        if kind is None:
            return   # PRELOGIN (TLS handshake), SSPI, federated auth...
        if self._msg_type != ptype:
            self._msg.clear()
            self._msg_type = ptype
        if len(self._msg) + len(payload) <= _MAX_MESSAGE:
            self._msg += payload
        if status & P.STATUS_EOM:
            text = self._describe(ptype, bytes(self._msg))
            self._msg.clear()
            self._msg_type = None
            with self._lock:
                self.requests.append(Request(kind, text, self.stream))
                self._count += 1

    def _describe(self, ptype: int, payload: bytes) -> str:
        try:
            if ptype == P.PKT_SQL_BATCH:
                return P.parse_sql_batch(payload, self.major)
            if ptype == P.PKT_RPC:
                return ";".join(c.name for c in P.parse_rpc(payload, self.major))
            if ptype == P.PKT_TRANSACTION:
                req = P.parse_transaction(payload, self.major)
                name = _TM_NAMES.get(req.kind, f"TM {req.kind}")
                return name + (" + BEGIN TRAN" if req.begin_after else "")
        except (P.ProtocolError, ValueError, IndexError, struct.error):
            pass
        return "?"
