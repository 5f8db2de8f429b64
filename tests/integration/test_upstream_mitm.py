"""A hostile or impersonated upstream: the gateway verifies the upstream's
certificate and name, refuses a PREAUTH or BYE greeting, does not fall back to
clear text when STARTTLS is refused, and treats bytes injected after the
upstream's STARTTLS OK as an attack. In every case the client gets
NO [UNAVAILABLE], and no credential (the master password or the user's) leaves
the gateway."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import (
    FakeUpstream,
    RawClient,
    dovecot_lines,
    running_gateway,
    session_of,
    set_upstream,
)

pytestmark = pytest.mark.dovecot

UNAVAILABLE = b"NO [UNAVAILABLE] Service temporarily unavailable, try later."


@dataclass
class Recorder:
    """What the fake upstream received, over all connections."""

    data: bytearray = field(default_factory=bytearray)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, chunk: bytes) -> None:
        with self.lock:
            self.data += chunk

    def drain(self, conn: socket.socket) -> None:
        conn.settimeout(3.0)
        try:
            while chunk := conn.recv(65536):
                self.add(chunk)
        except OSError:
            pass


@dataclass
class Fake:
    gw: GatewayProcess
    upstream: FakeUpstream
    password: str
    master_password: str


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer) -> Iterator[Fake]:
    with (
        FakeUpstream(lambda conn: None) as upstream,
        running_gateway(
            tmp_path_factory.mktemp("gw-fake-upstream"),
            dovecot,
            edit=lambda text: set_upstream(text, upstream.port, login_timeout=1.5),
        ) as gw,
    ):
        yield Fake(gw, upstream, gw.create_app_password("alice", "mitm"), dovecot.master_password)


def _greeting(caps: bytes = b"IMAP4rev1 STARTTLS SASL-IR AUTH=PLAIN") -> bytes:
    return b"* OK [CAPABILITY " + caps + b"] Fake server ready.\r\n"


def _starttls_answer(answer: bytes, rec: Recorder) -> Callable[[socket.socket], None]:
    def handler(conn: socket.socket) -> None:
        conn.sendall(_greeting())
        line = b""
        while not line.endswith(b"\n"):
            chunk = conn.recv(1)
            if not chunk:
                return
            line += chunk
        rec.add(line)
        conn.sendall(answer)
        rec.drain(conn)

    return handler


def _greet_only(greeting: bytes, rec: Recorder) -> Callable[[socket.socket], None]:
    def handler(conn: socket.socket) -> None:
        conn.sendall(greeting)
        rec.drain(conn)

    return handler


def _silent(rec: Recorder) -> Callable[[socket.socket], None]:
    return rec.drain


CASES: dict[str, tuple[Callable[[Recorder], Callable[[socket.socket], None]], str]] = {
    "response-injection-after-starttls": (
        lambda rec: _starttls_answer(
            b"g0 OK Begin TLS negotiation now.\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] x\r\n",
            rec,
        ),
        "injected",
    ),
    "starttls-refused": (
        lambda rec: _starttls_answer(b"g0 NO STARTTLS is broken today.\r\n", rec),
        "STARTTLS refused",
    ),
    "preauth-greeting": (
        lambda rec: _greet_only(b"* PREAUTH [CAPABILITY IMAP4rev1] Welcome.\r\n", rec),
        "PREAUTH",
    ),
    "bye-greeting": (lambda rec: _greet_only(b"* BYE Go away.\r\n", rec), "greeting"),
    "silent": (_silent, "timed out"),
    "not-imap": (
        lambda rec: _greet_only(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", rec),
        "greeting",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_upstream(fake: Fake, case: str) -> None:
    make_handler, reason = CASES[case]
    rec = Recorder()
    fake.upstream.handler = make_handler(rec)
    src = source_address(100)
    with RawClient(fake.gw.implicit_port, src, tls=fake.gw.client_ssl()) as c:
        c.line()
        assert c.command(b"l", f'LOGIN alice "{fake.password}"'.encode()) == [b"l " + UNAVAILABLE]
        # Still a usable pre-auth connection.
        assert c.command(b"n", b"NOOP") == [b"n OK NOOP completed."]
        session = session_of(fake.gw, src, c.local_port)
    auth = next(e for e in fake.gw.events("auth") if e.get("session") == session)
    assert auth["result"] == "unavailable"
    assert reason in auth["reason"], auth
    with rec.lock:
        received = bytes(rec.data)
    assert b"AUTHENTICATE" not in received
    assert b"LOGIN" not in received
    assert fake.master_password.encode() not in received
    assert fake.password.encode() not in received
    assert received in (b"", b"g0 STARTTLS\r\n"), received


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("wrong-ca", lambda text, gw: text.replace(_ca_line(text), f'ca = "{gw.ca_cert}"')),
        (
            "wrong-name",
            lambda text, gw: text.replace(
                'server_name = "localhost"', 'server_name = "mail.example.org"'
            ),
        ),
    ],
    ids=["wrong-ca", "wrong-name"],
)
def test_unverified_upstream_gets_no_credentials(
    tmp_path_factory: pytest.TempPathFactory,
    dovecot: DovecotServer,
    name: str,
    edit: Callable[[str, GatewayProcess], str],
) -> None:
    """The real Dovecot, but the gateway cannot verify it (a CA it does not trust,
    or a name the certificate does not carry): the login stops before any
    credential is sent."""
    src = source_address(101 if name == "wrong-ca" else 102)

    def rewrite(gw: GatewayProcess) -> None:
        new = edit(gw.config_path.read_text(), gw)
        assert new != gw.config_path.read_text()
        gw.config_path.write_text(new)

    with running_gateway(
        tmp_path_factory.mktemp(f"gw-{name}"), dovecot, before_start=rewrite
    ) as gw:
        password = gw.create_app_password("alice", name)
        with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
            c.line()
            lines = c.command(b"l", f'LOGIN alice "{password}"'.encode())
            assert lines == [b"l " + UNAVAILABLE]
            session = session_of(gw, src, c.local_port)
        auth = next(e for e in gw.events("auth") if e.get("session") == session)
    assert auth["result"] == "unavailable"
    assert "certificate verification failed" in auth["reason"], auth
    # Dovecot saw a TLS handshake break off, and no login.
    assert not dovecot_lines(dovecot, f"session=<{session}>")
    assert not dovecot_lines(dovecot, f"rip={src},")


def _ca_line(text: str) -> str:
    return next(ln for ln in text.splitlines() if ln.startswith("ca = "))
