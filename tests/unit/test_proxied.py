"""Behind a load balancer: who may send a PROXY header (ProxyTrust), and the
pre-auth slot a proxy's connection holds until its header names the client
(PreauthSlots.take_unnamed, then `take` under the client's source)."""

from __future__ import annotations

from imapguard.gateway.admission import PER_SOURCE, TOTAL, UNFAMILIAR, UNNAMED, PreauthSlots
from imapguard.gateway.proxied import ProxyTrust


def test_trusted_proxies_match_addresses_and_networks() -> None:
    trust = ProxyTrust(["10.0.0.0/24", "2001:db8::5"])
    assert trust.trusts("10.0.0.77")
    assert trust.trusts("::ffff:10.0.0.77")  # on a dual-stack listener
    assert trust.trusts("2001:db8::5")
    assert not trust.trusts("10.0.1.1")
    assert not trust.trusts("2001:db8::6")
    assert not trust.trusts("not an address")


def test_one_client_behind_the_proxy_cannot_take_everyones_slots() -> None:
    slots = PreauthSlots(per_source=2, total=10, reserve=0, familiar=lambda ip: False)
    # Five connections from the proxy, headers not read yet: no per-source limit.
    pending = [slots.take_unnamed() for _ in range(5)]
    assert all(refused is None for _, refused in pending)
    assert slots.held(UNNAMED) == 5
    # Their headers arrive: three name the attacker, two a user.
    named = []
    for ip in ("192.0.2.66", "192.0.2.66", "192.0.2.66", "198.51.100.7", "198.51.100.7"):
        slots.give_back(UNNAMED)
        named.append(slots.take(ip))
    assert [refused for _, refused in named] == [None, None, PER_SOURCE, None, None]
    assert slots.held(UNNAMED) == 0
    assert slots.in_use == 4


def test_unnamed_slots_count_against_the_total() -> None:
    slots = PreauthSlots(per_source=5, total=3, reserve=1, familiar=lambda ip: False)
    assert slots.take_unnamed() == (UNNAMED, None)
    assert slots.take_unnamed() == (UNNAMED, None)
    # The reserve is decided when the header names the client.
    assert slots.take_unnamed() == (UNNAMED, None)
    assert slots.take_unnamed() == (UNNAMED, TOTAL)
    slots.give_back(UNNAMED)
    assert slots.take("192.0.2.1") == ("192.0.2.1", UNFAMILIAR)
