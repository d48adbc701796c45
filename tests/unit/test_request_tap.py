"""The round-trip counters: RequestTap parses what a client sends, in any chunking, and
requests_per_unit gives an exact per-unit figure."""

from __future__ import annotations

import struct
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssql_pool.testing import _protocol as P
from mssql_pool.testing.round_trips import Request, RequestTap, requests_per_unit

ALL_HEADERS = struct.pack("<IIH", 22, 18, 2) + b"\x00" * 8 + struct.pack("<I", 1)


def batch(text: str, packet_size: int = 4096) -> bytes:
    return P.frame(P.PKT_SQL_BATCH, ALL_HEADERS + text.encode("utf-16-le"), packet_size, 0)


def rpc(name: str) -> bytes:
    body = ALL_HEADERS + struct.pack("<H", len(name)) + name.encode("utf-16-le") + b"\x00\x00"
    return P.frame(P.PKT_RPC, body, 4096, 0)


def tm(kind: int, begin_after: bool = False) -> bytes:
    body = ALL_HEADERS + struct.pack("<H", kind)
    body += b"\x02\x00" if kind == 5 else b"\x00" + bytes([1 if begin_after else 0])
    return P.frame(P.PKT_TRANSACTION, body, 4096, 0)


def login() -> bytes:
    return (P.frame(P.PKT_PRELOGIN, b"\xff", 4096, 0)
            + P.frame(P.PKT_LOGIN7, P.build_login7("sa", "pw", "master"), 4096, 0))


def tls_record(content_type: int, size: int) -> bytes:
    return bytes([content_type, 3, 3]) + struct.pack(">H", size) + b"\xaa" * size


LONG = "SELECT '" + "x" * 3000 + "' AS filler"  # two packets at a 4096 packet size

STREAM = (login() + batch("SELECT 1") + rpc("sp_reset_connection") + tm(7, True) + tm(5)
          + batch(LONG) + P.frame(P.PKT_ATTENTION, b"", 4096, 0)
          + batch("IF @@TRANCOUNT > 0 ROLLBACK TRAN"))
EXPECTED = [
    Request("batch", "SELECT 1"), Request("rpc", "sp_reset_connection"),
    Request("tm", "COMMIT TRAN + BEGIN TRAN"), Request("tm", "BEGIN TRAN"),
    Request("batch", LONG), Request("batch", "IF @@TRANCOUNT > 0 ROLLBACK TRAN"),
]


def test_a_stream_fed_whole() -> None:
    tap = RequestTap()
    tap.feed(STREAM)
    assert tap.requests == EXPECTED
    assert tap() == 6
    assert tap.attentions == 1
    assert not tap.opaque
    assert [str(r) for r in tap.requests[:3]] == [
        "SELECT 1", "rpc:sp_reset_connection", "tm:COMMIT TRAN + BEGIN TRAN"]


def test_a_multi_packet_message_is_one_request() -> None:
    assert batch(LONG, 512).count(bytes([P.PKT_SQL_BATCH])) >= 12  # many packets
    tap = RequestTap()
    tap.feed(batch(LONG, 512))
    assert tap.requests == [Request("batch", LONG)]


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(st.integers(1, len(STREAM) - 1), max_size=40, unique=True))
def test_any_chunking_gives_the_same_requests(cuts: list[int]) -> None:
    tap = RequestTap()
    edges = [0, *sorted(cuts), len(STREAM)]
    for a, b in zip(edges, edges[1:], strict=False):
        tap.feed(STREAM[a:b])
    assert tap.requests == EXPECTED


def test_an_encrypted_login_is_skipped_and_plain_requests_after_it_count() -> None:
    # login-only encryption: the handshake in PRELOGIN packets, then LOGIN7 as one record
    hello = P.frame(P.PKT_PRELOGIN, tls_record(0x16, 200), 4096, 0)
    tap = RequestTap()
    tap.feed(P.frame(P.PKT_PRELOGIN, b"\xff", 4096, 0) + hello + tls_record(0x17, 300)
             + batch("SELECT 1"))
    assert tap.requests == [Request("batch", "SELECT 1")]
    assert not tap.opaque


def test_a_fully_encrypted_stream_is_reported_opaque() -> None:
    tap = RequestTap()
    tap.feed(tls_record(0x17, 300) + tls_record(0x17, 80) + tls_record(0x17, 90))
    assert tap.opaque and tap() == 0


def test_several_taps_share_a_sink_with_stream_ids() -> None:
    sink: list[Request] = []
    a, b = RequestTap(sink, stream=1), RequestTap(sink, stream=2)
    a.feed(batch("SELECT 1"))
    b.feed(rpc("sp_who"))
    a.feed(batch("SELECT 2"))
    assert [(r.stream, str(r)) for r in sink] == [(1, "SELECT 1"), (2, "rpc:sp_who"),
                                                  (1, "SELECT 2")]
    assert (a(), b()) == (2, 1)


def test_tds_70_batches_without_all_headers() -> None:
    tap = RequestTap()
    tap.feed(P.frame(P.PKT_LOGIN7, P.build_login7("sa", "pw", "master", 0x70000000), 4096, 0))
    assert tap.major == 0x70
    tap.feed(P.frame(P.PKT_SQL_BATCH, "SELECT 1".encode("utf-16-le"), 4096, 0))
    assert tap.requests == [Request("batch", "SELECT 1")]


def test_requests_per_unit_is_exact_and_skips_warm_up() -> None:
    total = [0]
    calls = [0]

    def unit() -> None:
        calls[0] += 1
        total[0] += 5 if calls[0] == 1 else 2   # the first run also connects

    assert requests_per_unit(lambda: total[0], unit, units=4) == 2
    assert calls[0] == 5
    assert requests_per_unit(lambda: total[0], unit, units=3, warm=0) == Fraction(2)

    odd = iter([0, 7])
    assert requests_per_unit(lambda: next(odd), lambda: None, units=2, warm=0) == Fraction(7, 2)


@pytest.mark.parametrize("kw", [{"units": 0}, {"warm": -1}])
def test_requests_per_unit_rejects_bad_counts(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        requests_per_unit(lambda: 0, lambda: None, **kw)
