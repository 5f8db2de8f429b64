"""The link's side of STARTTLS (CVE-2011-0411 class), on asyncio's loop and on
uvloop (the gateway's): while the gateway waits to start TLS the link discards
and counts what arrives, and once the OK is written and `start_tls` called with
no await in between, no byte sent in clear reaches the link."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

import pytest
import trustme
import uvloop

from imapguard.gateway.link import Link

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def _server_ssl() -> ssl.SSLContext:
    ca = trustme.CA()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(ctx)
    return ctx


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.001)
    pytest.fail("condition never became true")


async def _plain_link(server: socket.socket) -> tuple[Link, asyncio.Transport]:
    link = Link()
    await asyncio.get_running_loop().connect_accepted_socket(lambda: link, server)
    assert link.transport is not None
    return link, link.transport


@pytest.mark.parametrize("loop", LOOPS)
def test_discarded_bytes_are_counted_never_buffered(loop: str) -> None:
    async def main() -> None:
        client, server = socket.socketpair()
        with client:
            link, _ = await _plain_link(server)
            client.sendall(b"a STARTTLS\r\nb LOG")
            await _until(lambda: link.bytes_in == 17)
            link.discard_input()  # what is buffered goes too
            client.sendall(b"IN bob secret\r\n")
            await _until(lambda: link.bytes_in == 32)
            assert link.keep_input() == 32
            client.sendall(b"c NOOP\r\n")
            assert await link.read() == b"c NOOP\r\n"
            assert link.keep_input() == 0
            link.close()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_bytes_sent_in_clear_at_the_switch_never_reach_the_link(loop: str) -> None:
    """Plaintext already in the kernel's buffer when the OK is written and
    start_tls called goes to the TLS layer (which fails on it), not to the link."""

    async def main() -> None:
        client, server = socket.socketpair()
        with client:
            link, plain = await _plain_link(server)
            link.discard_input()
            client.sendall(b"b LOGIN bob secret\r\n")
            await _until(lambda: link.bytes_in == 20)
            # Unread by the loop yet: no await between this send and start_tls.
            client.sendall(b"c LOGIN bob secret\r\n" * 20)
            assert link.keep_input() == 20
            link.write(b"a OK Begin TLS negotiation now.\r\n")
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                await asyncio.get_running_loop().start_tls(
                    plain, link, _server_ssl(), server_side=True, ssl_handshake_timeout=5
                )
            assert link.bytes_in == 20
            assert link.take_buffer() == b""
            client.settimeout(5)
            assert client.recv(100).startswith(b"a OK Begin TLS")

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())
