"""STARTTLS command injection (CVE-2011-0411 class): bytes a client (or a
man in the middle) sends in clear after STARTTLS must never be read as a command,
neither before nor after the TLS handshake."""

from __future__ import annotations

import ssl

import pytest

from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import RawClient, session_of, wait_for

pytestmark = pytest.mark.dovecot


def test_command_pipelined_with_starttls_is_discarded(gw: GatewayProcess) -> None:
    src = source_address(40)
    injected = b"b CAPABILITY\r\n"
    with RawClient(gw.starttls_port, src) as c:
        assert b"STARTTLS" in c.line()
        c.send(b"a STARTTLS\r\n" + injected)  # one segment (TCP_NODELAY, one sendall)
        assert c.line().startswith(b"a OK ")
        # Nothing answered b in clear: the server is now silent, waiting for TLS.
        before_tls = c.quiet(0.5)
        assert before_tls == b"", before_tls
        c.starttls(gw.client_ssl())
        # ... and nothing answers b inside TLS either.
        after_tls = c.quiet(0.5)
        assert after_tls == b"", after_tls
        lines = c.command(b"c", b"CAPABILITY")
        for line in lines:
            assert not line.startswith(b"b "), lines
        assert lines[0].startswith(b"* CAPABILITY ")
        assert b"STARTTLS" not in lines[0]
        assert b"AUTH=PLAIN" in lines[0]
        assert lines[-1].startswith(b"c OK")
        session = session_of(gw, src, c.local_port)

    events = [e for e in gw.events("starttls_injection") if e.get("session") == session]
    assert len(events) == 1, events
    assert events[0]["discarded_bytes"] == len(injected)


def test_command_sent_in_clear_before_the_client_hello(gw: GatewayProcess) -> None:
    """After the OK the gateway reads TLS only: clear-text bytes ahead of the
    ClientHello break the handshake instead of being executed."""
    src = source_address(41)
    with RawClient(gw.starttls_port, src, timeout=5) as c:
        c.line()
        c.send(b"a STARTTLS\r\n")
        assert c.line().startswith(b"a OK ")
        c.send(b"b CAPABILITY\r\n")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            c.starttls(gw.client_ssl())
        session = session_of(gw, src, c.local_port)
    failed = wait_for(
        lambda: [e for e in gw.events("tls_failed") if e.get("session") == session],
        what="the tls_failed event",
    )
    assert len(failed) == 1
    assert failed[0]["tls_mode"] == "starttls"
    assert not [e for e in gw.events("tls") if e.get("session") == session]


def test_injection_spread_over_segments(gw: GatewayProcess) -> None:
    """The STARTTLS line split over two writes, the second carrying an injected
    LOGIN and NOOP: nothing of it is executed, before or after the handshake."""
    src = source_address(42)
    with RawClient(gw.starttls_port, src) as c:
        c.line()
        c.send(b"a STARTT")
        assert c.quiet(0.2) == b""
        c.send(b"LS\r\nb LOGIN alice secret\r\nd NOOP\r\n")
        assert c.line().startswith(b"a OK ")
        assert c.quiet(0.3) == b""
        c.starttls(gw.client_ssl())
        assert c.quiet(0.3) == b""
        assert c.command(b"e", b"NOOP") == [b"e OK NOOP completed."]
        session = session_of(gw, src, c.local_port)
    assert not [e for e in gw.events("auth") if e.get("session") == session]


def test_starttls_inside_tls_is_refused(gw: GatewayProcess) -> None:
    src = source_address(43)
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        lines = c.command(b"a", b"STARTTLS")
        assert lines[-1].startswith(b"a BAD "), lines
        assert c.command(b"b", b"NOOP")[-1].startswith(b"b OK")
    with RawClient(gw.starttls_port, src) as c:
        c.line()
        c.command(b"a", b"STARTTLS")
        c.starttls(gw.client_ssl())
        lines = c.command(b"b", b"STARTTLS")
        assert lines[-1].startswith(b"b BAD "), lines
