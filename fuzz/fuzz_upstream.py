#!/usr/bin/env python3
"""Fuzz target: the upstream response parser and the login dialogue that reads it
(_Reader and _login in src/imapguard/gateway/upstream.py).

The input is what the upstream IMAP server sends; the gateway side is the real
`_login` over a link that hands out the input in reads. Contract checked:
* the login ends in an `UpstreamSession` or raises `UpstreamUnavailable`,
  `UpstreamRefused` or `EOFError` (the connection ended; `open_session` turns it
  into UpstreamUnavailable), nothing else;
* bounded memory: no response (its lines and literals) is longer than
  MAX_RESPONSE_LINE, and the untagged responses kept while waiting for a tagged
  one add up to at most MAX_UNTAGGED_BYTES;
* the outcome, the bytes the gateway wrote and the bytes left over for the
  client are the same however the server's bytes were split into reads.

The link holds the whole input from the start (a split input is handed out read by
read, the rest counts as arrived): so bytes after the STARTTLS response are always
an injection, and the leftover is the same for every split. STARTTLS itself cannot
complete here (no transport): a clean STARTTLS response ends in the "no TLS
context" refusal. Half of the inputs run with MAX_RESPONSE_LINE at 256 bytes (a
real Dovecot login line is 400: those refuse it) and MAX_UNTAGGED_BYTES at 512, so
that short inputs reach the limits.
"""

from __future__ import annotations

import asyncio
from typing import Any

import _harness

with _harness.instrumented():
    from imapguard.errors import UpstreamRefused, UpstreamUnavailable
    from imapguard.gateway import upstream
    from imapguard.gateway.link import Link
    from imapguard.secret import Secret

REAL_LIMITS = (upstream.MAX_RESPONSE_LINE, upstream.MAX_UNTAGGED_BYTES)
CLIENT = upstream.ClientAddress("192.0.2.7", 50123, "192.0.2.1", 993, "s1")


class FakeLink(Link):
    """The server's bytes, one read at a time; what the gateway writes, recorded."""

    def __init__(self, reads: list[bytes]) -> None:
        super().__init__()
        self.reads = [r for r in reads if r]
        self.written: list[bytes] = []

    async def read(self) -> bytes:
        return self.reads.pop(0) if self.reads else b""

    def take_buffer(self) -> bytes:
        data = b"".join(self.reads)
        self.reads.clear()
        return data

    def write(self, data: bytes) -> None:
        self.written.append(data)


class CheckedReader(upstream._Reader):
    """The real reader, with the bounded-memory contract asserted on what it keeps."""

    kept = 0

    async def line(self) -> bytes:
        response = await super().line()
        limit = upstream.MAX_RESPONSE_LINE
        assert len(response) <= limit, f"a response of {len(response)} bytes (limit {limit})"
        # What tagged() keeps: every response before this one.
        assert self.kept <= upstream.MAX_UNTAGGED_BYTES, f"{self.kept} bytes of untagged responses"
        self.kept += len(response)
        return response

    async def tagged(self, tag: bytes) -> tuple[bytes, list[bytes]]:
        self.kept = 0
        try:
            return await super().tagged(tag)
        finally:
            self.kept = 0


upstream._Reader = CheckedReader  # type: ignore[misc]


def settings(variant: int) -> upstream.UpstreamSettings:
    return upstream.UpstreamSettings(
        host="127.0.0.1",
        port=143,
        tls="starttls" if variant & 1 else "none",
        ssl_context=None,
        server_name="imap.example.org",
        master_user="gateway",
        master_password=Secret(b"master-secret"),
        forward_client_ip="id" if variant & 2 else "none",
        connect_timeout=1.0,
        login_timeout=1.0,
    )


async def login(variant: int, reads: list[bytes]) -> tuple[Any, ...]:
    link = FakeLink(reads)
    password = Secret(b"user-secret") if variant & 4 else None
    try:
        session = await upstream._login(settings(variant), link, "alice", password, CLIENT)
    except (UpstreamUnavailable, UpstreamRefused) as exc:
        return type(exc).__name__, exc.detail, link.written
    except EOFError:
        return "EOFError", link.written
    assert session.link is link
    return "session", session.capabilities, session.leftover, link.written


LOOP = asyncio.new_event_loop()


def test_one_input(data: bytes) -> None:
    variant = _harness.pick(data, 16)
    small = (256, 512)
    upstream.MAX_RESPONSE_LINE, upstream.MAX_UNTAGGED_BYTES = small if variant & 8 else REAL_LIMITS
    expected = LOOP.run_until_complete(login(variant, [data]))
    for reads in _harness.splittings(data):
        got = LOOP.run_until_complete(login(variant, reads))
        assert got == expected, f"fed in {len(reads)} reads:\n{got}\nwhole:\n{expected}"


if __name__ == "__main__":
    _harness.main(test_one_input)
