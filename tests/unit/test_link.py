"""`gateway.link.Link` over real loopback sockets, on asyncio's loop and on
uvloop (the gateway's): what it reads and writes and counts, its read limit
(a flooding client stops being read, and is read again once the gateway takes
the buffer), the end of a connection, and two links joined into a relay
(pending bytes first, back-pressure, the end of one side ending the other,
the BYE a client is owed when the server vanishes). The STARTTLS discard is in
test_link_starttls_switch.py."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from imapguard.gateway.link import RELAY_BUFFER, Link

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
BYE = b"* BYE [UNAVAILABLE] Connection to the mail server lost.\r\n"
# The most one read from the socket adds past the limit before reading pauses
# (asyncio's and uvloop's stream transports read at most 256 KiB at a time).
READ_CHUNK = 256 * 1024


def run(loop: str, main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), 60)

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(bounded())


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (the caller's test bounds the wait)."""
    for _ in range(60_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    pytest.fail("condition never became true")


async def link_on(sock: socket.socket, max_buffer: int = 64 * 1024) -> Link:
    link = Link(max_buffer=max_buffer)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: link, sock)
    assert link.transport is not None
    return link


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(10)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the other end closes."""
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("loop", LOOPS)
def test_reads_what_arrived_and_counts_both_ways(loop: str) -> None:
    async def main() -> None:
        client, server = socket.socketpair()
        with client:
            link = await link_on(server)
            client.sendall(b"a CAPABILITY\r\n")
            assert await link.read() == b"a CAPABILITY\r\n"
            link.write(b"* CAPABILITY IMAP4rev1\r\n")
            assert await asyncio.to_thread(recv_exactly, client, 24) == (
                b"* CAPABILITY IMAP4rev1\r\n"
            )
            assert (link.bytes_in, link.bytes_out) == (14, 24)
            # Two sends before one read come back together, once.
            client.sendall(b"b NOOP\r\n")
            client.sendall(b"c NOOP\r\n")
            await until(lambda: link.bytes_in == 30)
            assert await link.read() == b"b NOOP\r\nc NOOP\r\n"
            assert link.take_buffer() == b""
            link.close()

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_read_returns_empty_once_the_client_is_gone(loop: str) -> None:
    async def main() -> None:
        client, server = socket.socketpair()
        link = await link_on(server)
        client.sendall(b"a LOGOUT\r\n")
        client.close()
        assert await link.read() == b"a LOGOUT\r\n"
        assert await link.read() == b""
        await link.wait_closed()
        assert link.closed
        assert link.error is None
        # Writing to a closed link is a no-op, not an error, and is not counted.
        link.write(b"* BYE\r\n")
        assert link.bytes_out == 0

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_close_ends_the_connection_for_the_client(loop: str) -> None:
    async def main() -> None:
        client, server = socket.socketpair()
        with client:
            link = await link_on(server)
            link.write(b"* BYE bye\r\n")
            link.close()
            await link.wait_closed()
            assert await asyncio.to_thread(recv_all, client) == b"* BYE bye\r\n"

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_flooding_client_is_not_read_past_the_limit_until_the_buffer_is_taken(
    loop: str,
) -> None:
    limit = 16 * 1024
    total = 4 * 1024 * 1024

    async def main() -> None:
        client, server = socket.socketpair()
        with client:
            link = await link_on(server, max_buffer=limit)
            assert link.transport is not None
            sender = threading.Thread(target=client.sendall, args=(b"x" * total,))
            sender.start()
            await until(lambda: not link.transport.is_reading())  # type: ignore[union-attr]
            # Paused: what the link holds is the limit plus at most one read.
            assert limit < link.bytes_in <= limit + READ_CHUNK
            assert sender.is_alive()  # the rest waits in the kernel, not in the gateway
            received = 0
            while received < total:
                received += len(await link.read())  # each read resumes reading
            await asyncio.to_thread(sender.join)
            assert received == link.bytes_in == total
            assert link.transport.is_reading()
            link.close()

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_discarding_a_full_buffer_reads_again(loop: str) -> None:
    """A client that filled the buffer, then STARTTLS: the discard empties it,
    and reading resumes (else the link would stall with nothing buffered)."""

    async def main() -> None:
        client, server = socket.socketpair()
        with client:
            link = await link_on(server, max_buffer=1024)
            assert link.transport is not None
            client.sendall(b"y" * 4096)
            await until(lambda: not link.transport.is_reading())  # type: ignore[union-attr]
            link.discard_input()
            assert link.transport.is_reading()
            assert link.keep_input() == link.bytes_in
            client.sendall(b"a NOOP\r\n")
            assert await link.read() == b"a NOOP\r\n"
            link.close()

    run(loop, main)


async def joined_pair(client: socket.socket, upstream: socket.socket) -> tuple[Link, Link]:
    """The gateway's two links on the far ends of two socket pairs, joined."""
    down = await link_on(client)
    up = await link_on(upstream)
    up.bye_on_loss = BYE
    return down, up


@pytest.mark.parametrize("loop", LOOPS)
def test_joined_links_relay_both_ways_pending_bytes_first(loop: str) -> None:
    async def main() -> None:
        user, client_end = socket.socketpair()
        server, upstream_end = socket.socketpair()
        with user, server:
            down, up = await joined_pair(client_end, upstream_end)
            # The server speaks between its login OK and the join.
            server.sendall(b"* 3 EXISTS\r\n")
            await until(lambda: up.bytes_in == 12)
            down.join(up)
            up.join(down)
            assert down.transport is not None
            assert down.transport.get_write_buffer_limits()[1] == RELAY_BUFFER
            assert await asyncio.to_thread(recv_exactly, user, 12) == b"* 3 EXISTS\r\n"
            user.sendall(b"a SELECT INBOX\r\n")
            assert await asyncio.to_thread(recv_exactly, server, 16) == b"a SELECT INBOX\r\n"
            server.sendall(b"a OK done\r\n")
            assert await asyncio.to_thread(recv_exactly, user, 11) == b"a OK done\r\n"
            # Relayed bytes are counted, and never buffered for the gateway.
            assert (down.bytes_in, up.bytes_out) == (16, 16)
            assert (up.bytes_in, down.bytes_out) == (23, 23)
            assert down.take_buffer() == up.take_buffer() == b""
            down.close()
            up.close()

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_vanished_server_ends_the_client_with_a_bye(loop: str) -> None:
    async def main() -> None:
        user, client_end = socket.socketpair()
        server, upstream_end = socket.socketpair()
        with user:
            down, up = await joined_pair(client_end, upstream_end)
            down.join(up)
            up.join(down)
            server.sendall(b"* OK still here\r\n")
            server.close()
            assert await asyncio.to_thread(recv_all, user) == b"* OK still here\r\n" + BYE
            await down.wait_closed()

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_server_that_said_bye_itself_gets_no_second_one(loop: str) -> None:
    async def main() -> None:
        user, client_end = socket.socketpair()
        server, upstream_end = socket.socketpair()
        with user:
            down, up = await joined_pair(client_end, upstream_end)
            down.join(up)
            up.join(down)
            server.sendall(b"* bye Logging out\r\na OK LOGOUT completed\r\n")
            server.close()
            assert await asyncio.to_thread(recv_all, user) == (
                b"* bye Logging out\r\na OK LOGOUT completed\r\n"
            )

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_departed_client_ends_the_upstream_without_a_bye(loop: str) -> None:
    async def main() -> None:
        user, client_end = socket.socketpair()
        server, upstream_end = socket.socketpair()
        with server:
            down, up = await joined_pair(client_end, upstream_end)
            down.join(up)
            up.join(down)
            user.sendall(b"a LOGOUT\r\n")
            user.close()
            assert await asyncio.to_thread(recv_all, server) == b"a LOGOUT\r\n"
            await up.wait_closed()

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_side_that_ended_before_the_join_ends_the_other_at_the_join(loop: str) -> None:
    async def main() -> None:
        user, client_end = socket.socketpair()
        server, upstream_end = socket.socketpair()
        with user:
            down, up = await joined_pair(client_end, upstream_end)
            server.sendall(b"* OK welcome\r\n")
            server.close()
            await up.wait_closed()
            down.join(up)
            up.join(down)
            assert await asyncio.to_thread(recv_all, user) == b"* OK welcome\r\n" + BYE

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_full_write_buffer_pauses_reading_from_the_other_side(loop: str) -> None:
    """Flow control: while the client's side cannot take more, the upstream
    is not read (its bytes stay in the kernel, not in the gateway)."""

    async def main() -> None:
        user, client_end = socket.socketpair()
        server, upstream_end = socket.socketpair()
        with user, server:
            down, up = await joined_pair(client_end, upstream_end)
            down.join(up)
            up.join(down)
            assert up.transport is not None
            down.pause_writing()  # what the loop calls past the high-water mark
            assert not up.transport.is_reading()
            down.resume_writing()
            assert up.transport.is_reading()
            down.close()
            up.close()

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_abort_drops_what_is_unsent(loop: str) -> None:
    async def main() -> None:
        client, server = socket.socketpair()
        with client:
            link = await link_on(server)
            link.abort()
            await link.wait_closed()
            assert link.closed
            assert await asyncio.to_thread(recv_all, client) == b""

    run(loop, main)
