"""Pre-auth slot exhaustion from one source (issue #9, A2): 5,000 idle connections
from one address, and 5,000 from the addresses of one IPv6 /64, must not take the
pre-auth slots, handshake turns or file descriptors of anyone else. A connection
over its source's limit is closed at accept (a one-line BYE on the STARTTLS
listener, nothing on the implicit one) and costs nothing; meanwhile a familiar
user and a newcomer log in as usual, at the default limits.

Runs in a network namespace of its own (tests/netns.py), so that one test owns a
/48 of source addresses: the gateway listens on ::1 there and reaches the Dovecot
fixture through a forwarder whose listener is inside. Sources: the flood from
fd00:1:0:a::1 (one address) and fd00:1:0:b::1-1388 (one /64), alice (familiar:
she logged in before) from fd00:1:0:c::7, bob (a newcomer) from fd00:1:0:d::7.
"""

from __future__ import annotations

import os
import resource
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.dovecot import DovecotServer, free_port
from tests.gateway import GatewayProcess
from tests.integration.conftest import (
    RawClient,
    TcpForwarder,
    running_gateway,
    set_upstream,
    wait_for,
)
from tests.netns import NetNamespace

pytestmark = pytest.mark.dovecot

FLOOD = 5000
PER_SOURCE = 20  # limits.max_preauth_per_source, default
ONE_ADDRESS = "fd00:1:0:a::1"
ONE_NETWORK = "fd00:1:0:b::"
FAMILIAR = "fd00:1:0:c::7"
NEWCOMER = "fd00:1:0:d::7"
TOO_MANY = b"* BYE [UNAVAILABLE] Too many connections from your address.\r\n"


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    with NetNamespace.create() as ns:
        yield ns


@pytest.fixture
def many_files() -> Iterator[None]:
    """Two floods held open at once need more descriptors than a default 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * FLOOD + 1000
    assert hard == resource.RLIM_INFINITY or hard >= wanted, f"RLIMIT_NOFILE hard {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def gw_in_namespace(
    tmp_path: Path, dovecot: DovecotServer, namespace: NetNamespace
) -> Iterator[GatewayProcess]:
    upstream_port = free_port()
    forwarder = TcpForwarder(
        upstream_port,
        ("127.0.0.1", dovecot.imap_port),
        make_listener=lambda: namespace.tcp_socket(socket.AF_INET),
    )
    forwarder.start()
    try:
        with running_gateway(
            tmp_path / "gw",
            dovecot,
            listen_host="::1",
            netns=namespace,
            edit=lambda text: set_upstream(text, upstream_port),
        ) as gw:
            yield gw
    finally:
        forwarder.kill()


def _client(ns: NetNamespace, gw: GatewayProcess, src: str, listener: str) -> RawClient:
    """Connected from `src` inside the namespace, TLS up, greeting read."""
    sock = ns.tcp_socket()
    sock.settimeout(10)
    sock.bind((src, 0))
    tls = listener == "implicit"
    port = gw.implicit_port if tls else gw.starttls_port
    sock.connect(("::1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = RawClient(port, src, tls=gw.client_ssl() if tls else None, sock=sock)
    greeting = c.line()
    assert greeting.startswith(b"* OK "), greeting
    if not tls:
        assert c.command(b"s", b"STARTTLS") == [b"s OK Begin TLS negotiation now."]
        c.starttls(gw.client_ssl())
    return c


def _log_in(ns: NetNamespace, gw: GatewayProcess, src: str, listener: str, pw: str) -> None:
    with _client(ns, gw, src, listener) as c:
        login = c.command(b"l", f"LOGIN {pw}".encode())
        assert login[-1].startswith(b"l OK "), login
        # Relayed to Dovecot: a mailbox command works.
        assert c.command(b"x", b"SELECT INBOX")[-1].startswith(b"x OK ")
        c.command(b"o", b"LOGOUT")


@dataclass
class Flood:
    """FLOOD connections of one source, every other one to each listener."""

    starttls: list[socket.socket] = field(default_factory=list)
    implicit: list[socket.socket] = field(default_factory=list)
    got: dict[socket.socket, bytes] = field(default_factory=dict)
    closed: set[socket.socket] = field(default_factory=set)

    @classmethod
    def open(cls, ns: NetNamespace, gw: GatewayProcess, sources: list[str]) -> Flood:
        flood = cls()
        for i, sock in enumerate(ns.tcp_sockets(len(sources))):
            sock.settimeout(10)
            sock.bind((sources[i], 0))
            to_starttls = i % 2 == 0
            sock.connect(("::1", gw.starttls_port if to_starttls else gw.implicit_port))
            sock.setblocking(False)
            (flood.starttls if to_starttls else flood.implicit).append(sock)
            flood.got[sock] = b""
        return flood

    def close(self) -> None:
        for sock in self.got:
            sock.close()

    def read(self) -> None:
        """Whatever the gateway sent or closed since the last call (no waiting)."""
        poller = select.poll()
        by_fd = {s.fileno(): s for s in self.got if s not in self.closed}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(0):
            sock = by_fd[fd]
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                data = b""
            if data:
                self.got[sock] += data
            else:
                self.closed.add(sock)

    @property
    def greeted(self) -> int:
        return sum(1 for s in self.starttls if self.got[s].startswith(b"* OK "))

    def settled(self) -> bool:
        """Every connection the gateway refused is closed, the rest greeted or
        waiting for a ClientHello: each STARTTLS one has its line, and all but
        the admitted implicit ones are closed."""
        self.read()
        answered = all(
            s in self.closed or (self.got[s].startswith(b"* OK ") and self.got[s].endswith(b"\r\n"))
            for s in self.starttls
        )
        implicit_open = len(self.implicit) - len(self.closed.intersection(self.implicit))
        return answered and self.greeted + implicit_open <= PER_SOURCE


def _gateway_fds(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    return len(os.listdir(f"/proc/{gw.proc.pid}/fd"))


def test_one_address_or_one_64_cannot_take_every_preauth_slot(
    gw_in_namespace: GatewayProcess, namespace: NetNamespace, many_files: None
) -> None:
    gw, ns = gw_in_namespace, namespace
    alice = f'alice "{gw.create_app_password("alice", "flood")}"'
    bob = f'bob "{gw.create_app_password("bob", "flood")}"'
    _log_in(ns, gw, FAMILIAR, "implicit", alice)  # her address is familiar from now on
    floods = {
        ONE_ADDRESS: Flood.open(ns, gw, [ONE_ADDRESS] * FLOOD),
        f"{ONE_NETWORK}/64": Flood.open(ns, gw, [f"{ONE_NETWORK}{i + 1:x}" for i in range(FLOOD)]),
    }
    try:
        # While both floods hold their connections, real users log in on both
        # listeners (each accept queue is FIFO: their connections come after the flood's).
        for listener in ("starttls", "implicit"):
            _log_in(ns, gw, FAMILIAR, listener, alice)
            _log_in(ns, gw, NEWCOMER, listener, bob)
        for name, flood in floods.items():
            wait_for(flood.settled, 30, f"the gateway to answer the flood from {name}")
            implicit_open = len(flood.implicit) - len(flood.closed.intersection(flood.implicit))
            # Exactly the per-source limit got in; every other one was closed at once,
            # with the BYE on the STARTTLS listener and nothing (no TLS) on the implicit one.
            assert flood.greeted + implicit_open == PER_SOURCE, (name, flood.greeted)
            for sock in flood.starttls:
                got = flood.got[sock]
                assert got.startswith(b"* OK ") or (got == TOO_MANY and sock in flood.closed)
            assert all(flood.got[s] == b"" for s in flood.implicit), name
        # The refused connections' descriptors are gone: 10,000 connections cost
        # the gateway no more than the 40 it admitted.
        fds = _gateway_fds(gw)
        assert fds < 40 + 200, fds
    finally:
        for flood in floods.values():
            flood.close()

    connects = [e["src"] for e in gw.events("connect")]
    assert connects.count(ONE_ADDRESS) == PER_SOURCE
    assert len([src for src in connects if src.startswith(ONE_NETWORK)]) == PER_SOURCE
    assert gw.stop() == 0  # the counts of the last interval are written on the way out
    for key in ("fd00:1:0:a::/64", "fd00:1:0:b::/64"):
        refused = [e for e in gw.events("refused") if e["src"] == key]
        # A flood is a few lines in the audit log, not one per connection.
        assert 1 <= len(refused) <= 10, refused
        assert {e["reason"] for e in refused} == {"per-source pre-auth limit"}
        assert sum(e["count"] for e in refused) == FLOOD - PER_SOURCE
    assert not [e for e in gw.events("refused") if e["src"] in (FAMILIAR, NEWCOMER)]
