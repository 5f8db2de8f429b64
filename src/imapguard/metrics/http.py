"""GET /metrics and GET /health over plain HTTP, at `[metrics] address`.

Deliberately small: one request per connection (HTTP/1.0 style, the answer
closes it), the request line and headers bounded (MAX_REQUEST bytes, READ_TIMEOUT
seconds), at most MAX_CLIENTS at once, and only `allowed_sources` served
(anyone else gets 403). Prometheus and a load balancer's health check need
nothing more, and nothing here parses a body.

/health answers 200 "ok" while the node takes connections, and 503 with the
reason once it does not (draining after SIGTERM), so the load balancer sends new
clients elsewhere. A state store or an upstream that cannot be reached does not
turn it 503: the nodes usually share them, so every node would leave the pool at
once and clients would meet refused connections instead of `NO [UNAVAILABLE]`;
`imapguard_upstream_up` and `imapguard_store_errors_total` are what to alert on."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["MAX_CLIENTS", "MAX_REFUSED", "MAX_REQUEST", "READ_TIMEOUT", "MetricsServer"]

log = logging.getLogger("imapguard.metrics")

MAX_REQUEST = 8192  # request line and headers; a scraper sends a few hundred bytes
READ_TIMEOUT = 5.0  # seconds for the whole request
MAX_CLIENTS = 16  # a scraper or two and the load balancers' checks
# Refused sources answered 403 at once (each lingers up to a second so the answer
# is read); beyond these, a refused connection is closed without an answer, so
# a flood from a refused source holds a bounded number of sockets.
MAX_REFUSED = 64

#: () -> None when healthy, else the reason (one line) the node takes no logins.
Health = Callable[[], str | None]


class MetricsServer:
    def __init__(
        self,
        host: str,
        port: int,
        allowed: Iterable[str],
        collect: Callable[[], CollectorRegistry],
        health: Health,
    ) -> None:
        self.host = host
        self.port = port
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in allowed]
        self._collect = collect
        self._health = health
        self._clients = 0
        self._refused = 0  # refused connections being answered now
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind and serve; OSError (a port in use) is the caller's to report."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_REQUEST
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _permitted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._allowed)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            # Decided before a byte is read or a slot is taken: a source that may not
            # scrape cannot hold the slots the load balancer's health check needs.
            if not self._permitted(str(peer[0]) if peer else ""):
                if self._refused >= MAX_REFUSED:
                    return
                self._refused += 1
                try:
                    await _answer(writer, 403, "forbidden\n")
                    await _linger(reader, writer)
                finally:
                    self._refused -= 1
                return
            if self._clients >= MAX_CLIENTS:
                return
            self._clients += 1
            try:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
                except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
                    await _answer(writer, 400, "bad request\n")
                    await _linger(reader, writer)
                    return
                await self._route(head, writer)
            finally:
                self._clients -= 1
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _route(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        if method not in (b"GET", b"HEAD"):
            await _answer(writer, 405, "method not allowed\n", head_only=False)
            return
        head_only = method == b"HEAD"
        if target == b"/metrics":
            registry = self._collect()
            body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
            await _answer(writer, 200, body, CONTENT_TYPE_LATEST, head_only=head_only)
        elif target == b"/health":
            problem = self._health()
            if problem is None:
                await _answer(writer, 200, "ok\n", head_only=head_only)
            else:
                await _answer(writer, 503, problem + "\n", head_only=head_only)
        else:
            await _answer(writer, 404, "not found\n", head_only=head_only)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close and read away a little of what the client still sends, so that
    closing with unread input (a TCP reset) does not destroy the answer before
    the client reads it; bounded in bytes and time."""
    with contextlib.suppress(OSError, TimeoutError, RuntimeError):
        writer.write_eof()
        await asyncio.wait_for(reader.read(MAX_REQUEST * 8), 1.0)


async def _answer(
    writer: asyncio.StreamWriter,
    status: int,
    body: str | bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head_only: bool = False,
) -> None:
    data = body.encode() if isinstance(body, str) else body
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    writer.write(head if head_only else head + data)
    await writer.drain()
