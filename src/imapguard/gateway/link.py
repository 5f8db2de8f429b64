"""One side of a gateway connection (client or upstream) as an asyncio protocol.

While the gateway itself talks on a link (greeting, pre-auth commands, the
upstream login) received bytes are buffered, at most `max_buffer` of them:
past that the transport stops reading, so a client that floods while its login
is being checked costs no memory. Once both sides are authenticated the links
are joined (`join`): from then on bytes go straight from one transport to the
other, opaque, with flow control: when one side's write buffer passes the
high-water mark, reading from the other side pauses until it drains.

Between a STARTTLS command and the switch to TLS the link *discards* what it
receives (`discard_input` ... `keep_input`), counting the bytes instead of
buffering them: nothing sent in clear may be read as if it came inside TLS.
"""

from __future__ import annotations

import asyncio
from typing import cast

from imapguard.gateway.memory import release_read_buffer

__all__ = ["RELAY_BUFFER", "Link"]

# 256 KiB reads and write high-water marks: a Python TLS relay measured on
# loopback (512 MiB transfers) moved 60 % more downloaded and 150 % more
# uploaded bytes per second than with 64 KiB; event loop and API mattered less.
RELAY_BUFFER = 256 * 1024


class Link(asyncio.Protocol):
    def __init__(self, max_buffer: int = 64 * 1024) -> None:
        self.transport: asyncio.Transport | None = None
        self.max_buffer = max_buffer
        self.bytes_in = 0
        self.bytes_out = 0
        self.error: BaseException | None = None
        self._buf = bytearray()
        self._discarding = False
        self.discarded = 0
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._peer: Link | None = None
        self._reading_paused = False
        # Upstream side: when the server goes away without a BYE of its own,
        # the client is told so with this line (an untagged BYE [UNAVAILABLE]),
        # not left waiting on a silent connection.
        self.bye_on_loss: bytes | None = None
        self._tail = b""
        # The SSL protocol under this link's TLS transport, if any: at `join` the
        # pages of its read buffer are given back (imapguard.gateway.memory).
        self.tls_protocol: object | None = None

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        peer = self._peer
        if peer is not None:
            self._relay(peer, data)
            return
        if self._discarding:
            self.discarded += len(data)
            return
        self._buf += data
        if len(self._buf) > self.max_buffer and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        self._end_peer()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()
        if not self._closed.done():
            self._closed.set_result(None)
        self._end_peer()

    def _end_peer(self) -> None:
        # A TLS transport cannot half-close: end the other side once its
        # buffered bytes are out.
        peer = self._peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return
        if self.bye_on_loss is not None and b"* BYE " not in self._tail.upper():
            peer.write(self.bye_on_loss)
        peer.transport.close()

    def pause_writing(self) -> None:
        if self._peer is not None and self._peer.transport is not None:
            self._peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._peer is not None and self._peer.transport is not None:
            self._peer.transport.resume_reading()

    # -- the gateway's side ---------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.done()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.bytes_out += len(data)
            self.transport.write(data)

    async def read(self) -> bytes:
        """What arrived since the last read; b"" once the other end is gone."""
        while not self._buf and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.take_buffer()

    def take_buffer(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        if self._reading_paused and self.transport is not None and not self._eof:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def discard_input(self) -> None:
        """Drop what is buffered and every byte received from now on, counting
        them in `discarded`, until `keep_input()`."""
        self.discarded += len(self.take_buffer())
        self._discarding = True

    def keep_input(self) -> int:
        """Buffer received bytes again; how many were discarded since `discard_input`."""
        self._discarding = False
        count, self.discarded = self.discarded, 0
        return count

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def join(self, peer: Link) -> None:
        """Relay from here to `peer` from now on (call on both links).

        Bytes that arrived before (the upstream may speak between its login OK and
        the join) go first; if this side has already ended, the peer is ended as
        `_end_peer` does it, BYE included."""
        self._peer = peer
        # An idle relayed session should not keep the pages its TLS read buffer
        # touched during the handshake and login (~17 KiB per session measured).
        if self.tls_protocol is not None:
            release_read_buffer(self.tls_protocol)
            self.tls_protocol = None
        if self._buf:
            pending = bytes(self._buf)
            self._buf.clear()
            self._relay(peer, pending)
        # A transport that is already closed has nothing left to tune (uvloop
        # raises RuntimeError on it: a server that hung up right after its
        # login OK would otherwise crash the join instead of ending the client).
        if self.transport is not None and not self.transport.is_closing():
            self.transport.set_write_buffer_limits(high=RELAY_BUFFER)
            if self._reading_paused and not self._eof:
                self._reading_paused = False
                self.transport.resume_reading()
        if self._eof:
            self._end_peer()

    def _relay(self, peer: Link, data: bytes) -> None:
        peer.write(data)
        if self.bye_on_loss is not None:
            self._tail = (self._tail + data)[-128:] if len(data) < 128 else data[-128:]

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
