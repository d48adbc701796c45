"""A small TCP proxy on 127.0.0.1 that cuts, delays and blackholes traffic on cue.

It sits between pymssql and a server (the TDS test server or anything else), so network
faults happen independently of the server's own fault hooks::

    proxy = TcpProxy(("127.0.0.1", server.port)).start()
    pool = ConnectionPool(f"mssql://sa:...@127.0.0.1:{proxy.port}/master")
    proxy.cut()          # reset every open connection now (busy ones mid-query)
    proxy.blackhole()    # a partition: nothing passes, sockets stay open, new ones hang
    proxy.heal()         # traffic flows again; connections that lost bytes are reset
    proxy.delay(0.5)     # every chunk waits this long (latency)
    proxy.refuse()       # new connections are reset at once (a port nobody listens on)
    proxy.arm("after_send", match="marker")   # cut one request/reply exchange (below)

Blackhole semantics: bytes sent during the partition are dropped, as a real partition
drops packets, and on ``heal()`` every connection that lost bytes is reset (its two ends
no longer agree on the TDS stream). Bytes are never delivered late, so a COMMIT sent
into the partition cannot land after the client gave up on it.

Cutting one exchange: ``arm(point, match=..., offset=0)`` waits for the next request
(SQL batch or RPC) whose UCS-2 text contains ``match`` and resets that connection at
``point``:

* ``"request"``: the request is dropped; the server never receives it;
* ``"after_send"``: the request reaches the server, which runs it; its whole reply is
  dropped;
* ``"reply"``: the first ``offset`` bytes of the reply reach the client, then the reset;
* ``"after_reply"``: the whole reply reaches the client, then the reset (the client has
  its answer; its next request meets a dead connection).

``armed()`` is True until the cut happened. (Cutting *before* a request is sent is
``cut()`` while the connection is idle.)

``stats()``: ``accepted``, ``active``, ``bytes_up`` (client to server), ``bytes_down``,
``cut`` (connections reset by cut/heal/refuse), ``exchanges_cut`` (cuts made by ``arm``),
and with ``TcpProxy(..., tap=True)`` ``requests``: request messages clients sent (batches,
RPCs, TM requests), i.e. round trips, and ``attentions`` (cancels), counted on the wire so
that it works for any server; :meth:`requests` lists them with their text
(``mssql_pool.testing.round_trips.RequestTap``). The first 4 KiB each client sent are kept
(the PRELOGIN and LOGIN7 packets; no TLS with the test server): :meth:`login_packet`.
Every thread is named and daemonic; ``close()`` joins them.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mssql_pool.testing.round_trips import Request, RequestTap

__all__ = ["TcpProxy", "tcp_proxy_factory"]

_CHUNK = 65536
_TICK = 0.02


def _quietly(fn: Callable[..., object], *args: Any) -> None:
    try:
        fn(*args)
    except OSError:
        pass


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), like a middlebox dropping the connection."""
    _quietly(sock.setsockopt, socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _quietly(sock.close)


class _Pair:
    """One proxied connection: client socket, server socket, two pump threads."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, ident: int) -> None:
        self.proxy = proxy
        self.client = client
        self.server: socket.socket | None = None
        self.ident = ident
        self.closed = threading.Event()
        self.lost_bytes = False
        self.captured = bytearray()
        self.threads: list[threading.Thread] = []
        self.tap = (RequestTap(proxy._requests, ident, lock=proxy._lock)
                    if proxy.tapped else None)
        # An armed cut caught by this connection: (point, offset), and the reply so far.
        self.cutting: tuple[str, int] | None = None
        self.reply = bytearray()

    def run(self) -> None:
        p = self.proxy
        # A partition also stops new connections: wait (client's login timeout decides).
        while p._blackholed.is_set() and not self.closed.is_set() and not p._closing.is_set():
            time.sleep(_TICK)
        if self.closed.is_set() or p._closing.is_set():
            self.close(reset=True)
            return
        try:
            self.server = socket.create_connection(p.target, timeout=5.0)
            self.server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            self.close(reset=True)   # target down: the client sees a reset, as if refused
            return
        down = threading.Thread(target=self._pump, args=(self.server, self.client, False),
                                name=f"tcp-proxy-{p.port}-{self.ident}-down", daemon=True)
        self.threads.append(down)
        down.start()
        self._pump(self.client, self.server, True)
        down.join(5.0)

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        p = self.proxy
        try:
            while not self.closed.is_set():
                try:
                    ready, _, _ = select.select([src], [], [], _TICK)
                except (OSError, ValueError):
                    break
                if not ready:
                    continue
                try:
                    data = src.recv(_CHUNK)
                except OSError:
                    break
                if not data:
                    break
                if p._blackholed.is_set():
                    self.lost_bytes = True       # dropped by the partition
                    continue
                if up and len(self.captured) < 4096:
                    self.captured += data[: 4096 - len(self.captured)]
                if up and self.tap is not None:
                    self.tap.feed(data)
                if up and self.cutting is None and p._arm is not None \
                        and data[:1] in (b"\x01", b"\x03"):
                    self.cutting = p._take_arm(data)
                    if self.cutting is not None and self.cutting[0] == "request":
                        self.close(reset=True)
                        break
                if not up and self.cutting is not None:
                    if self._cut_reply(dst, data):
                        break
                    continue
                delay = p._delay
                if delay > 0:
                    time.sleep(delay)
                try:
                    dst.sendall(data)
                except OSError:
                    break
                p._count("bytes_up" if up else "bytes_down", len(data))
        finally:
            self.close(reset=False)

    def _cut_reply(self, dst: socket.socket, data: bytes) -> bool:
        """Pass on what the armed cut lets through; True once the connection is reset."""
        assert self.cutting is not None
        point, offset = self.cutting
        before = len(self.reply)
        self.reply += data
        if point == "reply" and before < offset:
            _quietly(dst.sendall, bytes(self.reply[before:offset]))
        elif point == "after_reply":
            _quietly(dst.sendall, data)
        if point == "reply" and len(self.reply) >= offset or _complete(self.reply):
            if point == "after_reply":
                time.sleep(_TICK)   # let the client read the whole reply first
            self.close(reset=True)
            return True
        return False

    def close(self, reset: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.server):
            if sock is None:
                continue
            if reset:
                _reset(sock)
            else:
                _quietly(sock.shutdown, socket.SHUT_RDWR)
                _quietly(sock.close)
        if reset:
            self.proxy._count("cut")
        self.proxy._forget(self)


def _complete(reply: bytes | bytearray) -> bool:
    """Whether ``reply`` holds a whole TDS message (a packet with the end-of-message bit)."""
    pos = 0
    while pos + 8 <= len(reply):
        length = struct.unpack(">H", reply[pos + 2: pos + 4])[0]
        if length < 8 or pos + length > len(reply):
            return False
        if reply[pos + 1] & 0x01:
            return True
        pos += length
    return False


class TcpProxy:
    """A TCP proxy from ``127.0.0.1:port`` to ``target`` with faults on cue."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0,
                 tap: bool = False) -> None:
        self.target = target
        self.tapped = tap
        self._requests: list[Request] = []
        self._gone_attentions = 0
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._pairs: dict[int, _Pair] = {}
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._blackholed = threading.Event()
        self._refusing = False
        self._delay = 0.0
        self._next = 0
        self._stats = {"accepted": 0, "bytes_up": 0, "bytes_down": 0, "cut": 0,
                       "exchanges_cut": 0}
        self._arm: tuple[str, bytes, int, int] | None = None
        self._captures: list[bytearray] = []

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> TcpProxy:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((self.host, self.port))
        lsock.listen(256)
        lsock.settimeout(_TICK * 2)
        self.port = lsock.getsockname()[1]
        self._listener = lsock
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name=f"tcp-proxy-{self.port}-accept")
        self._accept_thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._accept_thread is not None:
            self._accept_thread.join(5.0)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.cut()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(5.0)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    # -- faults ------------------------------------------------------------------------
    def cut(self) -> int:
        """Reset every open connection now; returns how many."""
        with self._lock:
            pairs = list(self._pairs.values())
        for pair in pairs:
            pair.close(reset=True)
        return len(pairs)

    def blackhole(self) -> None:
        """Drop every byte both ways and hold new connections, sockets left open."""
        self._blackholed.set()

    def heal(self) -> None:
        """End a blackhole (resetting connections that lost bytes), delay and refusal."""
        self._blackholed.clear()
        self._delay = 0.0
        self._refusing = False
        with self._lock:
            lost = [p for p in self._pairs.values() if p.lost_bytes]
        for pair in lost:
            pair.close(reset=True)

    def delay(self, seconds: float) -> None:
        """Hold every chunk ``seconds`` before forwarding it (0 turns it off)."""
        self._delay = float(seconds)

    def refuse(self) -> None:
        """Reset new connections at once (existing ones keep working)."""
        self._refusing = True

    def retarget(self, target: tuple[str, int]) -> None:
        """Send new connections to ``target`` (existing ones stay where they are)."""
        self.target = target

    def arm(self, point: str, *, match: str, offset: int = 0, times: int = 1) -> None:
        """Cut the next ``times`` requests containing ``match`` at ``point`` (see the module
        doc); ``stats()["exchanges_cut"]`` counts the cuts made."""
        if point not in ("request", "after_send", "reply", "after_reply"):
            raise ValueError(f"point must be request, after_send, reply or after_reply, "
                             f"got {point!r}")
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times!r}")
        with self._lock:
            self._arm = (point, match.encode("utf-16-le"), int(offset), int(times))

    def armed(self) -> bool:
        with self._lock:
            return self._arm is not None

    def disarm(self) -> None:
        with self._lock:
            self._arm = None

    def _take_arm(self, request: bytes) -> tuple[str, int] | None:
        with self._lock:
            if self._arm is None or self._arm[1] not in request:
                return None
            point, match, offset, times = self._arm
            self._arm = (point, match, offset, times - 1) if times > 1 else None
            self._stats["exchanges_cut"] += 1
        return point, offset

    # -- inspection --------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._stats)
            out["active"] = len(self._pairs)
            if self.tapped:
                out["requests"] = len(self._requests)
                out["attentions"] = sum(p.tap.attentions for p in self._pairs.values()
                                        if p.tap is not None) + self._gone_attentions
        return out

    def requests(self, since: int = 0) -> list[Request]:
        """Request messages seen (``tap=True``), in arrival order, from index ``since``."""
        with self._lock:
            return list(self._requests[since:])

    def request_count(self) -> int:
        """How many request messages went through (``tap=True``): a round-trip counter."""
        with self._lock:
            return len(self._requests)

    def login_packet(self, index: int = -1) -> bytes | None:
        """The LOGIN7 payload (without the 8-byte header) client ``index`` sent, or None."""
        with self._lock:
            data = bytes(self._captures[index])
        pos = 0
        while pos + 8 <= len(data):
            ptype = data[pos]
            length = struct.unpack(">H", data[pos + 2: pos + 4])[0]
            if ptype == 0x10:
                return bytes(data[pos + 8: pos + length])
            pos += max(length, 8)
        return None

    # -- internals ---------------------------------------------------------------------
    def _accept_loop(self) -> None:
        lsock = self._listener
        assert lsock is not None
        while not self._closing.is_set():
            try:
                client, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._count("accepted")
            if self._refusing:
                _reset(client)
                self._count("cut")
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._next += 1
                pair = _Pair(self, client, self._next)
                self._pairs[pair.ident] = pair
                self._captures.append(pair.captured)
                t = threading.Thread(target=pair.run, daemon=True,
                                     name=f"tcp-proxy-{self.port}-{pair.ident}-up")
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()

    def _forget(self, pair: _Pair) -> None:
        with self._lock:
            if self._pairs.pop(pair.ident, None) is not None and pair.tap is not None:
                self._gone_attentions += pair.tap.attentions

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] = self._stats.get(key, 0) + n


TcpProxyFactory = Callable[..., TcpProxy]


@pytest.fixture
def tcp_proxy_factory() -> Iterator[TcpProxyFactory]:
    """Call it with a ``(host, port)`` target (or a TdsServer) to start a proxy; all are
    closed after the test."""
    proxies: list[TcpProxy] = []

    def make(target: Any, tap: bool = False) -> TcpProxy:
        if not isinstance(target, tuple):
            target = (target.host, target.port)
        proxy = TcpProxy(target, tap=tap).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
