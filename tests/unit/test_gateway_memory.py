"""imapguard.gateway.memory: the pages of a TLS read buffer are given back, only
those wholly inside it, and nothing that is not such a buffer is touched."""

from __future__ import annotations

import asyncio
import mmap
import socket
import ssl
from pathlib import Path

import trustme

from imapguard.gateway.memory import release_read_buffer

PAGE = mmap.PAGESIZE


class FakeProtocol:
    """The part of an SSL protocol that release_read_buffer uses."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(b"x" * size)
        self.view = memoryview(self.buffer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        pass


def _rss_kib() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            return int(line.split()[1])
    raise AssertionError("no Rss")


def test_interior_pages_are_released_and_the_edges_kept() -> None:
    proto = FakeProtocol(256 * 1024)
    released = release_read_buffer(proto)
    assert 256 * 1024 - 2 * PAGE <= released <= 256 * 1024
    # Released pages read as zeros; bytes outside whole pages are untouched.
    assert proto.buffer.count(0) == released
    assert proto.buffer.count(b"x") == len(proto.buffer) - released
    assert released % PAGE == 0
    # The protocol's own view still works (it was not released).
    proto.view[0:4] = b"abcd"
    assert proto.buffer[:4] == b"abcd"


def test_released_pages_leave_the_resident_set() -> None:
    protos = [FakeProtocol(256 * 1024) for _ in range(64)]  # 16 MiB, all touched
    before = _rss_kib()
    for p in protos:
        release_read_buffer(p)
    assert before - _rss_kib() >= 64 * 200, "the pages stayed resident"


def test_anything_else_is_left_alone() -> None:
    assert release_read_buffer(None) == 0
    assert release_read_buffer(object()) == 0
    small = FakeProtocol(PAGE)  # no whole page inside
    assert release_read_buffer(small) == 0
    assert small.buffer == b"x" * PAGE

    class ReadOnly(FakeProtocol):
        def get_buffer(self, sizehint: int) -> memoryview:
            return memoryview(bytes(self.buffer))

    assert release_read_buffer(ReadOnly(256 * 1024)) == 0


def test_a_real_tls_connection_keeps_working_after_its_buffer_is_released() -> None:
    """uvloop's and asyncio's SSL protocol (found as the gateway finds it after
    STARTTLS): its buffer released between reads, then 3 MiB each way, byte for byte."""
    import uvloop

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    payload = bytes(range(256)) * 4096 * 3

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        got = bytearray()
        done = loop.create_future()

        class Sink(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.extend(data)
                if len(got) >= len(payload) and not done.done():
                    done.set_result(None)

        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        sink = Sink()
        async with asyncio.TaskGroup() as tg:
            opening = tg.create_task(
                asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
            )
            sock, _ = await loop.sock_accept(listener)
        listener.close()
        reader, writer = opening.result()
        plain, _ = await loop.connect_accepted_socket(lambda: sink, sock)
        async with asyncio.TaskGroup() as tg:
            server_tls = tg.create_task(loop.start_tls(plain, sink, server_ctx, server_side=True))
            await writer.start_tls(client_ctx, server_hostname="localhost")
        tls = server_tls.result()
        assert tls is not None
        released = release_read_buffer(plain.get_protocol())
        writer.write(payload)
        await writer.drain()
        await asyncio.wait_for(done, 30)
        tls.write(payload)
        back = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
        writer.close()
        tls.close()
        assert bytes(got) == payload
        assert back == payload
        return released

    for factory in (uvloop.new_event_loop, asyncio.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            assert runner.run(scenario()) >= 64 * 1024, factory
