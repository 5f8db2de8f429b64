#!/usr/bin/env python3
"""Fuzz target: the scanner's target syntax (parse_ports and resolve in
src/imapguard/scanner/targets.py).

Input layout (text as the shell hands it over: UTF-8, undecodable bytes as
surrogates like Python's argv):

    first line          the --ports value (an empty line: no --ports)
    next lines          one command-line target each; a line "@" names the file
    after a NUL byte    the bytes of that @file

Names never reach DNS: a host that is not an IP address resolves to one to three
documentation addresses (192.0.2.0/24, 2001:db8::/32) chosen by its CRC, or fails
to resolve. MAX_ADDRESSES is 256 and MAX_ENDPOINTS 4096 here (the code reads them
at call time), so that every limit is reached by short inputs and no input builds
65,536 hosts.

Contract checked:
* `parse_ports` returns distinct TCP ports, or raises `TargetError` naming --ports;
* `resolve` returns endpoints or raises `TargetError`, nothing else;
* endpoints are sorted, unique per (address, port), with an IP address and a TCP
  port that the user asked for (in --ports, or written in ASCII digits after a
  colon), and at most MAX_ENDPOINTS of them;
* every port the user wrote is in ASCII digits: `parse_ports` takes no other text;
* the same answer twice, and the same answer when the same targets come one per
  argument or all in an @file (one per line, or all on one line).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import tempfile
import zlib

import _harness

with _harness.instrumented():
    from imapguard.scanner import targets
    from imapguard.scanner.targets import Endpoint, TargetError, parse_ports, resolve

LOOP = asyncio.new_event_loop()
REAL_ADDRESSES = targets._addresses
FILE = os.path.join(tempfile.gettempdir(), f"imapguard-fuzz-targets-{os.getpid()}.txt")
OTHER_FILE = FILE + ".2"
targets.MAX_ADDRESSES = 256
targets.MAX_ENDPOINTS = 4096


async def fake_addresses(host: str) -> list[str]:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        crc = zlib.crc32(host.encode("utf-8", "surrogateescape"))
        if crc % 7 == 0:
            raise TargetError(f"{host}: does not resolve (fuzz)") from None
        pool = [f"192.0.2.{crc % 256}", f"2001:db8::{crc % 65536:x}", f"192.0.2.{crc % 3}"]
        return pool[: 1 + crc % 3]
    return await REAL_ADDRESSES(host)  # an address: answered without DNS


targets._addresses = fake_addresses


def run(args: list[str], ports: tuple[int, ...]) -> list[Endpoint] | str:
    try:
        return LOOP.run_until_complete(resolve(args, ports))
    except TargetError as exc:
        assert str(exc), exc
        return f"TargetError: {exc}"


def check(endpoints: list[Endpoint], ports: tuple[int, ...], args: list[str]) -> None:
    assert len(endpoints) <= targets.MAX_ENDPOINTS, len(endpoints)
    keys = [
        (ipaddress.ip_address(e.address).version, ipaddress.ip_address(e.address), e.port)
        for e in endpoints
    ]
    assert keys == sorted(keys) and len({(e.address, e.port) for e in endpoints}) == len(keys)
    for endpoint in endpoints:
        assert 1 <= endpoint.port <= 65535, endpoint
        # A port of its own is written as one in ASCII digits after a colon.
        written = re.compile(rf":0*{endpoint.port}(?![0-9])")
        assert endpoint.port in ports or any(written.search(a) for a in args), endpoint


def simple(arg: str) -> bool:
    """A target that means the same in an @file (no blank, comment, @ or surrogate)."""
    if not arg or arg.startswith("@") or "#" in arg or any(c.isspace() for c in arg):
        return False
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_one_input(data: bytes) -> None:
    text, _, file_bytes = data.partition(b"\0")
    lines = text.decode("utf-8", "surrogateescape").split("\n")
    ports_text, args = lines[0], lines[1:]
    try:
        ports = parse_ports(ports_text or None)
    except TargetError as exc:
        assert str(exc).startswith("--ports: "), exc
        return
    assert ports and len(set(ports)) == len(ports) and all(1 <= p <= 65535 for p in ports)
    assert re.fullmatch(r"\+?[0-9,\-\s]*", ports_text), ports_text
    with open(FILE, "wb") as f:
        f.write(file_bytes)
    args = ["@" + FILE if a == "@" else a for a in args]
    result = run(args, ports)
    if isinstance(result, list):
        check(result, ports, [*args, file_bytes.decode("utf-8", "replace")])
    assert run(args, ports) == result, "a second resolve gave another answer"
    if args and all(simple(a) for a in args):
        with open(OTHER_FILE, "w", encoding="utf-8") as f:
            f.write("\n".join(args))
        assert run(["@" + OTHER_FILE], ports) == result, "one per line in an @file"
        with open(OTHER_FILE, "w", encoding="utf-8") as f:
            f.write(" ".join(args))
        assert run(["@" + OTHER_FILE], ports) == result, "all on one line of an @file"


if __name__ == "__main__":
    _harness.main(test_one_input)
