"""Memory of idle relayed sessions, and the relay's correctness once the pages of
the TLS read buffers are given back at the join (imapguard.gateway.memory).

An idle logged-in IDLE session must cost the gateway at most 40 KiB of RSS (it
cost 48-52 KiB while the pages its TLS read buffer had touched stayed resident,
about 31 KiB without them: docs/benchmarks.md, bench/scale.py). Releasing those
pages must not change a byte of what is relayed: a 2 MiB message goes up (APPEND,
through the client's TLS read buffer) and comes back down (FETCH) intact, on the
implicit-TLS and the STARTTLS listener, with the upstream on STARTTLS (whose
read buffer is released too)."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import ssl
from pathlib import Path

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import RawClient, message, running_gateway

pytestmark = pytest.mark.dovecot

BIG = 2 * 1024 * 1024
WARM = 100
SESSIONS = 250
GOAL_KIB = 40.0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            return int(line.split()[1])
    raise AssertionError("no Rss in smaps_rollup")


def _read_exact(client: RawClient, n: int) -> bytes:
    while len(client.buf) < n:
        if not client._fill():
            raise EOFError(f"closed after {len(client.buf)} of {n} literal bytes")
    data, client.buf = client.buf[:n], client.buf[n:]
    return data


def _login(client: RawClient, password: str) -> None:
    assert client.command(b"a", f'LOGIN alice "{password}"'.encode())[-1].startswith(b"a OK")


@pytest.mark.parametrize("listener", ["implicit", "starttls"])
def test_big_literals_relay_intact_after_the_tls_read_buffers_are_released(
    gw: GatewayProcess, alice_password: str, listener: str
) -> None:
    ctx = gw.client_ssl()
    subject = f"big-{listener}-{secrets.token_hex(4)}"
    body = os.urandom(BIG // 2).hex().encode()
    body = b"\r\n".join(body[i : i + 76] for i in range(0, len(body), 76)) + b"\r\n"
    big = message(subject, body=body)
    if listener == "implicit":
        client = RawClient(gw.implicit_port, source_address(140), tls=ctx, timeout=30)
        assert client.line().startswith(b"* OK")
    else:
        client = RawClient(gw.starttls_port, source_address(141), timeout=30)
        assert client.line().startswith(b"* OK")
        assert client.command(b"t", b"STARTTLS")[-1].startswith(b"t OK")
        client.starttls(ctx)
    with client:
        _login(client, alice_password)
        # Up: a synchronizing literal, read by the gateway through the client's TLS
        # read buffer whose pages were released at the join.
        client.send(f"u APPEND INBOX {{{len(big)}}}\r\n".encode())
        assert client.line().startswith(b"+")
        client.send(big + b"\r\n")
        assert client.until_tagged(b"u")[-1].startswith(b"u OK"), "APPEND failed"
        assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        found = client.command(b"q", f'SEARCH SUBJECT "{subject}"'.encode())
        seq = found[0].split()[2].decode()
        # Down: twice, so the second one reads into buffers the first one touched.
        for tag in (b"f1", b"f2"):
            client.send(tag + f" FETCH {seq} BODY.PEEK[]\r\n".encode())
            head = client.line()
            size = re.search(rb"\{(\d+)\}\Z", head)
            assert size is not None, head
            data = _read_exact(client, int(size.group(1)))
            assert hashlib.sha256(data).digest() == hashlib.sha256(big).digest()
            assert client.until_tagged(tag)[-1].startswith(tag + b" OK")
        client.command(b"z", b"LOGOUT")


def _idle_session(port: int, ctx: ssl.SSLContext, password: str, n: int) -> RawClient:
    client = RawClient(port, source_address(150 + n % 50), tls=ctx, timeout=30)
    assert client.line().startswith(b"* OK")
    _login(client, password)
    assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    client.send(b"i IDLE\r\n")
    assert client.line().startswith(b"+")
    return client


def test_an_idle_session_costs_the_gateway_at_most_40_kib(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    # Upstream in clear, as on loopback to a local Dovecot (bench/scale.py): a TLS
    # upstream adds a second TLS connection per session (docs/benchmarks.md).
    with running_gateway(tmp_path / "gw", dovecot, login="master", upstream_tls="none") as gw:
        password = gw.create_app_password("alice", "idle")
        assert gw.proc is not None
        pid, ctx = gw.proc.pid, gw.client_ssl()
        clients: list[RawClient] = []
        try:
            # Warm-up: the first logins import and cache what every later one uses.
            for n in range(WARM):
                clients.append(_idle_session(gw.implicit_port, ctx, password, n))
            before = _rss_kib(pid)
            for n in range(SESSIONS):
                clients.append(_idle_session(gw.implicit_port, ctx, password, n))
            per_session = (_rss_kib(pid) - before) / SESSIONS
            # Every session is still relaying: DONE ends its IDLE through the gateway.
            probe = clients[-1]
            probe.send(b"DONE\r\n")
            assert probe.until_tagged(b"i")[-1].startswith(b"i OK")
        finally:
            for c in clients:
                c.close()
    assert per_session <= GOAL_KIB, f"{per_session:.1f} KiB per idle session"
