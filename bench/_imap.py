"""A minimal asyncio IMAP client for benchmarks: the same code talks to every target.

One `ImapConn` is a `BufferedProtocol` reading into a fixed buffer (256 KiB; less
for the thousands of idle sessions of a memory benchmark, `recv_size`). It
understands just enough IMAP framing to be correct for any response: lines end
at LF, a line ending in ``{N}`` is followed by N literal bytes, which are
counted (`literal_bytes`) and skipped without copying, and only the *first*
line of a response is matched against what the caller waits for (a tag, ``+``
for a continuation, ``*`` for the greeting). Nothing is parsed beyond that.

Every wait is bounded by a timeout; a lost connection fails the pending wait.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

__all__ = ["IdleSessions", "ImapConn", "ImapError", "client_ssl_context", "connect", "open_idle"]

_RECV_SIZE = 256 * 1024
_MAX_LINE = 1 << 20
_LITERAL_END = re.compile(rb"\{([0-9]{1,12})\+?\}\r?\n\Z")


class ImapError(Exception):
    """An unexpected response, a lost connection or a line past the limit."""


def client_ssl_context() -> ssl.SSLContext:
    """No verification (the benchmark is about cost, and every target gets the same)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ImapConn(asyncio.BufferedProtocol):
    def __init__(self, recv_size: int = _RECV_SIZE) -> None:
        self.transport: asyncio.Transport | None = None
        self.literal_bytes = 0
        self.bytes_received = 0
        self._recv = bytearray(recv_size)
        self._view = memoryview(self._recv)
        self._line = bytearray()
        self._literal = 0
        self._after_literal = False
        loop = asyncio.get_running_loop()
        self._lost: asyncio.Future[None] = loop.create_future()
        # Set before the connection exists so that the greeting cannot be missed.
        self._greeting: asyncio.Future[bytes] = loop.create_future()
        self._prefix: bytes | None = b"*"
        self._waiter: asyncio.Future[bytes] | None = self._greeting

    # -- asyncio.BufferedProtocol --------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        recv = self._recv
        i = 0
        while i < nbytes:
            if self._literal:
                k = min(self._literal, nbytes - i)
                self._literal -= k
                self.literal_bytes += k
                i += k
                continue
            j = recv.find(b"\n", i, nbytes)
            if j < 0:
                self._line += self._view[i:nbytes]
                if len(self._line) > _MAX_LINE:
                    self._fail(ImapError("response line too long"))
                    if self.transport is not None:
                        self.transport.abort()
                return
            self._line += self._view[i : j + 1]
            i = j + 1
            self._on_line(bytes(self._line))
            self._line.clear()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ImapError(f"connection lost: {exc!r}" if exc else "connection closed"))
        if not self._lost.done():
            self._lost.set_result(None)

    # -- parsing ---------------------------------------------------------------

    def _on_line(self, line: bytes) -> None:
        starts_response = not self._after_literal
        literal = _LITERAL_END.search(line)
        if literal is not None:
            self._literal = int(literal.group(1))
            self._after_literal = True
        else:
            self._after_literal = False
        if not starts_response or self._prefix is None:
            return
        if line.startswith(self._prefix):
            waiter, self._waiter, self._prefix = self._waiter, None, None
            if waiter is not None and not waiter.done():
                waiter.set_result(line)

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter, self._prefix = self._waiter, None, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    # -- API -------------------------------------------------------------------

    def expect(self, prefix: bytes) -> asyncio.Future[bytes]:
        """Future for the next response whose first line starts with `prefix`."""
        if self._lost.done():
            raise ImapError("connection closed")
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiter, self._prefix = fut, prefix
        return fut

    async def greeting(self, secs: float) -> bytes:
        async with asyncio.timeout(secs):
            line = await self._greeting
        if not line.startswith(b"* OK"):
            raise ImapError(f"greeting: {line[:200]!r}")
        return line

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ImapError("connection closed")
        self.transport.write(data)

    async def command(self, tag: bytes, text: bytes, secs: float, ok: bool = True) -> bytes:
        """Send `tag text`, wait for the tagged response; with `ok` require OK."""
        fut = self.expect(tag + b" ")
        self.send(tag + b" " + text + b"\r\n")
        async with asyncio.timeout(secs):
            line = await fut
        if ok and not line.startswith(tag + b" OK"):
            raise ImapError(f"{text.split(b' ', 1)[0].decode()}: {line[:200]!r}")
        return line

    async def idle(self, secs: float) -> None:
        fut = self.expect(b"+")
        self.send(b"i IDLE\r\n")
        async with asyncio.timeout(secs):
            await fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def closed(self, secs: float) -> None:
        try:
            async with asyncio.timeout(secs):
                await asyncio.shield(self._lost)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()


async def connect(
    port: int,
    tls: ssl.SSLContext | None,
    secs: float,
    host: str = "127.0.0.1",
    recv_size: int = _RECV_SIZE,
) -> ImapConn:
    """TCP connect (+ TLS handshake) and read the greeting."""
    loop = asyncio.get_running_loop()
    conn = ImapConn(recv_size)
    async with asyncio.timeout(secs):
        await loop.create_connection(
            lambda: conn, host, port, ssl=tls, server_hostname="localhost" if tls else None
        )
    try:
        await conn.greeting(secs)
    except BaseException:
        if conn.transport is not None:
            conn.transport.abort()
        raise
    return conn


@dataclass
class IdleSessions:
    """Sessions opened by `open_idle`: those alive, the errors, the time it took."""

    conns: list[ImapConn]
    errors: list[str]
    setup_s: float

    def alive(self) -> int:
        return sum(
            1 for c in self.conns if c.transport is not None and not c.transport.is_closing()
        )

    async def close(self) -> None:
        for c in self.conns:
            c.close()
        await asyncio.gather(*(c.closed(10.0) for c in self.conns))


async def open_idle(
    port: int,
    tls: ssl.SSLContext | None,
    login: Callable[[str], bytes],
    users: list[str],
    n: int,
    concurrency: int,
    budget: float,
    secs: float = 15.0,
    max_errors: int = 50,
) -> IdleSessions:
    """Open `n` idle authenticated sessions (`login(user)` is the LOGIN command's
    arguments, then SELECT INBOX, IDLE), users taken in turn, `concurrency` at a
    time, for at most `budget` seconds or until `max_errors` errors. The caller closes
    them (`IdleSessions.close`), also when it fails after this returned."""
    out = IdleSessions([], [], 0.0)
    next_index = 0

    async def one(user: str) -> None:
        # 16 KiB is plenty for an idle session's responses and keeps this client's
        # own memory small with 10,000 of them.
        conn = await connect(port, tls, secs, recv_size=16 * 1024)
        try:
            await conn.command(b"a", b"LOGIN " + login(user), secs)
            await conn.command(b"s", b"SELECT INBOX", secs)
            await conn.idle(secs)
        except BaseException:
            conn.close()
            raise
        out.conns.append(conn)

    async def worker(end: float) -> None:
        nonlocal next_index
        while next_index < n and time.perf_counter() < end and len(out.errors) < max_errors:
            user = users[next_index % len(users)]
            next_index += 1
            try:
                await one(user)
            except (ImapError, OSError, TimeoutError, ssl.SSLError, EOFError) as exc:
                out.errors.append(f"{type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker(t0 + budget) for _ in range(concurrency)))
    except BaseException:
        for c in out.conns:  # the caller never gets them: close them here
            c.close()
        raise
    out.setup_s = time.perf_counter() - t0
    return out
