"""The PROXY protocol header reader and writer (imapguard.gateway.proxyproto), with
the examples of HAProxy's proxy-protocol.txt and malformed headers, each fed whole,
byte by byte and in the reads the reader asks for."""

from __future__ import annotations

import struct

import pytest

from imapguard.gateway.proxyproto import (
    V1_MAX,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    HeaderReader,
    InvalidHeader,
    NeedMore,
    ProxyHeader,
    v2_header,
)

MAX6 = ":".join(["ffff"] * 8)
NEXT = b"a1 CAPABILITY\r\n"


def read_whole(data: bytes) -> tuple[object, bytes]:
    reader = HeaderReader()
    reader.receive_data(data)
    return reader.result(), reader.rest


def read_bytewise(data: bytes) -> tuple[object, bytes]:
    reader = HeaderReader()
    for i in range(len(data)):
        if not isinstance(reader.result(), NeedMore):
            break
        reader.receive_data(data[i : i + 1])
    rest = reader.rest + data[reader.buffered :]
    return reader.result(), rest


def read_as_asked(data: bytes) -> tuple[object, bytes]:
    """As the gateway reads: never more than `at_most`; nothing past the header."""
    reader = HeaderReader()
    offset = 0
    while isinstance(result := reader.result(), NeedMore) and offset < len(data):
        chunk = data[offset : offset + result.at_most]
        offset += len(chunk)
        reader.receive_data(chunk)
    assert reader.rest == b"", "the reader asked for bytes past the header"
    return reader.result(), data[offset:]


def read_all_ways(data: bytes) -> object:
    """The result, the same fed whole, byte by byte and as asked; after a header,
    the bytes that follow it are left over the same in each way."""
    whole = read_whole(data)
    ways = [read_bytewise(data), read_as_asked(data)]
    if isinstance(whole[0], ProxyHeader):
        assert all(way == whole for way in ways)
    else:
        assert all(way[0] == whole[0] for way in ways)
    return whole[0]


def v2(command: int, family: int, payload: bytes, version: int = 2) -> bytes:
    return (
        V2_SIGNATURE
        + bytes([version << 4 | command, family])
        + struct.pack("!H", len(payload))
        + payload
    )


def test_v1_tcp4_names_the_client_and_leaves_the_imap_bytes() -> None:
    data = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 993\r\n"
    header = read_all_ways(data + NEXT)
    assert header == ProxyHeader(1, len(data), ("192.0.2.7", 56324), ("198.51.100.1", 993))
    assert read_whole(data + NEXT)[1] == NEXT
    assert read_as_asked(data + NEXT)[1] == NEXT


def test_v1_longest_examples_of_the_spec_fit_the_bound() -> None:
    tcp4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    tcp6 = f"PROXY TCP6 {MAX6} {MAX6} 65535 65535\r\n".encode()
    unknown = f"PROXY UNKNOWN {MAX6} {MAX6} 65535 65535\r\n".encode()
    assert len(tcp4) == 56
    assert len(tcp6) == 104
    assert len(unknown) == V1_MAX
    assert read_all_ways(tcp4) == ProxyHeader(
        1, 56, ("255.255.255.255", 65535), ("255.255.255.255", 65535)
    )
    expected6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    assert read_all_ways(tcp6) == ProxyHeader(1, 104, (expected6, 65535), (expected6, 65535))
    assert read_all_ways(unknown) == ProxyHeader(1, V1_MAX)


def test_v1_unknown_names_no_client() -> None:
    assert read_all_ways(b"PROXY UNKNOWN\r\n" + NEXT) == ProxyHeader(1, 15)


def test_v1_tcp6_address() -> None:
    data = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 143\r\n"
    header = read_all_ways(data)
    assert header == ProxyHeader(1, len(data), ("2001:db8::7", 40000), ("2001:db8::1", 143))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"a1 LOGIN alice secret\r\n", "not a PROXY protocol header"),
        (b"proxy TCP4 1.2.3.4 1.2.3.4 1 1\r\n", "not a PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1" + b" " * 80, f"longer than {V1_MAX} bytes"),
        (f"PROXY UNKNOWN {MAX6} {MAX6} 65535 655350\r\n".encode(), "longer than"),
        (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 1\r\n", "unknown protocol"),
        (b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 1\r\n", "unknown protocol"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "exactly two addresses"),
        (b"PROXY TCP4 1.2.3.4  1.2.3.4 1 1\r\n", "exactly two addresses"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1 \r\n", "exactly two addresses"),
        (b"PROXY TCP4 ::1 1.2.3.4 1 1\r\n", "not TCP4"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 1\r\n", "not TCP6"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 1\r\n", "not TCP6"),
        (b"PROXY TCP4 1.2.3.04 1.2.3.4 1 1\r\n", "not TCP4"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 1\r\n", "invalid port"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 01 1\r\n", "invalid port"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 1\r\n", "invalid port"),
        (b"PROXY TCP4 1.2.3.4\t1.2.3.4 1 1\r\n", "control or non-ASCII"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1\r\r\n", "control or non-ASCII"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1\n", "longer than"),
        ("PROXY TCP4 1.2.3.4 1.2.3.4 1 ١\r\n".encode(), "control or non-ASCII"),
    ],
)
def test_v1_malformed_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    padded = data if data.endswith(b"\r\n") else data + b"x" * V1_MAX
    result = read_all_ways(padded)
    assert isinstance(result, InvalidHeader), result
    assert reason in result.reason


def test_a_bad_first_byte_is_refused_before_more_is_read() -> None:
    reader = HeaderReader()
    reader.receive_data(b"\x16")  # a TLS ClientHello to a PROXY listener
    assert reader.result() == InvalidHeader("not a PROXY protocol header")


def test_v2_tcp4_with_tlvs_skipped() -> None:
    addresses = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack("!HH", 56324, 993)
    tlvs = b"\x05\x00\x04abcd" + b"\x20\x00\x05\x01\x00\x00\x00\x00" + b"\x04\x00\x00"
    data = v2(1, 0x11, addresses + tlvs)
    header = read_all_ways(data + b"\x16\x03\x01")
    assert header == ProxyHeader(2, len(data), ("192.0.2.7", 56324), ("198.51.100.1", 993))
    assert read_as_asked(data + b"\x16\x03\x01")[1] == b"\x16\x03\x01"


def test_v2_tcp6() -> None:
    src = bytes.fromhex("20010db8000000000000000000000007")
    dst = bytes.fromhex("20010db8000000000000000000000001")
    data = v2(1, 0x21, src + dst + struct.pack("!HH", 40000, 143))
    assert read_all_ways(data) == ProxyHeader(2, 52, ("2001:db8::7", 40000), ("2001:db8::1", 143))


def test_v2_local_ignores_its_addresses() -> None:
    # A health check of the proxy itself: whatever the address block says.
    assert read_all_ways(v2(0, 0x11, b"\x01" * 12)) == ProxyHeader(2, 28)
    assert read_all_ways(v2(0, 0x00, b"")) == ProxyHeader(2, 16)
    # LOCAL with a datagram transport: the transport of a LOCAL header is ignored too.
    assert read_all_ways(v2(0, 0x12, b"\x01" * 12)) == ProxyHeader(2, 28)


def test_v2_unspec_and_unix_name_no_client() -> None:
    assert read_all_ways(v2(1, 0x00, b"")) == ProxyHeader(2, 16)
    assert read_all_ways(v2(1, 0x31, b"/" * 216)) == ProxyHeader(2, 232)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (V2_SIGNATURE[:5] + b"X" + V2_SIGNATURE[6:], "not a PROXY protocol header"),
        (v2(1, 0x11, b"\0" * 12, version=1), "version other than 2"),
        (v2(1, 0x11, b"\0" * 12, version=3), "version other than 2"),
        (v2(2, 0x11, b"\0" * 12), "unknown command"),
        (v2(1, 0x41, b"\0" * 12), "unknown address family"),
        (v2(1, 0x12, b"\0" * 12), "other than a stream"),
        (v2(1, 0x10, b"\0" * 12), "other than a stream"),
        (v2(1, 0x11, b"\0" * 11), "shorter than its address block"),
        (v2(1, 0x21, b"\0" * 35), "shorter than its address block"),
        (v2(1, 0x11, b"\0" * 12 + b"\x20\x00"), "truncated TLV"),
        (v2(1, 0x11, b"\0" * 12 + b"\x20\x00\x09\x01"), "TLV longer than the header"),
        (v2(1, 0x11, b"\0" * (V2_MAX_PAYLOAD + 1)), "v2 header longer than"),
    ],
)
def test_v2_malformed_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    result = read_all_ways(data + b"trailing bytes")
    assert isinstance(result, InvalidHeader), result
    assert reason in result.reason


def test_v2_oversized_length_is_refused_before_its_payload_is_read() -> None:
    reader = HeaderReader()
    reader.receive_data(V2_SIGNATURE + b"\x21\x11\xff\xff")
    assert isinstance(reader.result(), InvalidHeader)


def test_truncated_headers_ask_for_exactly_what_is_missing() -> None:
    data = v2_header(("192.0.2.7", 1), ("192.0.2.1", 2))
    for cut in range(len(data)):
        reader = HeaderReader()
        reader.receive_data(data[:cut])
        result = reader.result()
        assert isinstance(result, NeedMore)
        assert 0 < result.at_most <= len(data) - cut


def test_v2_header_written_reads_back() -> None:
    data = v2_header(("192.0.2.7", 50000), ("127.0.0.1", 10143), tls=True)
    assert read_all_ways(data) == ProxyHeader(
        2, len(data), ("192.0.2.7", 50000), ("127.0.0.1", 10143)
    )
    assert b"\x20\x00\x05\x01" in data  # PP2_TYPE_SSL, client connected over TLS
    six = v2_header(("2001:db8::7", 1), ("127.0.0.1", 2))
    assert read_all_ways(six) == ProxyHeader(2, 52, ("2001:db8::7", 1), ("::ffff:7f00:1", 2))


def test_v2_header_for_a_non_address_names_no_client() -> None:
    data = v2_header(("unix-socket", 0), ("127.0.0.1", 143))
    assert read_all_ways(data) == ProxyHeader(2, 16)
