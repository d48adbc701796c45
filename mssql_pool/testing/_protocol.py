"""TDS codec: packets, PRELOGIN, LOGIN7, tokens and value encodings (MS-TDS, versions 7.0-7.4).

Everything here is pure bytes-in/bytes-out; sockets live in :mod:`._session`. Every parse
function raises :class:`ProtocolError` on malformed input, never anything else.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import socket
import struct
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Packet types
PKT_SQL_BATCH = 0x01
PKT_RPC = 0x03
PKT_REPLY = 0x04
PKT_ATTENTION = 0x06
PKT_BULK = 0x07
PKT_TRANSACTION = 0x0E
PKT_LOGIN7 = 0x10
PKT_SSPI = 0x11
PKT_PRELOGIN = 0x12

STATUS_EOM = 0x01
STATUS_RESETCONNECTION = 0x08

# Tokens
TOK_COLMETADATA = 0x81
TOK_ERROR = 0xAA
TOK_INFO = 0xAB
TOK_RETURNVALUE = 0xAC
TOK_LOGINACK = 0xAD
TOK_ROW = 0xD1
TOK_ENVCHANGE = 0xE3
TOK_RETURNSTATUS = 0x79
TOK_DONE = 0xFD
TOK_DONEPROC = 0xFE
TOK_DONEINPROC = 0xFF

DONE_FINAL = 0x00
DONE_MORE = 0x01
DONE_ERROR = 0x02
DONE_INXACT = 0x04
DONE_COUNT = 0x10
DONE_ATTN = 0x20

ENV_DATABASE = 1
ENV_LANGUAGE = 2
ENV_PACKETSIZE = 4
ENV_COLLATION = 7
ENV_BEGINTRAN = 8
ENV_COMMITTRAN = 9
ENV_ROLLBACKTRAN = 10
ENV_RESETACK = 18
ENV_ROUTING = 20

# SQL_Latin1_General_CP1_CI_AS
COLLATION = bytes([0x09, 0x04, 0xD0, 0x00, 0x34])

#: Largest request a logged-in session may send (bytes over all its packets).
MAX_MESSAGE = 16 * 1024 * 1024
#: Largest PRELOGIN or LOGIN7 message (a real one is a few hundred bytes).
MAX_LOGIN_MESSAGE = 64 * 1024
HEADER = struct.Struct(">BBHHBB")


class ProtocolError(Exception):
    """The peer sent bytes that are not valid TDS (the session is closed)."""


class PeerClosed(Exception):
    """The peer closed the socket."""


# ---------------------------------------------------------------------------------- packets


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:  # a bad session, not a goodbye: the session logs it
                raise ProtocolError(f"truncated packet: the peer closed after {len(buf)} of "
                                    f"{n} bytes")
            raise PeerClosed()
        buf += chunk
    return bytes(buf)


def read_packet(sock: socket.socket) -> tuple[int, int, bytes]:
    """One packet: (type, status, payload)."""
    head = recv_exact(sock, 8)
    ptype, status, length, _spid, _pid, _win = HEADER.unpack(head)
    if length < 8 or length > 65535:
        raise ProtocolError(f"bad packet length {length}")
    try:
        return ptype, status, recv_exact(sock, length - 8)
    except PeerClosed:
        raise ProtocolError(f"truncated packet: the peer closed after its header (length "
                            f"{length})") from None


def read_message(sock: socket.socket, limit: int = MAX_MESSAGE) -> tuple[int, int, bytes]:
    """A whole message (packets up to end-of-message): (type, first status, payload).

    More than ``limit`` bytes in one message is a :class:`ProtocolError`.
    """
    ptype, status, payload = read_packet(sock)
    first_status = status
    parts = [payload]
    total = len(payload)
    while not status & STATUS_EOM:
        try:
            t, status, payload = read_packet(sock)
        except PeerClosed:
            raise ProtocolError("truncated message: the peer closed before its last packet"
                                ) from None
        if t == PKT_ATTENTION:
            # an attention in the middle of a message: the message is abandoned
            return PKT_ATTENTION, status, b""
        if t != ptype:
            raise ProtocolError(f"packet type changed mid-message ({ptype:#x} -> {t:#x})")
        total += len(payload)
        if total > limit:
            raise ProtocolError(f"message larger than the limit of {limit} bytes")
        parts.append(payload)
    return ptype, first_status, b"".join(parts)


def frame(ptype: int, payload: bytes, packet_size: int, spid: int) -> bytes:
    """Split a message into packets of at most packet_size bytes."""
    size = max(512, packet_size) - 8
    out = bytearray()
    pid = 1
    pos = 0
    while True:
        chunk = payload[pos : pos + size]
        pos += len(chunk)
        last = pos >= len(payload)
        status = STATUS_EOM if last else 0
        out += HEADER.pack(ptype, status, len(chunk) + 8, spid & 0xFFFF, pid & 0xFF, 0)
        out += chunk
        pid += 1
        if last:
            return bytes(out)


# ---------------------------------------------------------------------------------- helpers


def ucs2(s: str) -> bytes:
    return s.encode("utf-16-le")


def b_varchar(s: str) -> bytes:
    data = ucs2(s)
    return bytes([len(data) // 2]) + data


def us_varchar(s: str) -> bytes:
    data = ucs2(s)
    return struct.pack("<H", len(data) // 2) + data


class Reader:
    """A bounds-checked cursor over a payload."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("truncated payload")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def b_varchar(self) -> str:
        n = self.u8()
        return self.take(2 * n).decode("utf-16-le", "replace")

    def us_varchar(self) -> str:
        n = self.u16()
        return self.take(2 * n).decode("utf-16-le", "replace")

    def at_end(self) -> bool:
        return self.pos >= len(self.data)


# ---------------------------------------------------------------------------------- prelogin


def parse_prelogin(payload: bytes) -> dict[int, bytes]:
    opts: dict[int, bytes] = {}
    r = Reader(payload)
    while True:
        token = r.u8()
        if token == 0xFF:
            return opts
        off, ln = struct.unpack(">HH", r.take(4))
        if off + ln > len(payload):
            raise ProtocolError("PRELOGIN option out of bounds")
        opts[token] = payload[off : off + ln]


# PRELOGIN option tokens and the ENCRYPTION option's values
PRELOGIN_VERSION = 0x00
PRELOGIN_ENCRYPTION = 0x01
PRELOGIN_INSTOPT = 0x02
PRELOGIN_THREADID = 0x03
PRELOGIN_MARS = 0x04
ENCRYPT_OFF = 0x00  # only the login packet is encrypted
ENCRYPT_ON = 0x01
ENCRYPT_NOT_SUP = 0x02
ENCRYPT_REQ = 0x03


def build_prelogin(options: Sequence[tuple[int, bytes]]) -> bytes:
    """A PRELOGIN payload: one (token, offset, length) entry per option, 0xFF, the values."""
    head_len = 5 * len(options) + 1
    head = bytearray()
    body = bytearray()
    for token, value in options:
        head += struct.pack(">BHH", token, head_len + len(body), len(value))
        body += value
    return bytes(head) + b"\xff" + bytes(body)


def build_prelogin_reply(version: tuple[int, int, int]) -> bytes:
    """The server's answer: its version, no encryption, MARS off."""
    major, minor, build = version
    return build_prelogin([
        (PRELOGIN_VERSION, struct.pack(">BBHH", major, minor, build, 0)),
        (PRELOGIN_ENCRYPTION, bytes([ENCRYPT_NOT_SUP])),
        (PRELOGIN_INSTOPT, b"\x00"),
        (PRELOGIN_THREADID, b""),
        (PRELOGIN_MARS, b"\x00"),  # FreeTDS needs the option present
    ])


def build_prelogin_request(encryption: int = ENCRYPT_OFF) -> bytes:
    """A client's PRELOGIN: version 0, ``encryption`` (ENCRYPT_OFF asks for the server's
    setting without wanting TLS), the default instance, thread id 0, MARS off."""
    return build_prelogin([
        (PRELOGIN_VERSION, b"\x00" * 6),
        (PRELOGIN_ENCRYPTION, bytes([encryption])),
        (PRELOGIN_INSTOPT, b"\x00"),
        (PRELOGIN_THREADID, b"\x00" * 4),
        (PRELOGIN_MARS, b"\x00"),
    ])


# ---------------------------------------------------------------------------------- login7


@dataclass
class Login7:
    tds_version: int  # as sent, little-endian int (0x74000004 for 7.4)
    packet_size: int
    client_pid: int
    hostname: str
    username: str
    password: str
    appname: str
    servername: str
    library: str
    language: str
    database: str

    @property
    def major(self) -> int:
        """0x70 .. 0x74"""
        v = self.tds_version >> 24
        return v if 0x70 <= v <= 0x74 else 0x74


def encode_password(password: str) -> bytes:
    return bytes((((b << 4) & 0xF0) | (b >> 4)) ^ 0xA5 for b in password.encode("utf-16-le"))


def build_login7(user: str, password: str, database: str, tds_version: int = 0x74000004,
                 packet_size: int = 4096) -> bytes:
    """A LOGIN7 payload as a client sends it (for raw-socket tests and fuzzing)."""
    fields: list[bytes] = [
        ucs2("host"), ucs2(user), encode_password(password), ucs2("mssql_pool-raw"),
        ucs2("server"), b"", ucs2("raw"), b"", ucs2(database),
    ]
    fixed = 94
    data = bytearray()
    offsets = bytearray()
    for raw in fields:
        offsets += struct.pack("<HH", fixed + len(data), len(raw) // 2)
        data += raw
    offsets += b"\x00" * 6  # client id
    offsets += struct.pack("<HH", fixed + len(data), 0) * 3  # SSPI, attach file, new password
    offsets += struct.pack("<I", 0)
    head = struct.pack("<IIIIIIBBBBII", fixed + len(data), tds_version, packet_size, 7, 1, 0,
                       0xE0, 0x03, 0, 0, 0, 0x409)
    return head + bytes(offsets) + bytes(data)


def decode_password(raw: bytes) -> str:
    out = bytearray()
    for b in raw:
        b ^= 0xA5
        out.append(((b << 4) & 0xF0) | (b >> 4))
    return out.decode("utf-16-le", "replace")


def parse_login7(payload: bytes) -> Login7:
    if len(payload) < 72:
        raise ProtocolError("LOGIN7 too short")
    length, version, packet_size, _prog, pid = struct.unpack_from("<IIIII", payload, 0)

    def field_at(pos: int, raw: bool = False) -> Any:
        off, n = struct.unpack_from("<HH", payload, pos)
        if n == 0:
            return b"" if raw else ""
        if off + 2 * n > len(payload):
            raise ProtocolError("LOGIN7 field out of bounds")
        data = payload[off : off + 2 * n]
        return data if raw else data.decode("utf-16-le", "replace")

    return Login7(
        tds_version=version,
        packet_size=packet_size,
        client_pid=pid,
        hostname=field_at(36),
        username=field_at(40),
        password=decode_password(field_at(44, raw=True)),
        appname=field_at(48),
        servername=field_at(52),
        library=field_at(60),
        language=field_at(64),
        database=field_at(68),
    )


# ---------------------------------------------------------------------------------- tokens


def envchange(kind: int, new: str, old: str) -> bytes:
    body = bytes([kind]) + b_varchar(new) + b_varchar(old)
    return bytes([TOK_ENVCHANGE]) + struct.pack("<H", len(body)) + body


def envchange_bytes(kind: int, new: bytes, old: bytes) -> bytes:
    body = bytes([kind, len(new)]) + new + bytes([len(old)]) + old
    return bytes([TOK_ENVCHANGE]) + struct.pack("<H", len(body)) + body


def envchange_routing(host: str, port: int) -> bytes:
    h = ucs2(host)
    value = b"\x00" + struct.pack("<HH", port, len(h) // 2) + h
    body = bytes([ENV_ROUTING]) + struct.pack("<H", len(value)) + value + b"\x00\x00"
    return bytes([TOK_ENVCHANGE]) + struct.pack("<H", len(body)) + body


def message(
    tok: int, number: int, state: int, severity: int, text: str, server: str, proc: str,
    line: int, major: int,
) -> bytes:
    body = struct.pack("<iBB", number, state, severity) + us_varchar(text[:2000])
    body += b_varchar(server[:128]) + b_varchar(proc[:128])
    body += struct.pack("<i", line) if major >= 0x72 else struct.pack("<H", line & 0xFFFF)
    return bytes([tok]) + struct.pack("<H", len(body)) + body


def loginack(client_version: int, prog: str, version: tuple[int, int, int]) -> bytes:
    major = client_version >> 24
    ver = 0x07000000 if major == 0x70 else client_version
    if major not in (0x70, 0x71, 0x72, 0x73, 0x74):
        ver = 0x74000004
    body = b"\x01" + struct.pack(">I", ver) + b_varchar(prog)
    body += struct.pack(">BBH", version[0], version[1], version[2])
    return bytes([TOK_LOGINACK]) + struct.pack("<H", len(body)) + body


def done(status: int, rowcount: int, major: int, tok: int = TOK_DONE, curcmd: int = 0xC1) -> bytes:
    if major >= 0x72:
        return struct.pack("<BHHQ", tok, status, curcmd, rowcount & 0xFFFFFFFFFFFFFFFF)
    return struct.pack("<BHHI", tok, status, curcmd, rowcount & 0xFFFFFFFF)


def returnstatus(value: int) -> bytes:
    return struct.pack("<Bi", TOK_RETURNSTATUS, value)


# ---------------------------------------------------------------------------------- types

# column kinds emitted by the server
K_INT = "int"
K_BIGINT = "bigint"
K_BIT = "bit"
K_FLOAT = "float"
K_DECIMAL = "decimal"
K_NVARCHAR = "nvarchar"
K_VARBINARY = "varbinary"
K_DATETIME = "datetime"
K_DATETIME2 = "datetime2"
K_DATE = "date"
K_GUID = "uniqueidentifier"

PLP_NULL = 0xFFFFFFFFFFFFFFFF
_WIDE = decimal.Context(prec=80)  # decimal(38, s) needs more than the default 28 digits

# kind -> (typeinfo(encoder, column), value(encoder, column, v)): column types added by
# other modules (mssql_pool.testing._types registers tinyint, smallint, real, char...)
EXTRA_KINDS: dict[str, tuple[Any, Any]] = {}
_EPOCH_1900 = _dt.date(1900, 1, 1)


@dataclass
class Column:
    name: str
    kind: str
    size: int = 0  # bytes for strings/binary; -1 = (max)
    precision: int = 38
    scale: int = 0
    nullable: bool = True


def _decimal_len(precision: int) -> int:
    if precision <= 9:
        return 5
    if precision <= 19:
        return 9
    if precision <= 28:
        return 13
    return 17


@dataclass
class Encoder:
    """Writes COLMETADATA and ROW tokens for one TDS version."""

    major: int
    columns: list[Column] = field(default_factory=list)

    def effective(self, col: Column) -> Column:
        # downgrade types a client of this version does not know
        if col.kind in (K_DATETIME2, K_DATE) and self.major < 0x73:
            return Column(col.name, K_DATETIME, nullable=col.nullable)
        return col

    def colmetadata(self, columns: Sequence[Column]) -> bytes:
        self.columns = [self.effective(c) for c in columns]
        out = bytearray([TOK_COLMETADATA]) + struct.pack("<H", len(self.columns))
        for c in self.columns:
            out += struct.pack("<I", 0) if self.major >= 0x72 else struct.pack("<H", 0)
            out += struct.pack("<H", 0x0001 | 0x0008 if c.nullable else 0x0008)
            out += self._typeinfo(c)
            out += b_varchar(c.name[:128])
        return bytes(out)

    def _max(self, c: Column) -> bool:
        return c.size < 0 or c.size > 8000

    def _typeinfo(self, c: Column) -> bytes:
        k = c.kind
        fixed = _FIXED_TYPEINFO.get(k)
        if fixed is not None:
            return fixed
        if k == K_DECIMAL:
            return bytes([0x6A, _decimal_len(c.precision), c.precision, c.scale])
        if k == K_NVARCHAR:
            coll = COLLATION if self.major >= 0x71 else b""
            if self._max(c):
                if self.major >= 0x72:
                    return b"\xe7\xff\xff" + coll
                # NTEXT for old clients: maxlen, collation, table name
                tab = b"\x00\x00" if self.major < 0x72 else b"\x00"
                return b"\x63" + struct.pack("<i", 0x7FFFFFFE) + coll + tab
            return b"\xe7" + struct.pack("<H", max(2, min(c.size, 8000))) + coll
        if k == K_VARBINARY:
            if self._max(c):
                if self.major >= 0x72:
                    return b"\xa5\xff\xff"
                return b"\x22" + struct.pack("<i", 0x7FFFFFFF) + b"\x00\x00"
            return b"\xa5" + struct.pack("<H", max(1, min(c.size, 8000)))
        if k in EXTRA_KINDS:
            return bytes(EXTRA_KINDS[k][0](self, c))
        raise ValueError(f"unknown column kind {k}")

    def row(self, values: Sequence[Any]) -> bytes:
        out = bytearray([TOK_ROW])
        for c, v in zip(self.columns, values, strict=True):
            out += self.value(c, v)
        return bytes(out)

    def value(self, c: Column, v: Any) -> bytes:
        k = c.kind
        if k == K_NVARCHAR:
            return self._var(c, None if v is None else ucs2(str(v)))
        if k == K_VARBINARY:
            return self._var(c, None if v is None else bytes(v))
        if k in EXTRA_KINDS:
            return bytes(EXTRA_KINDS[k][1](self, c, v))
        if k not in _FIXED_KINDS:
            raise ValueError(f"unknown column kind {k}")
        return b"\x00" if v is None else _fixed_value(c, v)

    def _var(self, c: Column, data: bytes | None) -> bytes:
        if not self._max(c):
            if data is None:
                return b"\xff\xff"
            return struct.pack("<H", len(data)) + data
        if self.major >= 0x72:
            if data is None:
                return struct.pack("<Q", PLP_NULL)
            out = struct.pack("<Q", len(data))
            if data:
                out += struct.pack("<I", len(data)) + data
            return out + b"\x00\x00\x00\x00"
        if data is None:
            return b"\x00"
        return b"\x10" + b"\x00" * 16 + b"\x00" * 8 + struct.pack("<i", len(data)) + data


#: TYPE_INFO of the kinds whose description depends on nothing else
_FIXED_TYPEINFO = {
    K_INT: b"\x26\x04",
    K_BIGINT: b"\x26\x08",
    K_BIT: b"\x68\x01",
    K_FLOAT: b"\x6d\x08",
    K_DATETIME: b"\x6f\x08",
    K_DATETIME2: b"\x2a\x07",
    K_DATE: b"\x28",
    K_GUID: b"\x24\x10",
}


_FIXED_KINDS = frozenset(_FIXED_TYPEINFO) | {K_DECIMAL}


def _fixed_value(c: Column, v: Any) -> bytes:
    """A non-NULL value of a kind whose NULL is one zero length byte."""
    k = c.kind
    if k == K_INT:
        return b"\x04" + struct.pack("<i", int(v))
    if k == K_BIGINT:
        return b"\x08" + struct.pack("<q", int(v))
    if k == K_BIT:
        return b"\x01" + (b"\x01" if v else b"\x00")
    if k == K_FLOAT:
        return b"\x08" + struct.pack("<d", float(v))
    if k == K_DECIMAL:
        d = v if isinstance(v, decimal.Decimal) else decimal.Decimal(str(v))
        n = int(d.scaleb(c.scale, _WIDE).to_integral_value(rounding=decimal.ROUND_HALF_EVEN))
        ln = _decimal_len(c.precision)
        return bytes([ln, 0 if n < 0 else 1]) + abs(n).to_bytes(ln - 1, "little")
    if k == K_DATETIME:
        return b"\x08" + encode_datetime(v)
    if k == K_DATETIME2:
        return b"\x08" + encode_datetime2(v)
    if k == K_DATE:
        day: _dt.date = v.date() if isinstance(v, _dt.datetime) else v
        return b"\x03" + (day.toordinal() - 1).to_bytes(3, "little")
    return b"\x10" + uuid.UUID(str(v)).bytes_le  # K_GUID


def encode_datetime(v: Any) -> bytes:
    if isinstance(v, _dt.datetime):
        d, t = v.date(), v.time()
    else:
        d, t = v, _dt.time()
    days = (d - _EPOCH_1900).days
    secs = t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6
    ticks = int(round(secs * 300))
    if ticks >= 300 * 86400:
        days += 1
        ticks -= 300 * 86400
    return struct.pack("<iI", days, ticks)


def encode_datetime2(value: Any) -> bytes:
    v: _dt.datetime = (
        value if isinstance(value, _dt.datetime)
        else _dt.datetime(value.year, value.month, value.day)
    )
    t = ((v.hour * 60 + v.minute) * 60 + v.second) * 10_000_000 + v.microsecond * 10
    return t.to_bytes(5, "little") + (v.date().toordinal() - 1).to_bytes(3, "little")


def encode_rows(major: int, columns: Sequence[Column], rows: Iterable[Sequence[Any]]) -> bytes:
    enc = Encoder(major)
    out = bytearray(enc.colmetadata(columns))
    for r in rows:
        out += enc.row(r)
    return bytes(out)


# ---------------------------------------------------------------------------------- requests


def skip_all_headers(payload: bytes, major: int) -> int:
    """Offset after the ALL_HEADERS block (present at TDS 7.2+)."""
    if major < 0x72 or len(payload) < 4:
        return 0
    total = struct.unpack_from("<I", payload, 0)[0]
    # ALL_HEADERS is at least 4 bytes and at most the payload; otherwise assume it is absent
    if 4 <= total <= len(payload) and total < 1024:
        return int(total)
    return 0


def parse_sql_batch(payload: bytes, major: int) -> str:
    off = skip_all_headers(payload, major)
    if (len(payload) - off) % 2:
        raise ProtocolError("SQL batch text has an odd byte count")
    return payload[off:].decode("utf-16-le", "replace")


PROC_IDS = {
    1: "sp_cursor", 2: "sp_cursoropen", 3: "sp_cursorprepare", 4: "sp_cursorexecute",
    5: "sp_cursorprepexec", 6: "sp_cursorunprepare", 7: "sp_cursorfetch", 8: "sp_cursoroption",
    9: "sp_cursorclose", 10: "sp_executesql", 11: "sp_prepare", 12: "sp_execute",
    13: "sp_prepexec", 14: "sp_prepexecrpc", 15: "sp_unprepare",
}


@dataclass
class RpcParam:
    name: str
    output: bool
    type_id: int
    value: Any


@dataclass
class RpcCall:
    name: str
    params: list[RpcParam]


def parse_rpc(payload: bytes, major: int) -> list[RpcCall]:
    r = Reader(payload, skip_all_headers(payload, major))
    calls: list[RpcCall] = []
    while not r.at_end():
        n = r.u16()
        if n == 0xFFFF:
            pid = r.u16()
            name = PROC_IDS.get(pid, f"#{pid}")
        else:
            name = r.take(2 * n).decode("utf-16-le", "replace")
        r.u16()  # option flags
        params: list[RpcParam] = []
        while not r.at_end():
            b = r.data[r.pos]
            if b in (0x80, 0xFF, 0xFE):  # batch separator between RPC calls
                r.pos += 1
                break
            pname = r.b_varchar()
            status = r.u8()
            type_id, value = read_typed_value(r, major)
            params.append(RpcParam(pname, bool(status & 0x01), type_id, value))
        calls.append(RpcCall(name, params))
    return calls


def _read_plp(r: Reader) -> bytes | None:
    total = r.u64()
    if total == PLP_NULL:
        return None
    out = bytearray()
    while True:
        n = r.u32()
        if n == 0:
            return bytes(out)
        out += r.take(n)


_FIXED_LENGTHS = {0x30: 1, 0x32: 1, 0x34: 2, 0x38: 4, 0x7F: 8, 0x3E: 8, 0x3B: 4, 0x3D: 8,
                  0x3A: 4}


def read_typed_value(r: Reader, major: int) -> tuple[int, Any]:
    """TYPE_INFO followed by a value (RPC parameters)."""
    t = r.u8()
    if t == 0x1F:  # NULLTYPE
        return t, None
    if t in _FIXED_LENGTHS:
        return t, _decode_fixed(t, r.take(_FIXED_LENGTHS[t]))
    reader = _VALUE_READERS.get(t)
    if reader is None:
        raise ProtocolError(f"unsupported parameter type {t:#x}")
    return t, reader(r, t, major)


def _read_nullable_fixed(r: Reader, t: int, major: int) -> Any:
    """INTN BITN FLTN DATETIMN GUID MONEYN: a max length, then a length and the bytes."""
    r.u8()
    n = r.u8()
    if n == 0:
        return None
    raw = r.take(n)
    if t == 0x26:
        return int.from_bytes(raw, "little", signed=True)
    if t == 0x68:
        return bool(raw[0])
    if t == 0x6D:
        return struct.unpack("<d" if n == 8 else "<f", raw)[0]
    if t == 0x24:
        return uuid.UUID(bytes_le=raw)
    if t == 0x6E:
        return decimal.Decimal(_money(raw)) / 10000
    return _decode_datetime(raw)


def _read_decimal(r: Reader, t: int, major: int) -> Any:
    """DECIMALN NUMERICN: max length, precision, scale, then a sign byte and the magnitude."""
    r.u8()
    r.u8()
    scale = r.u8()
    n = r.u8()
    if n == 0:
        return None
    raw = r.take(n)
    mag = int.from_bytes(raw[1:], "little")
    return decimal.Decimal(mag if raw[0] else -mag).scaleb(-scale, _WIDE)


def _read_date(r: Reader, t: int, major: int) -> Any:
    n = r.u8()
    if n == 0:
        return None
    return _dt.date.fromordinal(int.from_bytes(r.take(3), "little") + 1)


def _read_time_family(r: Reader, t: int, major: int) -> Any:
    """TIMEN DATETIME2N DATETIMEOFFSETN: a scale, then time ticks, a date, an offset."""
    scale = r.u8()
    n = r.u8()
    if n == 0:
        return None
    raw = r.take(n)
    tlen = 3 if scale <= 2 else 4 if scale <= 4 else 5
    ticks = int.from_bytes(raw[:tlen], "little") * 10 ** (7 - scale)
    tm = _dt.timedelta(microseconds=ticks // 10)
    if t == 0x29:
        return (_dt.datetime.min + tm).time()
    day = _dt.date.fromordinal(int.from_bytes(raw[tlen : tlen + 3], "little") + 1)
    value = _dt.datetime.combine(day, _dt.time()) + tm
    if t == 0x2B:
        off = struct.unpack("<h", raw[tlen + 3 : tlen + 5])[0]
        value = (value + _dt.timedelta(minutes=off)).replace(
            tzinfo=_dt.timezone(_dt.timedelta(minutes=off))
        )
    return value


def _read_var(r: Reader, t: int, major: int) -> Any:
    """n/var/char and var/binary: a max length (0xFFFF: PLP), a collation for text."""
    maxlen = r.u16()
    if t in (0xE7, 0xEF, 0xA7, 0xAF) and major >= 0x71:
        r.take(5)
    if maxlen == 0xFFFF:
        data = _read_plp(r)
    else:
        n = r.u16()
        data = None if n == 0xFFFF else r.take(n)
    if data is None:
        return None
    if t in (0xE7, 0xEF):
        return data.decode("utf-16-le", "replace")
    if t in (0xA7, 0xAF):
        return data.decode("latin-1")
    return data


def _read_text(r: Reader, t: int, major: int) -> Any:
    """NTEXT TEXT IMAGE: a max length, a collation for text, then a 4-byte length."""
    r.u32()
    if t != 0x22 and major >= 0x71:
        r.take(5)
    n = r.u32()
    if n == 0xFFFFFFFF:
        return None
    data = r.take(n)
    if t == 0x63:
        return data.decode("utf-16-le", "replace")
    return data.decode("latin-1") if t == 0x23 else data


_VALUE_READERS: dict[int, Callable[[Reader, int, int], Any]] = {
    **dict.fromkeys((0x26, 0x68, 0x6D, 0x6F, 0x24, 0x6E), _read_nullable_fixed),
    **dict.fromkeys((0x6A, 0x6C), _read_decimal),
    0x28: _read_date,
    **dict.fromkeys((0x29, 0x2A, 0x2B), _read_time_family),
    **dict.fromkeys((0xE7, 0xEF, 0xA7, 0xAF, 0xA5, 0xAD), _read_var),
    **dict.fromkeys((0x63, 0x23, 0x22), _read_text),
}


def _money(raw: bytes) -> int:
    if len(raw) == 4:
        return int(struct.unpack("<i", raw)[0])
    hi, lo = struct.unpack("<iI", raw)
    return int((hi << 32) | lo)


def _decode_fixed(t: int, raw: bytes) -> Any:
    if t == 0x30:
        return raw[0]
    if t == 0x32:
        return bool(raw[0])
    if t in (0x34, 0x38, 0x7F):
        return int.from_bytes(raw, "little", signed=True)
    if t == 0x3E:
        return struct.unpack("<d", raw)[0]
    if t == 0x3B:
        return struct.unpack("<f", raw)[0]
    if t in (0x3C, 0x7A):
        return decimal.Decimal(_money(raw)) / 10000
    if t == 0x3D:
        return _decode_datetime(raw)
    days, mins = struct.unpack("<HH", raw)
    return _dt.datetime(1900, 1, 1) + _dt.timedelta(days=days, minutes=mins)


def _decode_datetime(raw: bytes) -> _dt.datetime:
    if len(raw) == 4:
        days, mins = struct.unpack("<HH", raw)
        return _dt.datetime(1900, 1, 1) + _dt.timedelta(days=days, minutes=mins)
    days, ticks = struct.unpack("<iI", raw)
    micros = round(ticks * 10000 / 3)
    return _dt.datetime(1900, 1, 1) + _dt.timedelta(days=days, microseconds=micros)


@dataclass
class TransactionRequest:
    kind: int  # 5 begin, 7 commit, 8 rollback, 9 save, 0 get DTC address
    name: str
    isolation: int = 0
    begin_after: bool = False


def parse_transaction(payload: bytes, major: int) -> TransactionRequest:
    r = Reader(payload, skip_all_headers(payload, major))
    kind = r.u16()
    if kind == 5:
        iso = r.u8()
        return TransactionRequest(kind, r.b_varchar(), isolation=iso)
    if kind in (7, 8):
        name = r.b_varchar()
        flags = r.u8()
        return TransactionRequest(kind, name, begin_after=bool(flags & 0x01))
    if kind == 9:
        return TransactionRequest(kind, r.b_varchar())
    return TransactionRequest(kind, "")
