"""Where an attempt comes from: its address parsed once, whether it is
allowlisted or in a trusted network, and whether it is shared (many accounts
logged in from it: a NAT, a proxy, the webmail server).

Addresses follow `imapguard.net` (IPv4-mapped IPv6 is IPv4; the network is the
/24 or /64); the pair is cached per address because the precheck needs both on
every login and building them costs more than the rest of the precheck.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from imapguard import net
from imapguard.defense.counters import CounterStore

__all__ = ["Source", "SourceClasses", "logged_in_accounts", "source"]


@dataclass(frozen=True)
class Source:
    ip: str  # canonical text
    network: str  # its /24 or /64 (the text itself when it is no address)
    address: net.Address | None


@functools.lru_cache(maxsize=8192)
def source(ip: str) -> Source:
    """An address parsed once: its canonical text and network."""
    address = net.parse(ip)
    if address is None:
        return Source(ip, ip, None)  # a test's or a Unix socket's label: its own network
    return Source(str(address), net.network(ip), address)


class SourceClasses:
    """The configured allowlist (never counted, delayed or blocked) and trusted
    networks (familiar to every account)."""

    def __init__(self, allowlist: Iterable[str], trusted: Iterable[str]) -> None:
        self._allowlist = tuple(ipaddress.ip_network(n, strict=False) for n in allowlist)
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted)

    def classify(self, ip: str) -> tuple[bool, bool]:
        """(allowlisted, in a trusted network)."""
        if not self._allowlist and not self._trusted:
            return False, False
        address = source(ip).address
        if address is None:
            return False, False
        return (
            any(address in n for n in self._allowlist),
            any(address in n for n in self._trusted),
        )

    def allowlisted(self, ip: str) -> bool:
        return self.classify(ip)[0]

    def trusted(self, ip: str) -> bool:
        return self.classify(ip)[1]


def logged_in_accounts(
    store: CounterStore, ip: str, window: range, now: float, limit: int
) -> list[str]:
    """The accounts that logged in successfully from address `ip` in the window
    (`recording` writes them as "ok:src:IP"), sorted, at most `limit`. This is
    the one evidence of a shared address the defense has: the spray rule spares
    an address with `shared_source_accounts` of them, and an owner's word
    blocks an address for everyone only when no other account is among them
    (`owner`)."""
    return store.distinct_members([f"ok:src:{ip}"], window, now, limit)
