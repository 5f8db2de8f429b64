"""Literal bombs: a client announcing a huge literal before authentication gets a
tagged BAD [TOOBIG] without the gateway reserving or reading the announced bytes;
a non-synchronizing one (which the client may send without waiting) ends the
connection. Neither grows the gateway's memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import RawClient

pytestmark = pytest.mark.dovecot

HUGE = b"99999999999"  # 11 digits: ~100 GB


def _rss_kib(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_synchronizing_literal_bomb_is_refused(gw: GatewayProcess) -> None:
    with RawClient(gw.implicit_port, source_address(45), tls=gw.client_ssl()) as c:
        c.line()
        lines = c.command(b"a", b"LOGIN {" + HUGE + b"}")
        assert lines == [b"a BAD [TOOBIG] Literal too large."]
        # No "+" was sent, the stream is in sync, the connection still works.
        assert c.command(b"b", b"NOOP") == [b"b OK NOOP completed."]
        assert c.command(b"c", b"CAPABILITY")[-1].startswith(b"c OK")


def test_non_synchronizing_literal_bomb_ends_the_connection(gw: GatewayProcess) -> None:
    with RawClient(gw.implicit_port, source_address(46), tls=gw.client_ssl()) as c:
        c.line()
        c.send(b"a LOGIN {" + HUGE + b"+}\r\n" + b"x" * 65536)
        rest = c.rest_until_closed()
    assert rest.startswith(b"a BAD [TOOBIG] "), rest
    lines = rest.split(b"\r\n")
    assert lines[1].startswith(b"* BYE "), rest
    assert lines[2:] == [b""], rest


def test_literal_bombs_do_not_grow_memory(gw: GatewayProcess) -> None:
    """Many bombs, and 64 MB of bytes streamed after one of them: the gateway's RSS
    stays put (the bytes are counted and dropped, never buffered)."""
    src = source_address(47)
    # Warm up: the first TLS connections allocate lasting buffers.
    for _ in range(3):
        with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
            c.line()
            c.command(b"a", b"LOGIN {" + HUGE + b"}")
    before = _rss_kib(gw)

    for _ in range(20):
        with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
            c.line()
            assert c.command(b"a", b"LOGIN {" + HUGE + b"}")[0].startswith(b"a BAD [TOOBIG]")
        with RawClient(gw.starttls_port, src) as c:
            c.line()
            c.send(b"a LOGIN {" + HUGE + b"+}\r\n")
            assert b"* BYE " in c.rest_until_closed()

    # A client that ignores the BAD and sends the "literal" anyway, with no line end:
    # one over-long line, discarded as it arrives.
    chunk = b"y" * (1024 * 1024)
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl(), timeout=30) as c:
        c.line()
        assert c.command(b"a", b"LOGIN {" + HUGE + b"}")[0].startswith(b"a BAD [TOOBIG]")
        for _ in range(64):
            c.send(chunk)
        peak = _rss_kib(gw)
        c.send(b"\r\n")
        assert c.line() == b"* BAD [TOOBIG] Command line too long."
        assert c.command(b"b", b"NOOP") == [b"b OK NOOP completed."]

    after = _rss_kib(gw)
    assert peak - before < 16 * 1024, (before, peak, after)
    assert after - before < 16 * 1024, (before, peak, after)
