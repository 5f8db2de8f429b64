"""`defense.limits` and `defense.sources`: the numbers in force and what a
source is, pure and without a store (the engine's behaviour over them is in
test_defense_engine.py)."""

from __future__ import annotations

import random

import pytest

from imapguard.defense import MAX_DELAY, DefenseSettings, Posture
from imapguard.defense.limits import Limits, Windows, delay, span
from imapguard.defense.sources import SourceClasses, source


def test_normal_limits_are_the_settings() -> None:
    s = DefenseSettings()
    limits = Limits.under(s, Posture.NORMAL)
    assert (limits.pair_free, limits.source_free, limits.pair_block) == (3, 10, 10)
    assert (limits.account_lockout, limits.account_attacked) == (10, 5)
    assert (limits.source_failures, limits.source_accounts) == (50, 20)
    assert (limits.network_failures, limits.network_accounts) == (150, 60)
    assert (limits.spray_accounts, limits.duration_factor) == (5, 1.0)


def test_under_attack_limits_shrink_but_keep_their_meaning() -> None:
    s = DefenseSettings()
    limits = Limits.under(s, Posture.UNDER_ATTACK)
    # Halved, rounded up.
    assert (limits.pair_free, limits.pair_block, limits.account_lockout) == (2, 5, 5)
    assert (limits.account_attacked, limits.spray_accounts) == (3, 3)
    assert limits.duration_factor == 2.0
    # Never below what keeps a rule meaningful: "accounts" limits need two
    # accounts (one account failing is not a spray), others one failure, the
    # free allowances may reach zero.
    tiny = DefenseSettings(
        pair_free=1,
        source_free=0,
        pair_block=1,
        source_accounts=2,
        network_accounts=2,
        spray_accounts=2,
        attack_threshold_factor=0.01,
    )
    floor = Limits.under(tiny, Posture.UNDER_ATTACK)
    assert (floor.pair_free, floor.source_free, floor.pair_block) == (1, 0, 1)
    assert (floor.source_accounts, floor.network_accounts, floor.spray_accounts) == (2, 2, 2)


def test_block_durations_escalate_to_the_cap() -> None:
    s = DefenseSettings()
    normal = Limits.under(s, Posture.NORMAL)
    attack = Limits.under(s, Posture.UNDER_ATTACK)
    assert [normal.block_duration(s, n) for n in (1, 2, 3, 8, 9, 1000)] == [
        600,
        1200,
        2400,
        76800,
        86400,
        86400,
    ]
    assert [attack.block_duration(s, n) for n in (1, 2, 8)] == [1200, 2400, 86400]


def test_delays_double_with_jitter_and_stay_under_the_client_timeout() -> None:
    s = DefenseSettings()
    rng = random.Random(7)
    for level, base in ((1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 20.0), (99, 20.0)):
        waits = [delay(s, rng, level) for _ in range(200)]
        assert all(base * 0.8 <= w <= base * 1.2 for w in waits), level
        assert max(waits) - min(waits) > 0  # jittered, never a constant
    assert all(delay(s, rng, 10**9) < MAX_DELAY for _ in range(1000))


def test_windows() -> None:
    s = DefenseSettings()  # one hour in six 10-minute buckets; 1-minute posture buckets
    w = Windows(s)
    assert w.window(3599.0) == range(0, 6)
    assert w.window(3600.0) == range(1, 7)
    assert w.expiry(5) == 6600.0  # bucket 5 (3000-3600 s) leaves the window at 6600 s
    assert w.posture_bucket(119.9) == 1
    assert w.posture_expiry(1) == (1 + 5 + 5) * 60.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(3600, "1 h"), (7200, "2 h"), (600, "10 min"), (5400, "90 min"), (90, "90 s"), (0.5, "0.5 s")],
)
def test_span(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_a_source_is_parsed_once_into_address_and_network() -> None:
    mapped = source("::ffff:192.0.2.7")
    assert (mapped.ip, mapped.network) == ("192.0.2.7", "192.0.2.0/24")
    v6 = source("2001:db8:1:2:3::9")
    assert (v6.ip, v6.network) == ("2001:db8:1:2:3::9", "2001:db8:1:2::/64")
    label = source("unix-socket")
    assert (label.ip, label.network, label.address) == ("unix-socket", "unix-socket", None)


def test_allowlist_and_trusted_networks() -> None:
    classes = SourceClasses(["192.0.2.0/28"], ["10.0.0.0/8", "2001:db8::/32"])
    assert classes.classify("192.0.2.3") == (True, False)
    assert classes.classify("::ffff:10.1.2.3") == (False, True)
    assert classes.classify("2001:db8::1") == (False, True)
    assert classes.classify("192.0.2.16") == (False, False)
    assert classes.classify("not-an-address") == (False, False)
    assert SourceClasses([], []).classify("10.0.0.1") == (False, False)
