"""What to scan: targets as the user writes them, turned into (name, address, port).

Accepted forms:
    mail.example.org            a name: every address it resolves to (at most
                                MAX_ADDRESSES_PER_NAME), each on every port
    mail.example.org:993        one port only ([2001:db8::1]:993 for IPv6)
    192.0.2.10, 2001:db8::10    an address
    192.0.2.0/24, 2001:db8::/120  every host address of the network (at most
                                MAX_ADDRESSES addresses in all, so a /64 is refused
                                rather than scanned for ever)
    @targets.txt                one target per line; blank lines and # comments skipped

Ports: `--ports 143,993` replaces the default list, `--ports +25,4190` adds to it,
ranges are allowed (`--ports 140-150`). Addresses times ports make at most
MAX_ENDPOINTS endpoints. The scanner never talks to anything that is not in the
resulting list.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "DEFAULT_PORTS",
    "MAX_ADDRESSES",
    "MAX_ENDPOINTS",
    "Endpoint",
    "TargetError",
    "parse_ports",
    "resolve",
]

# RFC 8314 access and submission ports: IMAP, IMAPS, POP3, POP3S, submission, submissions.
DEFAULT_PORTS: tuple[int, ...] = (143, 993, 110, 995, 587, 465)
# A /16: beyond this a scan is a mistake (or an IPv6 /64) rather than an audit.
MAX_ADDRESSES = 65_536
# A /16 on the default ports. Every endpoint becomes a probe task: all 65,535
# ports of a /16 would be four billion of them, built before the first probe.
MAX_ENDPOINTS = MAX_ADDRESSES * len(DEFAULT_PORTS)
MAX_ADDRESSES_PER_NAME = 16


class TargetError(ValueError):
    """A target or port list that cannot be used; the message names the argument."""


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    address: str  # the IP address connected to
    port: int
    host: str  # the name the user gave (or the address): the certificate must match it


@dataclasses.dataclass(frozen=True, slots=True)
class _Spec:
    text: str
    host: str
    port: int | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None


def parse_ports(text: str | None) -> tuple[int, ...]:
    """`None` → the defaults; "a,b-c" → exactly those; "+a,b" → the defaults and those."""
    if text is None or not text.strip():
        return DEFAULT_PORTS
    add = text.startswith("+")
    # A dict keeps the order and answers "already there?" at once: a list made
    # `--ports 1-65535` take minutes.
    ports: dict[int, None] = dict.fromkeys(DEFAULT_PORTS) if add else {}
    for part in text.removeprefix("+").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (_number(x.strip()) for x in part.split("-", 1))
                if lo > hi or hi - lo > 65535:
                    raise ValueError
                chosen = range(lo, hi + 1)
            else:
                chosen = range(_number(part), _number(part) + 1)
        except ValueError:
            raise TargetError(f"--ports: {part!r} is not a port or a range a-b") from None
        for port in chosen:
            if not 1 <= port <= 65535:
                raise TargetError(f"--ports: {port} is not a TCP port (1-65535)")
            ports.setdefault(port)
    if not ports:
        raise TargetError("--ports: no port given")
    return tuple(ports)


def _expand_files(targets: Iterable[str]) -> list[str]:
    out: list[str] = []
    for target in targets:
        if target.startswith("@"):
            path = Path(target[1:])
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise TargetError(f"{target}: cannot read the file ({exc.strerror})") from None
            except UnicodeDecodeError as exc:
                raise TargetError(
                    f"{target}: not UTF-8 text (byte {exc.start} of the file)"
                ) from None
            for line in lines:
                line = line.split("#", 1)[0].strip()
                if line:
                    out.extend(line.split())
        else:
            out.append(target)
    return out


def _parse_one(text: str) -> _Spec:
    raw = text.strip()
    if not raw:
        raise TargetError("an empty target")
    if "/" in raw:
        try:
            network = ipaddress.ip_network(raw, strict=False)
        except ValueError:
            raise TargetError(f"{raw}: not a network in CIDR notation") from None
        return _Spec(raw, str(network.network_address), None, network)
    host, port = raw, None
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise TargetError(f"{raw}: missing ']' after an IPv6 address")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise TargetError(f"{raw}: expected [address]:port")
            port = _port(raw, rest[1:])
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
        port = _port(raw, port_text)
    # else: a name, an IPv4 address, or a bare IPv6 address (several colons)
    if not host:
        raise TargetError(f"{raw}: no host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise TargetError(f"{raw}: not an IPv6 address") from None
    return _Spec(raw, host, port, None)


def _number(text: str) -> int:
    """ASCII digits only: int() also takes "1_43", "+5", " 5" and other scripts' digits."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def _port(raw: str, text: str) -> int:
    try:
        port = _number(text)
    except ValueError:
        raise TargetError(f"{raw}: {text!r} is not a port") from None
    if not 1 <= port <= 65535:
        raise TargetError(f"{raw}: {port} is not a TCP port (1-65535)")
    return port


async def _addresses(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetError(f"{host}: does not resolve ({exc.strerror})") from None
    seen: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen[:MAX_ADDRESSES_PER_NAME]


async def resolve(targets: Iterable[str], ports: tuple[int, ...]) -> list[Endpoint]:
    """Every endpoint to probe, in a stable order, without duplicates."""
    specs = [_parse_one(t) for t in _expand_files(targets)]
    if not specs:
        raise TargetError("no target given")
    endpoints: dict[tuple[str, int], Endpoint] = {}
    count = 0
    for spec in specs:
        if spec.network is not None:
            hosts = (
                [spec.network.network_address]
                if spec.network.num_addresses == 1
                else list(_hosts(spec.network, spec.text))
            )
            count += len(hosts)
            if count > MAX_ADDRESSES:
                raise TargetError(
                    f"{spec.text}: more than {MAX_ADDRESSES} addresses in all; "
                    "scan smaller networks"
                )
            addresses = [(str(a), str(a)) for a in hosts]
        else:
            addresses = [(a, spec.host) for a in await _addresses(spec.host)]
            count += len(addresses)
        for address, name in addresses:
            for port in (spec.port,) if spec.port is not None else ports:
                key = (address, port)
                # A name beats an address: the certificate is checked against it.
                if key not in endpoints or endpoints[key].host == address:
                    endpoints[key] = Endpoint(address, port, name)
            if len(endpoints) > MAX_ENDPOINTS:
                raise TargetError(
                    f"{spec.text}: more than {MAX_ENDPOINTS} endpoints (addresses × ports) "
                    "in all; scan fewer addresses or ports"
                )
    return sorted(
        endpoints.values(),
        key=lambda e: (
            ipaddress.ip_address(e.address).version,
            ipaddress.ip_address(e.address),
            e.port,
        ),
    )


def _hosts(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network, text: str
) -> Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if network.num_addresses > MAX_ADDRESSES:
        raise TargetError(f"{text}: more than {MAX_ADDRESSES} addresses; scan smaller networks")
    return network.hosts()
