"""Pre-authentication floods: concurrent unauthenticated connections per source are
capped (the one over the cap is closed at accept, before TLS, with a BYE that says
why on a STARTTLS listener), other sources are not affected, familiar sources keep
a reserve of the total, slots come back when connections close, and a connection
that does not log in (or does not even finish its TLS handshake) in time is ended.

Source addresses: 55-64 and 235-239 (tests/integration/conftest.py)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import RawClient, running_gateway, wait_for

pytestmark = pytest.mark.dovecot

TOO_MANY = b"* BYE [UNAVAILABLE] Too many connections from your address."
BUSY = b"* BYE [UNAVAILABLE] Server busy, try later."


@pytest.fixture(scope="module")
def gw_capped(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    with running_gateway(
        tmp_path_factory.mktemp("gw-capped"),
        dovecot,
        limits="max_preauth_per_source = 5\nmax_preauth_total = 8\n",
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def gw_reserved(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    with running_gateway(
        tmp_path_factory.mktemp("gw-reserved"),
        dovecot,
        limits="max_preauth_per_source = 3\nmax_preauth_total = 8\nfamiliar_reserve = 2\n",
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def gw_impatient(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    with running_gateway(
        tmp_path_factory.mktemp("gw-impatient"),
        dovecot,
        limits="preauth_timeout = 1.0\nhandshake_timeout = 1.0\n",
    ) as gw:
        yield gw


def _greeted(gw: GatewayProcess, src: str) -> RawClient:
    c = RawClient(gw.starttls_port, src)
    line = c.line()
    assert line.startswith(b"* OK "), line
    return c


def test_per_source_preauth_cap(gw_capped: GatewayProcess) -> None:
    gw, src, other = gw_capped, source_address(55), source_address(56)
    held = [_greeted(gw, src) for _ in range(5)]
    try:
        # The 6th from the same source is closed at accept: on the STARTTLS listener
        # with a clear BYE, on the implicit one before any TLS (no handshake, no turn).
        with RawClient(gw.starttls_port, src) as sixth:
            assert sixth.line() == TOO_MANY
            assert sixth.rest_until_closed() == b""
        with pytest.raises((ssl.SSLError, ConnectionError)):
            RawClient(gw.implicit_port, src, tls=gw.client_ssl()).close()
        refused = wait_for(
            lambda: [e for e in gw.events("refused") if e.get("src") == src],
            what="the refused event",
        )
        # One event for the source and reason (the rest are counted, not listed).
        assert len(refused) == 1, refused
        assert refused[0]["reason"] == "per-source pre-auth limit"
        assert refused[0]["count"] == 1
        # They cost no session: only the five held connections were ever started.
        assert len([e for e in gw.events("connect") if e.get("src") == src]) == 5

        # Another source is not affected, and its login goes through.
        password = gw.create_app_password("alice", "flood")
        with _greeted(gw, other) as c:
            assert c.command(b"s", b"STARTTLS")[-1].startswith(b"s OK")
            c.starttls(gw.client_ssl())
            assert c.command(b"l", f'LOGIN alice "{password}"'.encode())[-1].startswith(b"l OK")

        # The held connections still work.
        for c in held:
            assert c.command(b"n", b"NOOP") == [b"n OK NOOP completed."]
    finally:
        for c in held:
            c.close()

    # Their slots come back once the gateway has seen them close.
    def fresh() -> RawClient | None:
        c = RawClient(gw.starttls_port, src)
        if c.line().startswith(b"* OK "):
            return c
        c.close()
        return None

    again: RawClient = wait_for(fresh, what="a free pre-auth slot")
    with contextlib.closing(again):
        assert again.command(b"n", b"NOOP") == [b"n OK NOOP completed."]


def test_logged_in_sessions_do_not_hold_preauth_slots(gw_capped: GatewayProcess) -> None:
    gw, src = gw_capped, source_address(57)
    password = gw.create_app_password("alice", "sessions")
    sessions = []
    try:
        for _ in range(6):
            c = RawClient(gw.implicit_port, src, tls=gw.client_ssl())
            sessions.append(c)
            assert c.line().startswith(b"* OK ")
            assert c.command(b"l", f'LOGIN alice "{password}"'.encode())[-1].startswith(b"l OK")
        with _greeted(gw, src) as c:
            assert c.command(b"n", b"NOOP") == [b"n OK NOOP completed."]
        for c in sessions:
            assert c.command(b"n", b"NOOP")[-1].startswith(b"n OK")
    finally:
        for c in sessions:
            c.close()


def _all_closed_or_relayed(gw: GatewayProcess) -> bool:
    """Every connection the gateway saw so far is closed or logged in."""
    done = {e["session"] for e in gw.events("close")} | {e["session"] for e in gw.events("relay")}
    return all(e["session"] in done for e in gw.events("connect"))


def test_total_preauth_cap(gw_capped: GatewayProcess) -> None:
    gw = gw_capped
    wait_for(lambda: _all_closed_or_relayed(gw), what="earlier connections to end")
    held = [_greeted(gw, source_address(62)) for _ in range(5)]
    held += [_greeted(gw, source_address(63)) for _ in range(3)]
    try:
        with RawClient(gw.starttls_port, source_address(64)) as ninth:
            assert ninth.line() == BUSY
            assert ninth.rest_until_closed() == b""
    finally:
        for c in held:
            c.close()

    def fresh() -> RawClient | None:
        c = RawClient(gw.starttls_port, source_address(64))
        if c.line().startswith(b"* OK "):
            return c
        c.close()
        return None

    again: RawClient = wait_for(fresh, what="a free pre-auth slot")
    again.close()


def test_unfamiliar_flood_cannot_take_the_familiar_reserve(gw_reserved: GatewayProcess) -> None:
    """Unfamiliar sources fill every slot but the reserve (familiar_reserve = 2 of
    8): the next unfamiliar one is turned away, an address that logged in before
    still gets in and logs in."""
    gw, familiar = gw_reserved, source_address(235)
    password = gw.create_app_password("alice", "reserve")
    with RawClient(gw.implicit_port, familiar, tls=gw.client_ssl()) as c:
        c.line()
        assert c.command(b"l", f'LOGIN alice "{password}"'.encode())[-1].startswith(b"l OK")
    held = [_greeted(gw, source_address(236 + i // 3)) for i in range(6)]
    try:
        with RawClient(gw.starttls_port, source_address(238)) as c:
            assert c.line() == BUSY
            assert c.rest_until_closed() == b""
        # The reserve is the familiar source's: two connections at once, both log in.
        first = RawClient(gw.implicit_port, familiar, tls=gw.client_ssl())
        second = RawClient(gw.starttls_port, familiar)
        with first, second:
            assert first.line().startswith(b"* OK ")
            assert second.line().startswith(b"* OK ")
            # Now every slot is taken: a third connection, even familiar, is refused.
            with RawClient(gw.starttls_port, familiar) as third:
                assert third.line() == BUSY
            login = first.command(b"l", f'LOGIN alice "{password}"'.encode())
            assert login[-1].startswith(b"l OK"), login
            assert second.command(b"s", b"STARTTLS")[-1].startswith(b"s OK")
            second.starttls(gw.client_ssl())
            login = second.command(b"l", f'LOGIN alice "{password}"'.encode())
            assert login[-1].startswith(b"l OK"), login
    finally:
        for c in held:
            c.close()
    refused = [e for e in gw.events("refused") if e.get("src") == source_address(238)]
    assert [e["reason"] for e in refused] == ["pre-auth limit for unfamiliar sources"]
    refused = [e for e in gw.events("refused") if e.get("src") == familiar]
    assert [e["reason"] for e in refused] == ["total pre-auth limit"]


def test_idle_connection_is_logged_out(gw_impatient: GatewayProcess) -> None:
    gw, src = gw_impatient, source_address(58)
    with (
        RawClient(gw.starttls_port, src) as plain,
        RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as tls,
    ):
        started = time.monotonic()
        plain.line()
        tls.line()
        for c in (plain, tls):
            rest = c.rest_until_closed(timeout=5)
            assert rest.startswith(b"* BYE "), rest
            assert b"Autologout" in rest
        elapsed = time.monotonic() - started
    assert 0.8 <= elapsed <= 4.0, elapsed


def test_busy_but_unauthenticated_connection_is_logged_out(gw_impatient: GatewayProcess) -> None:
    """The pre-auth time is total, not idle time: NOOPs do not keep a connection."""
    gw, src = gw_impatient, source_address(59)
    seen: list[bytes] = []
    with RawClient(gw.starttls_port, src) as c:
        c.line()
        started = time.monotonic()
        with contextlib.suppress(EOFError, OSError):
            while time.monotonic() - started < 5:
                c.send(b"n NOOP\r\n")
                seen.append(c.line())
                if seen[-1].startswith(b"* BYE "):
                    break
                time.sleep(0.2)
        elapsed = time.monotonic() - started
    assert seen.count(b"n OK NOOP completed.") >= 2, seen
    assert seen[-1].startswith(b"* BYE Autologout"), seen
    assert elapsed < 4.0


def test_half_sent_command_is_logged_out(gw_impatient: GatewayProcess) -> None:
    gw, src = gw_impatient, source_address(60)
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        c.send(b"a LOGIN alice")
        rest = c.rest_until_closed(timeout=5)
    assert rest.startswith(b"* BYE "), rest
    assert b"Autologout" in rest


def test_stalled_tls_handshake_is_dropped(gw_impatient: GatewayProcess) -> None:
    """A TCP connection to the implicit-TLS listener that never sends a ClientHello
    holds its slot only until handshake_timeout."""
    gw, src = gw_impatient, source_address(61)
    started = time.monotonic()
    with socket.create_connection(
        ("127.0.0.1", gw.implicit_port), 5, source_address=(src, 0)
    ) as sock:
        try:
            data = sock.recv(1024)
        except ConnectionResetError:
            data = b""
        assert data == b""
    assert time.monotonic() - started < 4.0
    failed = wait_for(
        lambda: [e for e in gw.events("tls_failed") if e.get("src") == src],
        what="the tls_failed event",
    )
    assert failed[0]["tls_mode"] == "implicit"
