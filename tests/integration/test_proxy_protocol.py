"""Attack-named: the gateway behind a real HAProxy (`send-proxy` and `send-proxy-v2`)
in front of a real Dovecot. The client's address, not HAProxy's, is the source of
every limit, block and audit line, and reaches Dovecot's log (`ID x-originating-ip`
or a PROXY v2 header of the gateway's own); a peer that is not a trusted proxy gets
not a byte of IMAP, and its PROXY header changes nothing.

Source networks: 127.0.215.0/24 (clients), 127.0.216.0/24 (HAProxy is 127.0.216.1,
the only trusted proxy; 127.0.216.9 is an untrusted one).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imapguard.gateway.proxyproto import v2_header
from tests.dovecot import DovecotServer, free_port
from tests.gateway import GatewayProcess
from tests.haproxy import HAProxy, Route, running_haproxy
from tests.integration.conftest import (
    AUTH_FAILED,
    RawClient,
    dovecot_lines,
    running_gateway,
    wait_for,
)

pytestmark = pytest.mark.dovecot

HAPROXY_SOURCE = "127.0.216.1"
UNTRUSTED = "127.0.216.9"
FORGED = "203.0.113.5"

DEFENSE = """
[defense]
pair_free = 1
pair_block = 4
delay_base = 0.05
delay_max = 0.2

[[policy.rules]]
name = "no-imap-from-the-lab"
action = "deny"
networks = ["127.0.215.80/32"]
alert = "IMAP is off from the lab network"

[[policy.rules]]
name = "everyone-else"
action = "allow"
"""


@dataclass
class Site:
    """A gateway with two plain listeners (from GatewayProcess) and two behind
    HAProxy, and the HAProxy routes to them: v1/v2 × implicit/STARTTLS."""

    gw: GatewayProcess
    haproxy: HAProxy
    proxied_implicit: int
    proxied_starttls: int

    def route(self, name: str) -> int:
        return self.haproxy.port(name)


def proxied_listeners(implicit: int, starttls: int) -> str:
    trusted = f'trusted_proxies = ["{HAPROXY_SOURCE}/32"]\n'
    return (
        f'\n[[listen]]\naddress = "127.0.0.1:{implicit}"\ntls = "implicit"\n'
        f"proxy_protocol = true\n{trusted}"
        f'\n[[listen]]\naddress = "127.0.0.1:{starttls}"\ntls = "starttls"\n'
        f"proxy_protocol = true\n{trusted}"
    )


@contextlib.contextmanager
def site(base: Path, dovecot: DovecotServer, *, proxy_v2: bool = False) -> Iterator[Site]:
    """A gateway with proxied listeners, and HAProxy in front of them; with
    `proxy_v2` its upstream is Dovecot's `haproxy = yes` listener."""
    implicit, starttls = free_port(), free_port()

    def edit(text: str) -> str:
        if proxy_v2:
            plain = f'address = "127.0.0.1:{dovecot.imap_port}"\n'
            assert plain in text
            text = text.replace(
                plain,
                f'address = "127.0.0.1:{dovecot.haproxy_port}"\nforward_client_ip = "proxy-v2"\n',
            )
        return text + DEFENSE + proxied_listeners(implicit, starttls)

    with running_gateway(
        base / "gw",
        dovecot,
        limits="max_preauth_per_source = 3\nhandshake_timeout = 1.0\n",
        edit=edit,
    ) as gw:
        wait_for(lambda: gw.accepts(implicit) and gw.accepts(starttls), 10, "proxied listeners")
        routes = [
            Route("v2-implicit", (implicit,), "send-proxy-v2"),
            Route("v2-starttls", (starttls,), "send-proxy-v2"),
            Route("v1-implicit", (implicit,), "send-proxy"),
            Route("v1-starttls", (starttls,), "send-proxy"),
        ]
        with running_haproxy(base / "haproxy", routes, source=HAPROXY_SOURCE) as haproxy:
            yield Site(gw, haproxy, implicit, starttls)


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer) -> Iterator[Site]:
    """Upstream login with `ID x-originating-ip` (the default)."""
    with site(tmp_path_factory.mktemp("proxy-id"), dovecot) as s:
        yield s


def client(s: Site, route: str, src: str) -> RawClient:
    """A client of HAProxy's `route` from `src`, TLS up, greeting read."""
    tls = s.gw.client_ssl()
    c = RawClient(s.route(route), src, tls=tls if route.endswith("implicit") else None)
    greeting = c.line()
    assert greeting.startswith(b"* OK"), greeting
    if route.endswith("starttls"):
        assert c.command(b"s", b"STARTTLS")[-1].startswith(b"s OK")
        c.starttls(tls)
    return c


def login(s: Site, route: str, src: str, user: str, password: str) -> bytes:
    with client(s, route, src) as c:
        return c.command(b"a", f'LOGIN "{user}" "{password}"'.encode())[-1]


def events(gw: GatewayProcess, kind: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in gw.events(kind) if all(e.get(k) == v for k, v in match.items())]


def new_user(dovecot: DovecotServer, prefix: str) -> str:
    name = f"{prefix}{secrets.token_hex(3)}"
    dovecot.add_user(name, secrets.token_urlsafe(12))
    return name


# -- the client's address, everywhere ----------------------------------------------


@pytest.mark.parametrize(
    ("route", "n"),
    [("v2-implicit", 11), ("v2-starttls", 12), ("v1-implicit", 13), ("v1-starttls", 14)],
)
def test_client_address_behind_haproxy_reaches_audit_and_dovecot(
    lb: Site, dovecot: DovecotServer, route: str, n: int
) -> None:
    src = f"127.0.215.{n}"
    user = new_user(dovecot, "pp")
    password = lb.gw.create_app_password(user, "phone")
    assert login(lb, route, src, user, password).startswith(b"a OK")
    (connect,) = events(lb.gw, "connect", src=src)
    assert connect["proxy"] == HAPROXY_SOURCE
    assert connect["listener"].endswith(
        str(lb.proxied_implicit if route.endswith("implicit") else lb.proxied_starttls)
    )
    (auth,) = events(lb.gw, "auth", src=src, user=user)
    assert auth["result"] == "ok"
    wait_for(lambda: events(lb.gw, "relay", src=src, user=user), 5, "the relay line")
    # Dovecot heard of the client from the gateway's ID x-originating-ip (whose
    # x-session-ext-id is the gateway's session).
    wait_for(lambda: dovecot_lines(dovecot, f"user=<{user}>"), 5, "Dovecot's login line")
    (line,) = dovecot_lines(dovecot, f"user=<{user}>")
    assert f"rip={src}," in line
    assert f"session=<{connect['session']}>" in line
    # HAProxy's address is no client's.
    assert not events(lb.gw, "connect", src=HAPROXY_SOURCE, listener=connect["listener"])


def test_per_source_slots_behind_haproxy_are_the_clients_not_the_proxys(lb: Site) -> None:
    """One client holding its pre-auth slots through HAProxy (3 here) is refused
    its fourth; another client behind the same HAProxy still connects."""
    greedy, other = "127.0.215.20", "127.0.215.21"
    held = [client(lb, "v2-starttls", greedy) for _ in range(3)]
    try:
        with RawClient(lb.route("v2-starttls"), greedy) as fourth:
            assert b"Too many connections" in fourth.rest_until_closed()
        with client(lb, "v2-implicit", other) as c:
            assert c.command(b"n", b"NOOP")[-1].startswith(b"n OK")
    finally:
        for c in held:
            c.close()
    (refused,) = events(lb.gw, "refused", src=greedy)
    assert refused["reason"] == "per-source pre-auth limit"
    assert not events(lb.gw, "refused", src=HAPROXY_SOURCE)


def test_brute_force_through_haproxy_blocks_the_attacker_not_haproxy(
    lb: Site, dovecot: DovecotServer
) -> None:
    attacker, owner = "127.0.215.30", "127.0.215.31"
    user = new_user(dovecot, "bfp")
    password = lb.gw.create_app_password(user, "phone")
    for n in range(6):
        answer = login(lb, "v2-implicit", attacker, user, f"guess-{n}-{secrets.token_hex(3)}")
        assert answer == b"a " + AUTH_FAILED
    # The right password from the attacker's address is refused now...
    assert login(lb, "v2-implicit", attacker, user, password) == b"a " + AUTH_FAILED
    assert events(lb.gw, "auth", src=attacker)[-1]["reason"].startswith("blocked:")
    # ...while another client behind the same HAProxy logs in to the same account.
    assert login(lb, "v1-starttls", owner, user, password).startswith(b"a OK")
    listed = json.loads(lb.gw.cli("blocks", "list", "--json").stdout)
    targets = {b["target"] for b in listed}
    assert f"account-source:{attacker}|{user}" in targets
    assert not [t for t in targets if HAPROXY_SOURCE in t]


def test_policy_behind_haproxy_decides_on_the_client_address(
    lb: Site, dovecot: DovecotServer
) -> None:
    """A deny rule for one client's network refuses that client behind HAProxy, and
    only it (HAProxy's own address is in no rule)."""
    user = new_user(dovecot, "pol")
    password = lb.gw.create_app_password(user, "phone")
    answer = login(lb, "v2-implicit", "127.0.215.80", user, password)
    assert answer.startswith(b"a NO"), answer
    assert b"IMAP is off from the lab network" in answer
    assert login(lb, "v2-implicit", "127.0.215.81", user, password).startswith(b"a OK")


# -- peers that are not the proxy ----------------------------------------------------


@pytest.mark.parametrize("which", ["implicit", "starttls"])
def test_untrusted_peer_on_a_proxy_listener_gets_no_greeting(lb: Site, which: str) -> None:
    port = lb.proxied_implicit if which == "implicit" else lb.proxied_starttls
    src = "127.0.215.40" if which == "implicit" else "127.0.215.41"
    with RawClient(port, src) as c:
        assert c.rest_until_closed() == b""
    # The gateway writes the event just after it closes: wait for it, briefly.
    deadline = time.monotonic() + 5
    while not events(lb.gw, "refused", src=src) and time.monotonic() < deadline:
        time.sleep(0.05)
    (refused,) = events(lb.gw, "refused", src=src)
    assert refused["reason"] == "not a trusted proxy"
    assert not events(lb.gw, "connect", src=src)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_forged_proxy_header_from_untrusted_peer_does_not_change_its_source(
    lb: Site, version: str
) -> None:
    src = "127.0.215.42" if version == "v1" else "127.0.215.43"
    with RawClient(lb.proxied_starttls, src) as c:
        # The gateway may have closed before these arrive: they must change nothing.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            c.send(forged_header(version, c.local_port, lb.proxied_starttls))
            c.send(b"a CAPABILITY\r\n")
        assert c.rest_until_closed() == b""
    assert events(lb.gw, "refused", src=src)[0]["reason"] == "not a trusted proxy"
    assert FORGED not in lb.gw.audit_path.read_text()


def test_forged_proxy_header_on_a_plain_listener_is_a_bad_command(lb: Site) -> None:
    src = "127.0.215.44"
    with RawClient(lb.gw.starttls_port, src) as c:
        assert c.line().startswith(b"* OK")
        c.send(forged_header("v1", c.local_port, lb.gw.starttls_port))
        answer = c.line()
        assert b"BAD" in answer, answer
    assert events(lb.gw, "connect", src=src)
    assert FORGED not in lb.gw.audit_path.read_text()


def test_trusted_proxy_without_a_header_is_closed_after_the_timeout(lb: Site) -> None:
    """A trusted peer that sends nothing holds no slot of a client and gets no
    greeting; it is closed after limits.handshake_timeout (1 s here)."""
    with RawClient(lb.proxied_starttls, HAPROXY_SOURCE) as c:
        started = time.monotonic()
        assert c.rest_until_closed(timeout=5.0) == b""
        assert 0.8 < time.monotonic() - started < 4.0
    wait_for(
        lambda: events(lb.gw, "refused", reason="PROXY header: no PROXY header within 1 s"),
        5,
        "the refused line",
    )


def test_trusted_proxy_with_a_malformed_header_is_closed(lb: Site) -> None:
    with RawClient(lb.proxied_implicit, HAPROXY_SOURCE) as c:
        c.send(b"PROXY TCP4 192.0.2.1 192.0.2.2 99999 993\r\n")
        assert c.rest_until_closed() == b""
    wait_for(
        lambda: events(lb.gw, "refused", reason="PROXY header: v1 header with an invalid port"),
        5,
        "the refused line",
    )


def forged_header(version: str, src_port: int, dst_port: int) -> bytes:
    if version == "v1":
        return f"PROXY TCP4 {FORGED} 127.0.0.1 {src_port} {dst_port}\r\n".encode()
    addresses = socket.inet_aton(FORGED) + socket.inet_aton("127.0.0.1")
    payload = addresses + src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big")
    return b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + len(payload).to_bytes(2, "big") + payload


# -- PROXY v2 towards Dovecot ----------------------------------------------------------


def test_proxy_v2_to_dovecot_carries_the_client_address(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    """forward_client_ip = "proxy-v2": the gateway opens each upstream connection
    with a PROXY v2 header, to Dovecot's `haproxy = yes` listener; Dovecot logs the
    client behind HAProxy as rip (and no ID was sent: the session is Dovecot's own)."""
    with site(tmp_path, dovecot, proxy_v2=True) as s:
        for n, route in ((50, "v2-implicit"), (51, "v1-starttls")):
            src = f"127.0.215.{n}"
            user = new_user(dovecot, "pv")
            password = s.gw.create_app_password(user, "phone")
            assert login(s, route, src, user, password).startswith(b"a OK")
            needle = f"user=<{user}>"
            wait_for(lambda: dovecot_lines(dovecot, needle), 5, "the login line")  # noqa: B023
            (line,) = dovecot_lines(dovecot, needle)
            assert f"rip={src}," in line
            (connect,) = events(s.gw, "connect", src=src)
            assert connect["session"] not in line


def test_local_header_of_a_health_check_is_the_proxys_own_connection(lb: Site) -> None:
    """A v2 LOCAL header (the balancer's own health check) names no client: the
    connection is served as the proxy's, from its address."""
    with RawClient(lb.proxied_starttls, HAPROXY_SOURCE) as c:
        c.send(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")
        assert c.line().startswith(b"* OK")
        assert c.command(b"n", b"NOOP")[-1].startswith(b"n OK")
        port = c.local_port
    (connect,) = events(lb.gw, "connect", src=HAPROXY_SOURCE, src_port=port)
    assert connect["proxy"] == HAPROXY_SOURCE


def mapped_login(s: Site, n: int, dovecot: DovecotServer) -> tuple[str, str]:
    """A login through the trusted proxy whose v2 header names the client as
    IPv4-mapped IPv6 (::ffff:127.0.215.N); the user and the plain IPv4 text."""
    src = f"127.0.215.{n}"
    user = new_user(dovecot, "pm")
    password = s.gw.create_app_password(user, "phone")
    header = v2_header((f"::ffff:{src}", 40000 + n), ("::ffff:127.0.0.1", s.proxied_starttls))
    with RawClient(s.proxied_starttls, HAPROXY_SOURCE) as c:
        c.send(header)
        assert c.line().startswith(b"* OK")
        assert c.command(b"s", b"STARTTLS")[-1].startswith(b"s OK")
        c.starttls(s.gw.client_ssl())
        assert c.command(b"a", f'LOGIN "{user}" "{password}"'.encode())[-1].startswith(b"a OK")
    return user, src


@pytest.mark.parametrize("forward", ["id", "proxy-v2"])
def test_proxy_v2_mapped_ipv4_client_is_audited_and_sent_upstream_as_ipv4(
    lb: Site, tmp_path: Path, dovecot: DovecotServer, forward: str
) -> None:
    """A balancer on a dual-stack socket names an IPv4 client as ::ffff:a.b.c.d:
    the audit log, `ID x-originating-ip` and the gateway's own PROXY v2 header to
    Dovecot all say a.b.c.d, or Dovecot's per-IP penalty and every log line
    would see one client as two."""
    with contextlib.ExitStack() as stack:
        s = lb if forward == "id" else stack.enter_context(site(tmp_path, dovecot, proxy_v2=True))
        user, src = mapped_login(s, 60 if forward == "id" else 61, dovecot)
        (auth,) = events(s.gw, "auth", user=user)
        assert (auth["src"], auth["result"]) == (src, "ok")
        (connect,) = events(s.gw, "connect", session=auth["session"])
        assert (connect["src"], connect["proxy"]) == (src, HAPROXY_SOURCE)
        needle = f"user=<{user}>"
        wait_for(lambda: dovecot_lines(dovecot, needle), 5, "Dovecot's login line")
        (line,) = dovecot_lines(dovecot, needle)
        assert f"rip={src}," in line
        assert "::ffff:" not in line


def test_proxy_v2_header_goes_before_implicit_tls_to_dovecot(tmp_path: Path) -> None:
    """With implicit TLS upstream the PROXY v2 header is the first bytes, in clear,
    then the handshake (a Dovecot listener with both `ssl` and `haproxy`)."""
    server = DovecotServer.create(tmp_path / "dovecot", haproxy_tls=True)
    assert server.haproxy_tls_port is not None
    server.start()
    try:
        implicit = f'address = "127.0.0.1:{server.imaps_port}"\n'
        behind = (
            f'address = "127.0.0.1:{server.haproxy_tls_port}"\nforward_client_ip = "proxy-v2"\n'
        )

        def edit(text: str) -> str:
            assert implicit in text
            return text.replace(implicit, behind)

        with running_gateway(tmp_path / "gw", server, upstream_tls="implicit", edit=edit) as gw:
            src = "127.0.215.60"
            password = gw.create_app_password("alice", "phone")
            with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
                assert c.line().startswith(b"* OK")
                answer = c.command(b"a", f'LOGIN "alice" "{password}"'.encode())[-1]
                assert answer.startswith(b"a OK"), answer
                assert c.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
            wait_for(lambda: dovecot_lines(server, "user=<alice>"), 5, "the login line")
            (line,) = dovecot_lines(server, "user=<alice>")
            assert f"rip={src}," in line
            assert "TLS" in line
    finally:
        server.stop()


def test_two_nodes_behind_one_haproxy_both_see_the_client(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    """HAProxy balancing over two gateways: each node's audit log has the client."""
    src = "127.0.215.70"
    with contextlib.ExitStack() as stack:
        nodes: list[tuple[GatewayProcess, int]] = []
        for name in ("a", "b"):
            implicit, starttls = free_port(), free_port()
            gw = stack.enter_context(
                running_gateway(tmp_path / name, dovecot, edit=with_listeners(implicit, starttls))
            )
            wait_for(listening(gw, implicit), 10, "the proxied listener")
            nodes.append((gw, implicit))
        route = Route("both", tuple(port for _, port in nodes), "send-proxy-v2")
        proxy = stack.enter_context(
            running_haproxy(tmp_path / "haproxy", [route], source=HAPROXY_SOURCE)
        )
        tls = nodes[0][0].client_ssl()
        tls.load_verify_locations(cafile=str(nodes[1][0].ca_cert))  # each has its own CA
        for _ in range(4):  # round-robin: each node gets some
            with RawClient(proxy.port("both"), src) as c:
                c.sock = tls.wrap_socket(c.sock, server_hostname="localhost")
                assert c.line().startswith(b"* OK")
                assert c.command(b"n", b"NOOP")[-1].startswith(b"n OK")
        seen = [len(events(gw, "connect", src=src, proxy=HAPROXY_SOURCE)) for gw, _ in nodes]
        assert sum(seen) == 4, [gw.events("connect") for gw, _ in nodes]
        assert all(seen), seen


def with_listeners(implicit: int, starttls: int) -> Callable[[str], str]:
    return lambda text: text + proxied_listeners(implicit, starttls)


def listening(gw: GatewayProcess, port: int) -> Callable[[], bool]:
    return lambda: gw.accepts(port)
