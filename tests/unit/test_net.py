"""imapguard.net: one reading of a client address for every layer."""

from __future__ import annotations

import ipaddress

import pytest

from imapguard import net


@pytest.mark.parametrize(
    ("ip", "network"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.9", "198.51.100.0/24"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_network_is_the_clients_24_or_64(ip: str, network: str) -> None:
    assert net.network(ip) == network


def test_ipv4_mapped_address_is_the_ipv4_address() -> None:
    # One client, one key: ::ffff:a.b.c.d must count with a.b.c.d everywhere.
    assert net.parse("::ffff:192.0.2.7") == ipaddress.IPv4Address("192.0.2.7")
    assert net.normalize("::ffff:192.0.2.7") == "192.0.2.7"
    assert net.normalize("2001:DB8::1") == "2001:db8::1"
    assert net.normalize("label") == "label"
    assert net.parse("label") is None


@pytest.mark.parametrize(
    ("ip", "v4", "v6", "expected"),
    [
        ("192.0.2.7", 32, 64, "192.0.2.7"),
        ("2001:db8:1:2:3::9", 32, 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:3::9", 32, 48, "2001:db8:1::/48"),
        ("2001:db8::9", 32, 128, "2001:db8::9"),
        ("::ffff:192.0.2.7", 32, 48, "192.0.2.7"),
        ("192.0.2.7", 16, 64, "192.0.0.0/16"),
    ],
)
def test_masked(ip: str, v4: int, v6: int, expected: str) -> None:
    assert net.masked(ip, v4, v6) == expected
    # The same text as the standard library's network, so keys stay comparable.
    if "/" in expected:
        assert expected == str(
            ipaddress.ip_network(f"{net.normalize(ip)}/{expected.split('/')[1]}", strict=False)
        )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LocalHost", True),
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("192.0.2.1", False),
        ("localhost.example", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert net.is_loopback(host) is loopback
