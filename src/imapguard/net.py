"""Client addresses, the one way every layer reads them.

An IPv4 client reaching a dual-stack listener shows up as an IPv4-mapped IPv6
address (`::ffff:192.0.2.7`, RFC 4291 §2.5.5.2); it is the IPv4 address, and
every count, block, binding and log line must say so, or one client becomes
two. Networks are the client's /24 (IPv4) or /64 (IPv6): an IPv6 client
usually holds a whole /64 (RFC 7421), so counting its single addresses counts
nothing. Text that is no address (a test's label, a Unix socket) is kept as it
is and is its own network. A listening address that cannot be bound is a
ConfigError naming its key (`cannot_listen`), for every listener alike.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket

from imapguard.errors import ConfigError

__all__ = ["Address", "cannot_listen", "is_loopback", "masked", "network", "normalize", "parse"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4_NETWORK = 24
_V6_NETWORK = 64


@functools.lru_cache(maxsize=8192)
def parse(ip: str) -> Address | None:
    """The address `ip` names, IPv4-mapped IPv6 as IPv4; None if it is none."""
    try:
        address: Address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalize(ip: str) -> str:
    """The canonical text of an address; anything that is no address stays as it is."""
    address = parse(ip)
    return ip if address is None else str(address)


@functools.lru_cache(maxsize=8192)
def masked(ip: str, v4_bits: int = _V4_NETWORK, v6_bits: int = _V6_NETWORK) -> str:
    """The network of `ip` with these prefix lengths, as text: `192.0.2.0/24`,
    `2001:db8::/64`; a full-length prefix gives the address itself (`192.0.2.7`).
    Built from the integer: an `ip_network` costs more than a defense precheck."""
    address = parse(ip)
    if address is None:
        return ip
    bits = v4_bits if address.version == 4 else v6_bits
    if bits >= address.max_prefixlen:
        return str(address)
    shift = address.max_prefixlen - bits
    base = type(address)(int(address) >> shift << shift)
    return f"{base}/{bits}"


def network(ip: str) -> str:
    """The client's /24 (IPv4) or /64 (IPv6)."""
    return masked(ip)


def is_loopback(host: str) -> bool:
    """`localhost`, or a loopback address (IPv6 may come in brackets)."""
    if host.lower() == "localhost":
        return True
    address = parse(host.strip("[]"))
    return address is not None and address.is_loopback


def cannot_listen(key: str, address: str, exc: OSError) -> ConfigError:
    """The one line for a listener `address` (the value of `key`) that cannot be
    bound: in use, not this host's, a name that does not resolve."""
    # socket.create_server's message repeats the address; the errno says it alone.
    if exc.errno and not isinstance(exc, socket.gaierror):
        reason = os.strerror(exc.errno)
    else:
        reason = exc.strerror or str(exc)
    return ConfigError([(key, f"cannot listen on {address}: {reason}")])
