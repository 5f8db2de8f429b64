"""The mail server goes away: new logins answer NO [UNAVAILABLE] (never the
authentication failure, never a hang), relayed sessions end with a BYE, the
gateway keeps running and recovers by itself when the server is back.

The gateway talks to Dovecot through a TcpForwarder on a port the test owns, so
"the server" can be killed and brought back without touching the shared Dovecot."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.dovecot import DOVEADM_BINARY, DovecotServer, free_port
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import (
    FakeUpstream,
    RawClient,
    TcpForwarder,
    running_gateway,
    session_of,
    set_upstream,
    wait_for,
)

pytestmark = pytest.mark.dovecot

UNAVAILABLE = b"NO [UNAVAILABLE] Service temporarily unavailable, try later."
LOST = b"* BYE [UNAVAILABLE] Connection to the mail server lost."


@dataclass
class Setup:
    gw: GatewayProcess
    port: int  # where the gateway expects its upstream
    dovecot: DovecotServer
    password: str

    def forwarder(self) -> TcpForwarder:
        fwd = TcpForwarder(self.port, ("127.0.0.1", self.dovecot.imap_port))
        fwd.start()
        return fwd


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer) -> Iterator[Setup]:
    port = free_port()
    with running_gateway(
        tmp_path_factory.mktemp("gw-upstream-down"),
        dovecot,
        edit=lambda text: set_upstream(text, port, connect_timeout=1.0, login_timeout=1.5),
    ) as gw:
        yield Setup(gw, port, dovecot, gw.create_app_password("alice", "upstream-down"))


def _login(c: RawClient, password: str, tag: bytes = b"l") -> list[bytes]:
    return c.command(tag, f'LOGIN alice "{password}"'.encode())


def test_nothing_listening_then_recovery(setup: Setup) -> None:
    gw, src = setup.gw, source_address(80)
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        started = time.monotonic()
        assert _login(c, setup.password, b"l1") == [b"l1 " + UNAVAILABLE]
        assert time.monotonic() - started < 1.0  # refused at once, not a timeout
        assert _login(c, setup.password, b"l2") == [b"l2 " + UNAVAILABLE]
        # Unavailability is no authentication failure: no BYE after three.
        assert _login(c, setup.password, b"l3") == [b"l3 " + UNAVAILABLE]

        # The mail server comes back: the same connection logs in, no restart.
        fwd = setup.forwarder()
        try:
            lines = _login(c, setup.password, b"l4")
            assert lines[-1].startswith(b"l4 OK "), lines
            lines = c.command(b"s", b"SELECT INBOX")
            assert lines[-1].startswith(b"s OK "), lines
            assert c.command(b"o", b"LOGOUT")[-1].startswith(b"o OK")
        finally:
            fwd.kill()
        session = session_of(gw, src, c.local_port)
    auths = [e for e in gw.events("auth") if e.get("session") == session]
    assert [e["result"] for e in auths] == ["unavailable"] * 3 + ["ok"]
    assert "upstream" in auths[0]["reason"]
    assert setup.gw.proc is not None
    assert setup.gw.proc.poll() is None


def test_relayed_session_ends_with_bye_when_upstream_dies(setup: Setup) -> None:
    gw, src = setup.gw, source_address(81)
    fwd = setup.forwarder()
    try:
        with (
            RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c,
            RawClient(gw.starttls_port, src) as idle,
        ):
            c.line()
            assert _login(c, setup.password)[-1].startswith(b"l OK ")
            assert c.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK ")
            c.send(b"i IDLE\r\n")
            assert c.line().startswith(b"+ ")
            idle.line()
            assert fwd.accepted == 1

            fwd.kill()  # the mail server is gone
            rest = c.rest_until_closed()
            assert rest.endswith(LOST + b"\r\n"), rest
            session = session_of(gw, src, c.local_port)

            # A pre-auth connection is not affected, but cannot log in now.
            assert idle.command(b"n", b"NOOP") == [b"n OK NOOP completed."]
            idle.command(b"t", b"STARTTLS")
            idle.starttls(gw.client_ssl())
            assert _login(idle, setup.password) == [b"l " + UNAVAILABLE]

            fwd = setup.forwarder()  # back again
            assert _login(idle, setup.password, b"m")[-1].startswith(b"m OK ")
    finally:
        fwd.kill()
    closes = wait_for(
        lambda: [e for e in gw.events("close") if e.get("session") == session],
        what="the close event",
    )
    assert closes[0]["reason"] == "relay ended"


def test_bye_from_upstream_is_passed_on_once(setup: Setup) -> None:
    """When the server says BYE itself before it closes (here: `doveadm kick`), the
    client gets that BYE and no second one from the gateway."""
    gw, src = setup.gw, source_address(82)
    password = gw.create_app_password("carol", "kick")
    fwd = setup.forwarder()
    try:
        with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
            c.line()
            assert c.command(b"l", f'LOGIN carol "{password}"'.encode())[-1].startswith(b"l OK ")
            assert c.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK ")
            subprocess.run(
                [str(DOVEADM_BINARY), "-c", str(setup.dovecot.config_path), "kick", "carol"],
                check=True,
                capture_output=True,
                timeout=30,
            )
            rest = c.rest_until_closed()
    finally:
        fwd.kill()
    lines = rest.split(b"\r\n")
    byes = [line for line in lines if line.startswith(b"* BYE ")]
    assert len(byes) == 1, rest
    assert byes[0] != LOST, rest


def _tls_upstream(
    dovecot: DovecotServer, after_login: Callable[[ssl.SSLSocket], None]
) -> Callable[[socket.socket], None]:
    """A fake mail server that speaks just enough IMAP (STARTTLS with Dovecot's own
    certificate, ID, AUTHENTICATE PLAIN) to let the gateway log in, then runs
    `after_login` on the TLS socket."""

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] Fake server ready.\r\n")
        line = b""
        while not line.endswith(b"\n"):
            line += conn.recv(1)
        assert line == b"g0 STARTTLS\r\n", line
        conn.sendall(b"g0 OK Begin TLS negotiation now.\r\n")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(dovecot.base / "server-chain.pem", dovecot.base / "server-key.pem")
        with ctx.wrap_socket(conn, server_side=True) as tls, tls.makefile("rb") as reader:
            while not reader.readline().startswith(b"g2 AUTHENTICATE PLAIN"):
                pass
            tls.sendall(b"* ID NIL\r\ng1 OK ID completed.\r\n+ \r\n")
            reader.readline()  # the SASL response
            after_login(tls)

    return handler


_LOGGED_IN = b"g2 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"


def _close_after_ok(tls: ssl.SSLSocket) -> None:
    tls.sendall(_LOGGED_IN)
    tls.close()


def _bye_after_ok(tls: ssl.SSLSocket) -> None:
    tls.sendall(_LOGGED_IN)
    time.sleep(0.001)
    tls.sendall(b"* BYE Fake server shutting down.\r\n")
    tls.close()


def _alert_after_ok(tls: ssl.SSLSocket) -> None:
    tls.sendall(_LOGGED_IN)
    time.sleep(0.001)
    tls.sendall(b"* OK [ALERT] Fake server says hello.\r\n")
    with tls.makefile("rb") as reader:
        line = reader.readline()
        tls.sendall(line.split(b" ")[0] + b" OK NOOP completed.\r\n")
        reader.readline()


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (_close_after_ok, [LOST]),
        (_bye_after_ok, [b"* BYE Fake server shutting down."]),
        (_alert_after_ok, [b"* OK [ALERT] Fake server says hello.", b"n OK NOOP completed."]),
    ],
    ids=["close", "bye", "alert"],
)
def test_upstream_data_right_after_login_reaches_the_client(
    setup: Setup,
    script: Callable[[ssl.SSLSocket], None],
    expected: list[bytes],
) -> None:
    """Whatever the server sends (or does) right after its login OK, before the
    gateway has started relaying, reaches the client in order: nothing is lost in
    the hand-over, and a server gone at that point still means a BYE."""
    gw, src = setup.gw, source_address(83)
    with (
        FakeUpstream(_tls_upstream(setup.dovecot, script), setup.port),
        RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c,
    ):
        c.line()
        assert _login(c, setup.password)[-1].startswith(b"l OK [CAPABILITY IMAP4rev1 IDLE]")
        if expected[-1].startswith(b"n "):
            c.send(b"n NOOP\r\n")
            got = [c.line() for _ in expected]
        else:
            got = c.rest_until_closed().split(b"\r\n")[:-1]
    assert got == expected
