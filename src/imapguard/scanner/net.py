"""The scanner's only way onto the network: bounded, paced, and polite.

Every TCP connection any check opens goes through one `Network`:
- at most `concurrency` connections in flight overall and `per_host` per address
  (a mail server counts connections per client and starts refusing, e.g.
  Dovecot's mail_max_userip_connections, Postfix's smtpd_client_connection_count_limit);
- at most `rate` new connections per second overall (a token bucket);
- every connect and read bounded by `timeout`;
- throttling seen on an address (refused connections after it answered, an SMTP
  421) is recorded, the address backs off (its per-host limit drops to one and
  new connections wait `backoff` seconds), and the checks affected report
  ``not_tested`` (ST-11), never a pass or a fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator

__all__ = ["Network", "NetworkSettings", "Throttled"]


class Throttled(Exception):
    """The server refused or deferred us (421, refused after answering)."""

    def __init__(self, address: str, port: int, reason: str) -> None:
        self.address = address
        self.port = port
        self.reason = reason
        super().__init__(f"{address}:{port} throttled the scan: {reason}")


@dataclasses.dataclass(frozen=True, slots=True)
class NetworkSettings:
    concurrency: int = 32
    per_host: int = 4
    rate: float = 100.0  # new connections per second, overall
    timeout: float = 5.0  # seconds for each connect and each read
    backoff: float = 2.0  # seconds an address rests after throttling us


class Network:
    def __init__(self, settings: NetworkSettings) -> None:
        self.settings = settings
        self._all = asyncio.Semaphore(settings.concurrency)
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._throttled: dict[str, str] = {}  # address -> first reason seen
        self._answered: set[tuple[str, int]] = set()
        self._tokens = float(settings.concurrency)
        self._last = time.monotonic()
        self._pace = asyncio.Lock()
        self.connections = 0  # opened, for the report and the tests

    # -- throttling ------------------------------------------------------------

    def throttled(self, address: str) -> str | None:
        """Why `address` throttled us, or None."""
        return self._throttled.get(address)

    def mark_throttled(self, address: str, reason: str) -> None:
        if address not in self._throttled:
            self._throttled[address] = reason
            # From now on one connection at a time to this address.
            self._hosts[address] = asyncio.Semaphore(1)

    # -- pacing ----------------------------------------------------------------

    async def _take_token(self) -> None:
        rate = self.settings.rate
        if rate <= 0:
            return
        async with self._pace:
            while True:
                now = time.monotonic()
                self._tokens = min(
                    float(self.settings.concurrency), self._tokens + (now - self._last) * rate
                )
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / rate)

    def _host(self, address: str) -> asyncio.Semaphore:
        sem = self._hosts.get(address)
        if sem is None:
            sem = self._hosts[address] = asyncio.Semaphore(self.settings.per_host)
        return sem

    @contextlib.asynccontextmanager
    async def slot(self, address: str) -> AsyncIterator[None]:
        """Hold one connection slot for `address` (overall and per host)."""
        async with self._all, self._host(address):
            if address in self._throttled:
                await asyncio.sleep(self.settings.backoff)
            yield

    async def connect(
        self, address: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection, paced. Call inside `slot(address)`. Raises OSError
        or TimeoutError; a refusal from a port that answered before marks the
        address throttled and raises `Throttled`."""
        await self._take_token()
        self.connections += 1
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address, port, limit=1 << 16),
                self.settings.timeout,
            )
        except ConnectionRefusedError as exc:
            if (address, port) in self._answered:
                self.mark_throttled(address, "connection refused after the port had answered")
                raise Throttled(address, port, "connection refused") from exc
            raise
        self._answered.add((address, port))
        with contextlib.suppress(OSError):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    @property
    def throttled_addresses(self) -> dict[str, str]:
        return dict(self._throttled)


def by_address(items: list[tuple[str, int]]) -> dict[str, list[int]]:
    """Group (address, port) pairs by address, ports in order."""
    out: dict[str, list[int]] = defaultdict(list)
    for address, port in items:
        out[address].append(port)
    return {a: sorted(p) for a, p in out.items()}
