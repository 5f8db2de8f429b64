"""STARTTLS command injection (CVE-2011-0411 class): bytes a client (or a
man in the middle) sends in clear after STARTTLS must never be read as a command,
neither before nor after the TLS handshake, however long the gateway waits before
it starts TLS.

Source addresses: 40-44 and 230-234 (tests/integration/conftest.py)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import RawClient, running_gateway, session_of, wait_for

pytestmark = pytest.mark.dovecot

#: limits.max_handshakes of `gw_few_turns`: the turns an attacker has to hold.
TURNS = 2


@pytest.fixture(scope="module")
def gw_few_turns(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    with running_gateway(
        tmp_path_factory.mktemp("gw-few-turns"), dovecot, limits=f"max_handshakes = {TURNS}\n"
    ) as gw:
        yield gw


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


@pytest.fixture(scope="module")
def gw_one_turn(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    with running_gateway(
        tmp_path_factory.mktemp("gw-one-turn"),
        dovecot,
        limits="max_handshakes = 1\nhandshake_timeout = 3.0\n",
    ) as gw:
        yield gw


def _hold_turns(gw: GatewayProcess, src: str, count: int = TURNS) -> list[socket.socket]:
    """Idle TCP connections to the implicit-TLS listener: each holds a handshake
    turn (taken, or queued for, at once after its `connect` event) until it closes
    or its handshake times out."""
    holders = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", gw.implicit_port), 5, source_address=(src, 0))
        holders.append(sock)
        session_of(gw, src, sock.getsockname()[1])
    return holders


def test_starttls_injection_while_waiting_for_a_handshake_turn(
    gw_few_turns: GatewayProcess,
) -> None:
    """The attack of issue #9 (A1): an on-path attacker holds every handshake turn
    with idle connections, appends his commands to the victim's STARTTLS and lets
    the turns go. The gateway answers STARTTLS only when it has a turn, drops
    everything that arrived before its OK, and reports it; a real client that
    waited for a turn still gets TLS and logs in."""
    gw = gw_few_turns
    password = gw.create_app_password("alice", "injection")
    injected = f'b LOGIN alice "{password}"\r\nd NOOP\r\n'.encode()
    holders = _hold_turns(gw, source_address(230))
    released = threading.Event()

    def legitimate_client() -> tuple[bool, list[bytes]]:
        with RawClient(gw.starttls_port, source_address(232)) as c:
            assert c.line().startswith(b"* OK ")
            c.send(b"a STARTTLS\r\n")
            ok = c.line()
            assert ok == b"a OK Begin TLS negotiation now.", ok
            answered_after_release = released.is_set()
            c.starttls(gw.client_ssl())
            return answered_after_release, c.command(b"l", f'LOGIN alice "{password}"'.encode())

    with (
        ThreadPoolExecutor(1) as pool,
        RawClient(gw.starttls_port, source_address(231)) as victim,
    ):
        try:
            assert victim.line().startswith(b"* OK ")
            victim.send(b"a STARTTLS\r\n")
            victim.send(injected)  # the attacker's bytes, after the victim's line
            legit = pool.submit(legitimate_client)
            # Once the gateway has taken the later connection, it has read (and
            # dropped) the injected bytes too: they were queued before it.
            wait_for(
                lambda: [e for e in gw.events("connect") if e["src"] == source_address(232)],
                what="the legitimate client's connection",
            )
            # While every turn is held the gateway says nothing: no OK yet, and
            # nothing for b or d.
            assert victim.quiet(0.5) == b""
        finally:
            released.set()
            for sock in holders:
                sock.close()
        assert victim.line() == b"a OK Begin TLS negotiation now."
        victim.starttls(gw.client_ssl())
        # The first tagged answer inside TLS is for the client's own next command.
        assert victim.command(b"c", b"NOOP") == [b"c OK NOOP completed."]
        session = session_of(gw, source_address(231), victim.local_port)

        answered_after_release, login = legit.result(timeout=30)
        assert answered_after_release
        assert login[-1].startswith(b"l OK"), login

    injections = wait_for(
        lambda: [e for e in gw.events("starttls_injection") if e.get("session") == session],
        what="the starttls_injection event",
    )
    assert len(injections) == 1, injections
    assert injections[0]["discarded_bytes"] == len(injected)
    assert not [e for e in gw.events("auth") if e.get("session") == session]
    assert [e["tls_mode"] for e in gw.events("tls") if e.get("session") == session] == ["starttls"]
    legit_sessions = {e["session"] for e in gw.events("connect") if e["src"] == source_address(232)}
    assert not [e for e in gw.events("starttls_injection") if e["session"] in legit_sessions]


def test_starttls_not_admitted_in_time_is_told_busy(gw_one_turn: GatewayProcess) -> None:
    """A STARTTLS whose turn does not come within handshake_timeout gets a BYE
    (never the OK), and what was injected meanwhile is still reported. The one
    turn is held by an idle connection, and the next by a second one queued
    ahead of the STARTTLS: it is granted only when the first times out, and holds
    the turn longer than the STARTTLS may wait.

    The second holder queues a second after the first: its own wait must outlast
    the first's handshake timeout, even when a loaded machine fires that timeout
    late (queued at once, it could give up first and hand the turn to the
    STARTTLS)."""
    gw, src = gw_one_turn, source_address(234)
    holders = _hold_turns(gw, source_address(233), count=1)
    time.sleep(1.0)
    holders += _hold_turns(gw, source_address(233), count=1)
    try:
        with RawClient(gw.starttls_port, src) as c:
            assert c.line().startswith(b"* OK ")
            c.send(b"a STARTTLS\r\nb NOOP\r\n")
            c.send(b"c NOOP\r\n")
            rest = c.rest_until_closed(timeout=10)
            assert rest == b"* BYE [UNAVAILABLE] Server busy, try later.\r\n", rest
            session = session_of(gw, src, c.local_port)
    finally:
        for sock in holders:
            sock.close()
    failed = [e for e in gw.events("tls_failed") if e.get("session") == session]
    assert [e["reason"] for e in failed] == ["not admitted"]
    injections = [e for e in gw.events("starttls_injection") if e.get("session") == session]
    assert [e["discarded_bytes"] for e in injections] == [len(b"b NOOP\r\nc NOOP\r\n")]
