#!/usr/bin/env python3
"""Fuzz target: the PROXY protocol header reader (HeaderReader in
src/imapguard/gateway/proxyproto.py).

The input is what a load balancer sends first on a connection to a
`proxy_protocol = true` listener. Contract checked:
* the reader answers a header, "need more" or "invalid" with a reason, never an
  exception;
* bounded: fed as the gateway feeds it (never more than `NeedMore.at_most` at a
  time) it never holds a byte past the header, nor more than a v1 line or a v2
  header's bound; `at_most` is never 0;
* the answer is the same however the bytes were split into reads, and so are the
  bytes left after a header;
* a header's addresses are addresses and its ports 0-65535; a v2 header written
  by `v2_header` from them reads back the same.
"""

from __future__ import annotations

import ipaddress

import _harness

with _harness.instrumented():
    from imapguard.gateway.proxyproto import (
        V1_MAX,
        V2_MAX_PAYLOAD,
        HeaderReader,
        InvalidHeader,
        NeedMore,
        ProxyHeader,
        v2_header,
    )

_BOUND = max(V1_MAX, 16 + V2_MAX_PAYLOAD)


def fed(reads: list[bytes]) -> tuple[object, bytes]:
    reader = HeaderReader()
    for data in reads:
        reader.receive_data(data)
    result = reader.result()
    return result, reader.rest if isinstance(result, ProxyHeader) else b""


def as_asked(data: bytes) -> tuple[object, bytes]:
    reader = HeaderReader()
    offset = 0
    while isinstance(result := reader.result(), NeedMore) and offset < len(data):
        assert result.at_most > 0, "asked for no bytes"
        chunk = data[offset : offset + result.at_most]
        offset += len(chunk)
        reader.receive_data(chunk)
        assert reader.buffered <= _BOUND, f"holds {reader.buffered} bytes"
    assert reader.rest == b"", "read past the header"
    result = reader.result()
    return result, data[offset:] if isinstance(result, ProxyHeader) else b""


def check_header(header: ProxyHeader) -> None:
    if header.source is None:
        assert header.destination is None
        return
    assert header.destination is not None
    for host, port in (header.source, header.destination):
        ipaddress.ip_address(host)
        assert 0 <= port <= 65535
    if header.version == 2:
        again = HeaderReader()
        again.receive_data(v2_header(header.source, header.destination))
        got = again.result()
        assert isinstance(got, ProxyHeader) and got.source == header.source, got


def test_one_input(data: bytes) -> None:
    expected = fed([data])
    result = expected[0]
    assert isinstance(result, ProxyHeader | NeedMore | InvalidHeader), result
    if isinstance(result, ProxyHeader):
        check_header(result)
    got = as_asked(data)
    assert got == expected, f"fed as asked:\n{got}\nwhole:\n{expected}"
    for reads in _harness.splittings(data):
        got = fed(reads)
        assert got == expected, f"fed in {len(reads)} reads:\n{got}\nwhole:\n{expected}"


if __name__ == "__main__":
    _harness.main(test_one_input)
