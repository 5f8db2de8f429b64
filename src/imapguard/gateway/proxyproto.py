"""The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2), sans-IO.

A load balancer in front of the gateway opens each connection with a header that
names the client it carries; the gateway sends one to the upstream IMAP server
in the same way (`v2_header`). `HeaderReader` reads a header: bytes in,
`ProxyHeader` / `NeedMore` / `InvalidHeader` out, never an exception.

- Bounded: a v1 header is one line of at most `V1_MAX` (107) bytes with its
  CRLF (the spec's own bound); a v2 header is its 16-byte preamble plus at most
  `V2_MAX_PAYLOAD` bytes of addresses and TLVs (the spec allows 65535; HAProxy's
  own headers stay under a few hundred bytes even with the SSL TLVs).
- Never past the header: `NeedMore.at_most` is how many bytes may be read
  without reading into what follows (the client's IMAP bytes or its TLS
  ClientHello, which the gateway must leave in the socket). The shortest v1
  header (`PROXY UNKNOWN\\r\\n`) is 15 bytes and a v2 one 16, so the first read
  asks for 15; a v1 line then ends within 2 bytes of any byte that is not CR.
- The same answer however the bytes were split into reads: every check looks
  only at the bytes its position needs, in the order they come.
- Strict: a v1 line is printable ASCII with single spaces, TCP4 addresses are
  dotted quads and TCP6 ones RFC 4291 text without a zone; ports are decimal
  0-65535. A v2 version other than 2, a command other than LOCAL/PROXY, a
  datagram transport, an address block shorter than its family's or a TLV that
  runs past the header is refused. TLVs are skipped (their framing checked).
- LOCAL (v2) and UNKNOWN (v1), and v2 AF_UNSPEC/AF_UNIX, carry no client
  address: the spec says to use the connection's own endpoints then
  (`ProxyHeader.source` is None).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "V1_MAX",
    "V2_MAX_PAYLOAD",
    "V2_SIGNATURE",
    "HeaderReader",
    "InvalidHeader",
    "NeedMore",
    "ProxyHeader",
    "v2_header",
]

V1_MAX = 107
V1_PREFIX = b"PROXY "
V1_MIN = len(b"PROXY UNKNOWN\r\n")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_PREAMBLE = 16
#: Addresses and TLVs of a v2 header, at most (see the module docstring).
V2_MAX_PAYLOAD = 2048

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
_ADDRESS_SIZE = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
#: PP2_TYPE_SSL and its PP2_CLIENT_SSL bit: the client connected over TLS.
_PP2_TYPE_SSL = 0x20
_PP2_CLIENT_SSL = 0x01


@dataclass(frozen=True)
class ProxyHeader:
    """A complete header: `length` bytes long, the client's `source` and the
    address it connected to (`destination`), or None for both when the header
    names no client (LOCAL, UNKNOWN, AF_UNSPEC, AF_UNIX)."""

    version: int
    length: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


@dataclass(frozen=True)
class NeedMore:
    """More bytes are needed; reading up to `at_most` never reads past the header."""

    at_most: int


@dataclass(frozen=True)
class InvalidHeader:
    """Not a valid header; `reason` says why in a few words (for the audit log)."""

    reason: str


Result = ProxyHeader | NeedMore | InvalidHeader


class HeaderReader:
    """Reads one header. Feed bytes with `receive_data`, ask `result()`; bytes
    fed beyond the header are kept in `rest`. Fed no more than `NeedMore.at_most`
    at a time, it never holds more than the header."""

    def __init__(self) -> None:
        self._buf = b""
        self._result: ProxyHeader | InvalidHeader | None = None

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        if self._result is None:
            self._result = _parse(self._buf)

    def result(self) -> Result:
        if self._result is not None:
            return self._result
        return _need(self._buf) if self._buf else NeedMore(V1_MIN)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def rest(self) -> bytes:
        """Bytes fed after a complete header."""
        if isinstance(self._result, ProxyHeader):
            return self._buf[self._result.length :]
        return b""


def _parse(buf: bytes) -> ProxyHeader | InvalidHeader | None:
    if not buf:
        return None
    if buf[0:1] == V2_SIGNATURE[0:1]:
        return _parse_v2(buf)
    return _parse_v1(buf)


def _need(buf: bytes) -> NeedMore:
    """How much may be read after `buf`, an incomplete header."""
    if buf[0:1] == V2_SIGNATURE[0:1]:
        if len(buf) < V2_PREAMBLE:
            return NeedMore(V2_PREAMBLE - len(buf))
        (payload,) = struct.unpack_from("!H", buf, 14)
        return NeedMore(V2_PREAMBLE + payload - len(buf))
    if len(buf) < V1_MIN:
        return NeedMore(V1_MIN - len(buf))
    return NeedMore(1 if buf.endswith(b"\r") else 2)


# -- version 1 ------------------------------------------------------------------


def _parse_v1(buf: bytes) -> ProxyHeader | InvalidHeader | None:
    head = buf[: len(V1_PREFIX)]
    if not V1_PREFIX.startswith(head):
        return InvalidHeader("not a PROXY protocol header")
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            return InvalidHeader(f"v1 header longer than {V1_MAX} bytes")
        return None
    line = buf[:end]
    if any(not 0x20 <= c < 0x7F for c in line):
        return InvalidHeader("v1 header with a control or non-ASCII character")
    parts = line.decode("ascii").split(" ")
    length = end + 2
    if parts[1] == "UNKNOWN":
        return ProxyHeader(1, length)
    if parts[1] not in ("TCP4", "TCP6"):
        return InvalidHeader("v1 header with an unknown protocol")
    if len(parts) != 6:
        return InvalidHeader("v1 header without exactly two addresses and two ports")
    version = 4 if parts[1] == "TCP4" else 6
    src, dst = _v1_address(parts[2], version), _v1_address(parts[3], version)
    sport, dport = _v1_port(parts[4]), _v1_port(parts[5])
    if src is None or dst is None:
        return InvalidHeader(f"v1 header with an address that is not {parts[1]}")
    if sport is None or dport is None:
        return InvalidHeader("v1 header with an invalid port")
    return ProxyHeader(1, length, (src, sport), (dst, dport))


def _v1_address(text: str, version: int) -> str | None:
    if "%" in text:  # an IPv6 zone names an interface of the proxy, not a client
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(address) if address.version == version else None


def _v1_port(text: str) -> int | None:
    if not text.isdigit() or not text.isascii() or len(text) > 5:
        return None
    if len(text) > 1 and text[0] == "0":
        return None
    port = int(text)
    return port if port <= 65535 else None


# -- version 2 ------------------------------------------------------------------


def _parse_v2(buf: bytes) -> ProxyHeader | InvalidHeader | None:
    head = buf[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(head):
        return InvalidHeader("not a PROXY protocol header")
    if len(buf) < V2_PREAMBLE:
        # Version and command are in byte 12, family and transport in byte 13:
        # refuse them as soon as they arrive.
        return _v2_preamble(buf) if len(buf) > 12 else None
    bad = _v2_preamble(buf)
    if bad is not None:
        return bad
    (payload,) = struct.unpack_from("!H", buf, 14)
    if payload > V2_MAX_PAYLOAD:
        return InvalidHeader(f"v2 header longer than {V2_PREAMBLE + V2_MAX_PAYLOAD} bytes")
    length = V2_PREAMBLE + payload
    if len(buf) < length:
        return None
    command, family = buf[12] & 0x0F, buf[13] >> 4
    size = _ADDRESS_SIZE[family]
    if payload < size:
        return InvalidHeader("v2 header shorter than its address block")
    bad_tlv = _check_tlvs(buf[V2_PREAMBLE + size : length])
    if bad_tlv is not None:
        return bad_tlv
    if command == _V2_LOCAL or family in (_AF_UNSPEC, _AF_UNIX):
        return ProxyHeader(2, length)
    block = buf[V2_PREAMBLE : V2_PREAMBLE + size]
    if family == _AF_INET:
        src = str(ipaddress.IPv4Address(block[0:4]))
        dst = str(ipaddress.IPv4Address(block[4:8]))
        sport, dport = struct.unpack_from("!HH", block, 8)
    else:
        src = str(ipaddress.IPv6Address(block[0:16]))
        dst = str(ipaddress.IPv6Address(block[16:32]))
        sport, dport = struct.unpack_from("!HH", block, 32)
    return ProxyHeader(2, length, (src, sport), (dst, dport))


def _v2_preamble(buf: bytes) -> InvalidHeader | None:
    version, command = buf[12] >> 4, buf[12] & 0x0F
    if version != 2:
        return InvalidHeader("v2 header with a version other than 2")
    if command not in (_V2_LOCAL, _V2_PROXY):
        return InvalidHeader("v2 header with an unknown command")
    if len(buf) < 14:
        return None
    family, transport = buf[13] >> 4, buf[13] & 0x0F
    if family not in _ADDRESS_SIZE:
        return InvalidHeader("v2 header with an unknown address family")
    if command == _V2_PROXY and family != _AF_UNSPEC and transport != _STREAM:
        return InvalidHeader("v2 header for a transport other than a stream")
    return None


def _check_tlvs(data: bytes) -> InvalidHeader | None:
    """TLVs are skipped, but each must fit in the header."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            return InvalidHeader("v2 header with a truncated TLV")
        (size,) = struct.unpack_from("!H", data, offset + 1)
        offset += 3 + size
        if offset > len(data):
            return InvalidHeader("v2 header with a TLV longer than the header")
    return None


# -- writing --------------------------------------------------------------------


def v2_header(source: tuple[str, int], destination: tuple[str, int], *, tls: bool = False) -> bytes:
    """A v2 PROXY header for a TCP connection from `source` to `destination`;
    `tls` adds PP2_TYPE_SSL saying the client connected over TLS (Dovecot then
    counts the connection as secured). An IPv4 address paired with an IPv6 one
    is written as IPv4-mapped IPv6, since both must be of one family; text that
    is no address (a Unix socket) gives AF_UNSPEC, which names no client."""
    try:
        src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    except ValueError:
        family, block = _AF_UNSPEC, b""
    else:
        if src.version == dst.version == 4:
            family, block = _AF_INET, src.packed + dst.packed
        else:
            block = _as_v6(src).packed + _as_v6(dst).packed
            family = _AF_INET6
        block += struct.pack("!HH", source[1], destination[1])
    if tls:
        # client = PP2_CLIENT_SSL; verify = 1: no client certificate is vouched for.
        value = struct.pack("!BI", _PP2_CLIENT_SSL, 1)
        block += struct.pack("!BH", _PP2_TYPE_SSL, len(value)) + value
    preamble = V2_SIGNATURE + bytes([0x20 | _V2_PROXY, family << 4 | _STREAM])
    return preamble + struct.pack("!H", len(block)) + block


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
