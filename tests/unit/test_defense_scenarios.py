"""Attack scenarios against the defense engine (issue 4), on both stores:
brute force, distributed brute force, spraying, a stale phone, NAT neighbours.
Clock injected: no test sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imapguard.defense import (
    Action,
    BlockPlaced,
    Posture,
    SprayDetected,
    Target,
    TargetKind,
)
from tests.unit.test_defense_support import STORES, Factory, harnesses

OWNER_HOME = "198.51.100.20"


@pytest.fixture(params=STORES)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    with harnesses(request.param, tmp_path) as factory:
        yield factory


def test_brute_force_one_account_one_address(make: Factory) -> None:
    h = make()
    assert h.login(OWNER_HOME, "alice", "right", ok=True).action is Action.ALLOW  # learns home
    attacker = "203.0.113.9"
    verdicts = [h.login(attacker, "alice", f"guess-{i}", ok=False) for i in range(10)]
    # Three free guesses, then growing delays (wforce: > 3 per IP+login; Dovecot 2 s doubling).
    assert [v.action for v in verdicts[:4]] == [Action.ALLOW] * 4
    assert all(v.action is Action.DELAY for v in verdicts[4:])
    for verdict, base in zip(verdicts[4:], (2, 4, 8, 16, 20, 20), strict=True):
        assert 0.8 * base <= verdict.delay <= 1.2 * base < 25  # +-20 % jitter, capped
    # The tenth distinct guess locks unfamiliar sources out of alice, and this pair.
    blocked = h.login(attacker, "alice", "guess-10", ok=False)
    assert blocked.action is Action.BLOCKED
    assert blocked.target in (
        Target(TargetKind.ACCOUNT_UNFAMILIAR, "alice"),
        Target(TargetKind.ACCOUNT_SOURCE, f"{attacker}|alice"),
    )
    assert blocked.expires == pytest.approx(h.clock.now + 600)
    assert h.block_kinds() == {TargetKind.ACCOUNT_UNFAMILIAR, TargetKind.ACCOUNT_SOURCE}
    assert all(b.reason for b in h.defense.blocks())
    # The owner logs in during the attack: from home (familiar network, no device
    # record needed) and from a trusted device on the road.
    home = h.login("198.51.100.33", "alice", "right", ok=True)
    assert (home.action, home.familiar) == (Action.ALLOW, True)
    road = h.login("192.0.2.77", "alice", "right", ok=True, trusted_device=True)
    assert (road.action, road.familiar) == (Action.ALLOW, True)
    # Other accounts from elsewhere are untouched.
    assert h.login("192.0.2.5", "bob", "bobs", ok=True).action is Action.ALLOW


def test_distributed_brute_force_from_200_addresses(make: Factory) -> None:
    h = make()
    h.login(OWNER_HOME, "alice", "right", ok=True)
    verdicts = [
        h.login(f"203.0.{i // 100}.{i % 100 + 1}", "alice", f"guess-{i}", ok=False)
        for i in range(200)
    ]
    refused = [v for v in verdicts if v.action is Action.BLOCKED]
    assert len(refused) == 190  # after 10 distinct guesses from unfamiliar sources
    assert {v.target for v in refused} == {Target(TargetKind.ACCOUNT_UNFAMILIAR, "alice")}
    # No address or network is blocked because an account crossed a threshold.
    assert h.block_kinds() == {TargetKind.ACCOUNT_UNFAMILIAR}
    # The owner still gets in from a familiar source.
    owner = h.login(OWNER_HOME, "alice", "right", ok=True)
    assert (owner.action, owner.delay) == (Action.ALLOW, 0.0)
    # An attacker address trying another account is not refused.
    assert h.login("203.0.0.5", "bob", "guess", ok=False).action is Action.ALLOW


def test_password_spray_20_accounts_from_20_addresses_one_try_each(make: Factory) -> None:
    h = make()
    h.login(OWNER_HOME, "user7", "Summer2024!", ok=True)  # user7's real password is it
    verdicts = [
        h.login(f"198.51.{i}.7", f"user{i}", "Summer2024!", ok=False) for i in range(20) if i != 7
    ]
    # Below every per-address and per-account limit, yet the login-free fingerprint
    # sees one password on five accounts.
    assert [v.action for v in verdicts[:5]] == [Action.ALLOW] * 5
    assert all(v.action is Action.BLOCKED for v in verdicts[5:])
    assert {v.target.kind for v in verdicts[5:] if v.target} == {TargetKind.FINGERPRINT}
    (alert,) = h.of(SprayDetected)
    assert (alert.by, alert.accounts) == (TargetKind.FINGERPRINT, 5)
    assert set(alert.sources) == {f"198.51.{i}.7" for i in range(5)}
    kinds = [e.block.target.kind for e in h.of(BlockPlaced)]
    assert kinds.count(TargetKind.FINGERPRINT) == 1
    assert kinds.count(TargetKind.SOURCE) == 5
    assert "password spraying" in next(
        b.reason for b in h.defense.blocks() if b.target.kind is TargetKind.FINGERPRINT
    )
    # The alert counts toward the posture.
    assert h.defense.posture() is Posture.UNDER_ATTACK
    # The sprayed password is refused from anywhere unfamiliar, even for an
    # account it was never tried on...
    assert h.login("192.0.2.200", "user99", "Summer2024!", ok=False).action is Action.BLOCKED
    # ...but user7 on a familiar device, whose password it is, keeps working.
    assert h.login(OWNER_HOME, "user7", "Summer2024!", ok=True).action is Action.ALLOW


def test_phone_retrying_its_old_password_100_times(make: Factory) -> None:
    h = make()
    phone = "198.51.100.40"
    h.login(phone, "alice", "old-password", ok=True)  # before the password change
    for _ in range(100):
        h.clock.advance(60)
        verdict = h.login(phone, "alice", "old-password", ok=False)
        assert (verdict.action, verdict.delay) == (Action.ALLOW, 0.0)
    assert h.defense.blocks() == []
    assert h.events == []
    # The same from an address the account never used: one failure, no lockout.
    for _ in range(100):
        verdict = h.login("192.0.2.50", "bob", "stale", ok=False)
        assert (verdict.action, verdict.delay) == (Action.ALLOW, 0.0)
    assert h.defense.blocks() == []
    # The owner types the new password: fine.
    assert h.login(phone, "alice", "new-password", ok=True).action is Action.ALLOW


def test_50_users_behind_one_nat_address_one_mistyping(make: Factory) -> None:
    h = make()
    nat = "192.0.2.1"
    for i in range(50):
        h.login(nat, f"student{i}", f"pw-{i}", ok=True)
    for typo in ("pw-7x", "pw-77", "Pw-7"):
        h.login(nat, "student7", typo, ok=False)
    h.login(nat, "student7", "pw-7", ok=True)
    for i in range(50):
        verdict = h.login(nat, f"student{i}", f"pw-{i}", ok=True)
        assert (verdict.action, verdict.delay) == (Action.ALLOW, 0.0)
    assert h.defense.blocks() == []
    assert h.events == []


def test_university_nat_tolerates_many_stale_phones_thanks_to_its_successes(
    make: Factory,
) -> None:
    h = make()
    nat = "192.0.2.1"
    for i in range(300):
        h.login(nat, f"student{i}", f"pw-{i}", ok=True)
    # 40 accounts fail once each (stale passwords): more than the 20-account limit of
    # a bare address, far below 20 + 300 credited successes.
    for i in range(300, 340):
        assert h.login(nat, f"student{i}", f"old-{i}", ok=False).action is Action.ALLOW
    assert h.defense.blocks() == []
    assert h.login(nat, "student1", "pw-1", ok=True).action is Action.ALLOW


def test_spray_from_behind_a_shared_nat_blocks_the_password_not_the_address(
    make: Factory,
) -> None:
    h = make()
    nat = "192.0.2.1"
    for i in range(10):
        h.login(nat, f"student{i}", f"pw-{i}", ok=True)
    for i in range(10, 15):
        h.login(nat, f"student{i}", "Winter2025", ok=False)  # someone on the NAT sprays
    (alert,) = h.of(SprayDetected)
    assert alert.sources == ()  # the shared address is spared...
    assert h.block_kinds() == {TargetKind.FINGERPRINT}  # ...the sprayed password is not
    assert h.login(nat, "student20", "Winter2025", ok=False).action is Action.BLOCKED
    assert h.login(nat, "student1", "pw-1", ok=True).action is Action.ALLOW


def test_spraying_from_one_address_blocks_that_address(make: Factory) -> None:
    h = make()
    sprayer = "203.0.113.50"
    for i in range(20):
        h.login(sprayer, f"user{i}", f"guess-{i}", ok=False)  # a different password each
    (alert,) = h.of(SprayDetected)
    assert (alert.by, alert.key, alert.accounts) == (TargetKind.SOURCE, sprayer, 20)
    assert h.block_kinds() == {TargetKind.SOURCE}
    assert h.login(sprayer, "user21", "guess", ok=False).target == Target(
        TargetKind.SOURCE, sprayer
    )
    # Its neighbours in the /24 are not blocked.
    assert h.login("203.0.113.51", "user1", "pw", ok=True).action is Action.ALLOW


def test_spraying_from_a_network_blocks_the_network(make: Factory) -> None:
    h = make()
    for i in range(60):
        h.login(f"203.0.113.{i + 1}", f"user{i}", f"guess-{i}", ok=False)
    (alert,) = h.of(SprayDetected)
    assert (alert.by, alert.key) == (TargetKind.NETWORK, "203.0.113.0/24")
    assert h.block_kinds() == {TargetKind.NETWORK}
    assert h.login("203.0.113.200", "someone", "x", ok=False).action is Action.BLOCKED
    assert h.login("203.0.114.1", "someone", "x", ok=False).action is Action.ALLOW


def test_ipv6_sources_are_grouped_by_64(make: Factory) -> None:
    h = make()
    for i in range(60):
        h.login(f"2001:db8:1:2::{i + 1:x}", f"user{i}", f"guess-{i}", ok=False)
    assert Target(TargetKind.NETWORK, "2001:db8:1:2::/64") in {b.target for b in h.defense.blocks()}
    # An IPv4-mapped address is its IPv4 address.
    attempt = h.defense.attempt("::ffff:192.0.2.9", "x", None, method="m", listener="l")
    assert (attempt.ip, attempt.network) == ("192.0.2.9", "192.0.2.0/24")
