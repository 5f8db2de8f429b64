"""Targets as the user writes them → the exact endpoints probed, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.scanner.targets import (
    DEFAULT_PORTS,
    MAX_ADDRESSES,
    Endpoint,
    TargetError,
    parse_ports,
    resolve,
)


@pytest.mark.parametrize(
    ("text", "ports"),
    [
        (None, DEFAULT_PORTS),
        ("", DEFAULT_PORTS),
        ("143", (143,)),
        ("143, 993", (143, 993)),
        ("+25", (*DEFAULT_PORTS, 25)),
        ("+143", DEFAULT_PORTS),
        ("140-142,993", (140, 141, 142, 993)),
    ],
)
def test_ports(text: str | None, ports: tuple[int, ...]) -> None:
    assert parse_ports(text) == ports


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "0 is not a TCP port"),
        ("70000", "70000 is not a TCP port"),
        ("imap", "'imap' is not a port"),
        ("9-3", "'9-3' is not a port or a range"),
        (",", "no port given"),
    ],
)
def test_bad_ports_name_the_option(text: str, message: str) -> None:
    with pytest.raises(TargetError, match="--ports") as err:
        parse_ports(text)
    assert message in str(err.value)


@pytest.mark.asyncio
async def test_address_host_port_and_ipv6_forms() -> None:
    got = await resolve(
        ["192.0.2.10", "192.0.2.11:2143", "[2001:db8::1]:993", "2001:db8::2"], (143, 993)
    )
    assert got == [
        Endpoint("192.0.2.10", 143, "192.0.2.10"),
        Endpoint("192.0.2.10", 993, "192.0.2.10"),
        Endpoint("192.0.2.11", 2143, "192.0.2.11"),
        Endpoint("2001:db8::1", 993, "2001:db8::1"),
        Endpoint("2001:db8::2", 143, "2001:db8::2"),
        Endpoint("2001:db8::2", 993, "2001:db8::2"),
    ]


@pytest.mark.asyncio
async def test_cidr_expands_to_host_addresses_only() -> None:
    got = await resolve(["198.51.100.0/30"], (143,))
    assert [e.address for e in got] == ["198.51.100.1", "198.51.100.2"]
    got = await resolve(["2001:db8::/126"], (993,))
    assert [e.address for e in got] == ["2001:db8::1", "2001:db8::2", "2001:db8::3"]
    assert [e.address for e in await resolve(["203.0.113.5/32"], (1,))] == ["203.0.113.5"]


@pytest.mark.asyncio
async def test_a_name_is_kept_for_the_certificate_check() -> None:
    got = await resolve(["localhost:993", "127.0.0.1:993"], (143,))
    v4 = [e for e in got if e.address == "127.0.0.1"]
    assert v4 == [Endpoint("127.0.0.1", 993, "localhost")]


@pytest.mark.asyncio
async def test_target_file(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("# lab\n192.0.2.1:143  192.0.2.2:110\n\n192.0.2.3:995 # twin\n")
    got = await resolve([f"@{f}"], DEFAULT_PORTS)
    assert [(e.address, e.port) for e in got] == [
        ("192.0.2.1", 143),
        ("192.0.2.2", 110),
        ("192.0.2.3", 995),
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("2001:db8::/64", f"more than {MAX_ADDRESSES} addresses"),
        ("10.0.0.0/8", f"more than {MAX_ADDRESSES} addresses"),
        ("300.1.2.3/24", "not a network in CIDR notation"),
        ("[2001:db8::1:993", "missing ']'"),
        ("host:port", "'port' is not a port"),
        ("host:0", "0 is not a TCP port"),
        ("nonexistent.invalid", "does not resolve"),
        ("@/nonexistent/targets.txt", "cannot read the file"),
    ],
)
async def test_bad_targets_are_named(target: str, message: str) -> None:
    with pytest.raises(TargetError) as err:
        await resolve([target], (143,))
    assert message in str(err.value)
    assert target.lstrip("@").split(":")[0].split("/")[0] in str(err.value) or target in str(
        err.value
    )
