"""A listener behind a load balancer (`[[listen]] proxy_protocol = true`): who may
send a PROXY header, and reading it off the socket.

The rules (README, "Behind HAProxy"):

- Only a peer in the listener's `trusted_proxies` may send a header; any other peer
  is closed at accept, before a byte is read or written (`ProxyTrust`).
- A trusted peer's connection holds a pre-auth slot of the total only, under no
  source (`PreauthSlots.take_unnamed`), until its header is read: the per-source
  limits are the real client's, not the proxy's, or one attacker behind the proxy
  would exhaust the slots of everyone behind it. The header must arrive within
  `limits.handshake_timeout` (the proxy sends it at once, before the client's
  first byte; a connection that sends nothing is as cheap to drop as a stalled
  handshake). Then the slot is taken again under the header's source.
- The header is read exactly (imapguard.gateway.proxyproto: never a byte past it),
  so the client's TLS ClientHello or first IMAP command stays in the socket.
- A header that names no client (v2 LOCAL, the proxy's own health checks; v1
  UNKNOWN) leaves the connection as the proxy's own, with the proxy's address as
  its source (the spec's rule); such a connection gets the same dialogue, defense
  and policy as any other from that address.
- The header's addresses are taken in canonical text (`canonical`): IPv4-mapped
  IPv6 as the IPv4 address, as everywhere else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from imapguard.gateway.proxyproto import HeaderReader, InvalidHeader, NeedMore, ProxyHeader
from imapguard.net import normalize, parse

__all__ = ["UNTRUSTED_PROXY", "ProxyTrust", "canonical", "read_header"]

#: The `refused` reason of a peer that may not send a PROXY header.
UNTRUSTED_PROXY = "not a trusted proxy"


class ProxyTrust:
    """A listener's `trusted_proxies`."""

    def __init__(self, networks: Sequence[str]) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def trusts(self, ip: str) -> bool:
        address = parse(ip)  # IPv4-mapped IPv6 as IPv4
        return address is not None and any(address in net for net in self._networks)


async def read_header(sock: socket.socket, seconds: float) -> ProxyHeader | InvalidHeader:
    """The PROXY header at the start of `sock`, and not a byte more; an
    `InvalidHeader` when it is malformed, missing or not complete within `seconds`."""
    loop = asyncio.get_running_loop()
    reader = HeaderReader()
    try:
        async with asyncio.timeout(seconds):
            while isinstance(result := reader.result(), NeedMore):
                data = await loop.sock_recv(sock, result.at_most)
                if not data:
                    return InvalidHeader("closed before its PROXY header")
                reader.receive_data(data)
    except TimeoutError:
        return InvalidHeader(f"no PROXY header within {seconds:g} s")
    except OSError as exc:
        return InvalidHeader(f"closed before its PROXY header ({exc.strerror or exc})")
    return result


def canonical(address: tuple[str, int] | None) -> tuple[str, int] | None:
    """An address of the header in canonical text: a balancer on a dual-stack
    socket names an IPv4 client as IPv4-mapped IPv6 (`::ffff:192.0.2.7`), which
    the audit log, `ID x-originating-ip` and the PROXY header to the upstream
    must say as the IPv4 address (`imapguard.net`), or one client is two."""
    return None if address is None else (normalize(address[0]), address[1])
