"""Defense engine mechanics on both stores: escalation, delays, log-only mode,
administration, purge, allowlist and trusted networks, several nodes."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from imapguard.audit.events import to_json
from imapguard.defense import (
    MAX_DELAY,
    Action,
    BlockPlaced,
    DefenseSettings,
    FailureKind,
    Posture,
    Target,
    TargetKind,
)
from imapguard.defense.engine import POSTURE
from imapguard.errors import ConfigError
from imapguard.secret import Secret
from tests.unit.test_defense_support import STORES, Factory, Harness, harnesses


@pytest.fixture(params=STORES)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    with harnesses(request.param, tmp_path) as factory:
        yield factory


def _lock(h: Harness, user: str, round_: int) -> BlockPlaced:
    """Distinct guesses from new unfamiliar addresses until the account locks."""
    for i in range(100):
        before = len(h.events)
        h.login(f"203.0.{round_ % 250}.{i + 1}", user, f"guess-{round_}-{i}", ok=False)
        placed = [
            e
            for e in h.events[before:]
            if isinstance(e, BlockPlaced) and e.block.target.kind is TargetKind.ACCOUNT_UNFAMILIAR
        ]
        if placed:
            return placed[0]
    raise AssertionError("never locked")


def test_escalation_doubles_per_repeat_offence_up_to_the_cap(make: Factory) -> None:
    h = make()
    durations, levels = [], []
    for round_ in range(10):
        placed = _lock(h, "alice", round_)
        durations.append(placed.block.expires - placed.block.created)
        levels.append(placed.block.level)
        h.clock.now = placed.block.expires  # the lock runs out
    assert durations == [600, 1200, 2400, 4800, 9600, 19200, 38400, 76800, 86400, 86400]
    assert levels == list(range(1, 11))


def test_a_lock_relocks_at_the_next_new_guess_while_the_count_is_over(make: Factory) -> None:
    h = make()
    first = _lock(h, "alice", 0)
    h.clock.now = first.block.expires
    before = len(h.events)
    h.login("203.0.99.1", "alice", "yet-another-guess", ok=False)  # one more: locked again
    (again,) = (e for e in h.events[before:] if isinstance(e, BlockPlaced))
    assert (again.block.level, again.block.expires - again.block.created) == (2, 1200)


def test_offences_are_forgotten_after_the_offence_memory(make: Factory) -> None:
    h = make()
    first = _lock(h, "alice", 0)
    h.clock.now = first.block.expires + 86400 + 86400 + 1  # block_max + offence_memory
    assert _lock(h, "alice", 1).block.level == 1


def test_under_attack_limits_are_halved_and_blocks_doubled(make: Factory) -> None:
    h = make()
    h.store.value_put(POSTURE, "under_attack", None)
    placed = _lock(h, "alice", 0)
    assert placed.block.expires - placed.block.created == 1200
    assert "(limit 5)" in placed.block.reason


def test_delays_stay_under_25_seconds_and_are_jittered(make: Factory) -> None:
    settings = DefenseSettings(pair_block=1000, account_lockout=1000, source_failures=1000)
    h = make(settings)
    attacker = "203.0.113.9"
    delays = [h.login(attacker, "alice", f"guess-{i}", ok=False).delay for i in range(40)]
    assert max(delays) < MAX_DELAY
    assert delays[:4] == [0.0] * 4
    assert all(d >= 0.8 * 20 for d in delays[9:])  # at the cap, minus jitter
    # At one level, each precheck draws its own jitter, within +-20 % of 20 s.
    attempt = h.defense.attempt(attacker, "alice", Secret("x"), method="m", listener="l")
    samples = [h.defense.precheck(attempt).delay for _ in range(50)]
    assert len(set(samples)) > 40
    assert 16.0 <= min(samples) <= max(samples) <= 24.0
    assert 18.5 < statistics.mean(samples) < 21.5


def test_settings_refuse_a_delay_that_could_reach_25_seconds() -> None:
    with pytest.raises(ConfigError, match=r"defense\.delay_max"):
        DefenseSettings.checked(delay_max=22.0)
    with pytest.raises(ConfigError, match=r"defense\.allowlist: 'nonsense'"):
        DefenseSettings.checked(allowlist=("nonsense",))
    with pytest.raises(ConfigError, match=r"defense\.block_max: must not exceed"):
        DefenseSettings.checked(block_max=2 * 86400.0)
    with pytest.raises(ConfigError, match=r"defense\.window: must be positive"):
        DefenseSettings.checked(window=0)


def test_log_only_mode_records_what_would_happen_and_enforces_nothing(make: Factory) -> None:
    h = make(DefenseSettings(enforce=False))
    verdicts = [h.login("203.0.113.9", "alice", f"guess-{i}", ok=False) for i in range(15)]
    assert all((v.action, v.delay) == (Action.ALLOW, 0.0) for v in verdicts)
    assert [v.would for v in verdicts[4:10]] == [Action.DELAY] * 6
    assert all(v.would_delay > 0 for v in verdicts[4:10])
    assert all(v.would_block for v in verdicts[10:])
    assert verdicts[10].target in (
        Target(TargetKind.ACCOUNT_UNFAMILIAR, "alice"),
        Target(TargetKind.ACCOUNT_SOURCE, "203.0.113.9|alice"),
    )
    placed = [e for e in h.events if isinstance(e, BlockPlaced)]
    assert placed
    assert not any(e.enforced for e in placed)
    assert h.block_kinds() == {TargetKind.ACCOUNT_UNFAMILIAR, TargetKind.ACCOUNT_SOURCE}
    assert placed[0].record().enforced is False


def test_blocks_list_clear_and_unlock(make: Factory) -> None:
    h = make()
    attacker = "203.0.113.9"
    for i in range(10):
        h.login(attacker, "alice", f"guess-{i}", ok=False)
    for i in range(20):
        h.login("198.51.100.66", f"user{i}", f"spray-{i}", ok=False)
    listed = {str(b.target) for b in h.defense.blocks()}
    assert listed == {
        "account-unfamiliar:alice",
        f"account-source:{attacker}|alice",
        "source:198.51.100.66",
    }
    source = Target.parse("source:198.51.100.66")
    assert h.defense.clear(source) is True
    assert h.defense.clear(source) is False
    assert h.login("198.51.100.66", "user0", "again", ok=False).action is Action.ALLOW
    unlocked = h.defense.unlock("alice")
    assert set(unlocked) == {
        Target(TargetKind.ACCOUNT_UNFAMILIAR, "alice"),
        Target(TargetKind.ACCOUNT_SOURCE, f"{attacker}|alice"),
    }
    assert h.defense.blocks() == []
    # Unlocking forgot the counters and delay: the next guess is a first one.
    verdict = h.login(attacker, "alice", "guess-after-unlock", ok=False)
    assert (verdict.action, verdict.delay) == (Action.ALLOW, 0.0)
    assert h.defense.blocks() == []
    # ... and the offence level: a new lock starts at 10 minutes again.
    assert _lock(h, "alice", 5).block.level == 1


def test_target_parse() -> None:
    assert Target.parse("account-source:192.0.2.1|a:b") == Target(
        TargetKind.ACCOUNT_SOURCE, "192.0.2.1|a:b"
    )
    with pytest.raises(ValueError, match="unknown block kind"):
        Target.parse("ip:192.0.2.1")
    with pytest.raises(ValueError, match="KIND:VALUE"):
        Target.parse("192.0.2.1")


def test_expired_state_is_purged(make: Factory) -> None:
    h = make()
    for i in range(20):
        h.login("198.51.100.66", f"user{i}", f"spray-{i}", ok=False)
    h.login("192.0.2.1", "bob", "right", ok=True)
    assert h.defense.blocks()
    h.clock.advance(40 * 86400)  # past every window, block, offence and familiarity
    h.defense.maintain()
    assert h.defense.blocks() == []
    assert h.store.defense_purge(h.clock.now, 10_000) == 0  # nothing expired is left
    leftovers = h.store.values_get(["posture", "posture-state"], h.clock.now)
    assert set(leftovers) <= {"posture", "posture-state"}  # the shared posture stays


def test_allowlisted_sources_are_never_delayed_or_blocked(make: Factory) -> None:
    h = make(DefenseSettings(allowlist=("192.0.2.0/28",)))
    for i in range(60):
        verdict = h.login("192.0.2.5", f"user{i % 3}", f"guess-{i}", ok=False)
        assert (verdict.action, verdict.delay, verdict.familiar) == (Action.ALLOW, 0.0, True)
    assert h.defense.blocks() == []


def test_trusted_networks_are_familiar_but_each_address_is_still_limited(make: Factory) -> None:
    h = make(DefenseSettings(trusted_networks=("10.0.0.0/8",)))
    for i in range(12):
        h.login("10.1.2.3", "alice", f"guess-{i}", ok=False)
    assert h.block_kinds() == {TargetKind.ACCOUNT_SOURCE}  # no account lockout
    assert h.login("10.1.2.3", "alice", "right", ok=True).action is Action.BLOCKED
    colleague = h.login("10.9.9.9", "alice", "right", ok=True)
    assert (colleague.action, colleague.familiar) == (Action.ALLOW, True)


def test_a_success_clears_the_pairs_delay_but_not_the_accounts_count(make: Factory) -> None:
    h = make()
    home = "198.51.100.20"
    for i in range(5):
        h.login(home, "alice", f"typo-{i}", ok=False)
    assert h.login(home, "alice", "right", ok=True).action is Action.DELAY
    verdict = h.login(home, "alice", "right", ok=True)
    assert (verdict.action, verdict.delay) == (Action.ALLOW, 0.0)
    # The five unfamiliar guesses still count toward alice's lockout.
    for i in range(5):
        h.login(f"203.0.113.{i + 1}", "alice", f"guess-{i}", ok=False)
    assert TargetKind.ACCOUNT_UNFAMILIAR in h.block_kinds()


def test_under_attack_an_attacked_account_needs_a_fresh_factor(make: Factory) -> None:
    h = make()
    for i in range(5):
        h.login(f"203.0.113.{i + 1}", "alice", f"guess-{i}", ok=False)
    device = h.defense.attempt(
        "198.51.100.20", "alice", Secret("pw"), method="password", listener="l", trusted_device=True
    )
    assert h.defense.precheck(device).require_factor is False  # posture NORMAL
    h.store.value_put(POSTURE, "under_attack", None)
    verdict = h.defense.precheck(device)
    assert (verdict.action, verdict.posture, verdict.require_factor) == (
        Action.ALLOW,
        Posture.UNDER_ATTACK,
        True,
    )
    bob = h.defense.attempt("198.51.100.21", "bob", Secret("pw"), method="password", listener="l")
    assert h.defense.precheck(bob).require_factor is False


def test_a_correct_password_without_factor_counts_for_the_posture_only(make: Factory) -> None:
    h = make(DefenseSettings(posture_min_failures=3))
    for _ in range(20):
        verdict = h.login("203.0.113.9", "alice", "right", ok=False, kind=FailureKind.FACTOR)
        assert (verdict.action, verdict.delay) == (Action.ALLOW, 0.0)
    assert h.defense.blocks() == []
    for i in range(3):
        h.login("203.0.113.9", f"user{i}", f"right-{i}", ok=False, kind=FailureKind.FACTOR)
    h.clock.advance(10)
    h.defense.maintain()
    assert h.defense.posture() is Posture.UNDER_ATTACK  # 4 distinct, 4 attempts


def test_malformed_logins_are_limited_per_source(make: Factory) -> None:
    h = make()
    verdicts = [
        h.login("203.0.113.9", None, f"garbage-{i}", ok=False, kind=FailureKind.MALFORMED)
        for i in range(60)
    ]
    assert verdicts[-1].target == Target(TargetKind.SOURCE, "203.0.113.9")
    assert any(v.action is Action.DELAY for v in verdicts)


def test_a_block_decided_on_one_node_holds_on_every_node(make: Factory) -> None:
    node_a, node_b = make(), make(seed=2)
    for i in range(10):
        node_a.login(f"203.0.113.{i + 1}", "alice", f"guess-{i}", ok=False)
    verdict = node_b.login("203.0.113.200", "alice", "guess", ok=False)
    assert verdict.target == Target(TargetKind.ACCOUNT_UNFAMILIAR, "alice")
    assert [str(b.target) for b in node_b.defense.blocks()] == ["account-unfamiliar:alice"]


def test_public_names_are_pinned() -> None:
    import imapguard.defense

    assert set(imapguard.defense.__all__) == {
        "MAX_DELAY",
        "Action",
        "Attempt",
        "Block",
        "BlockPlaced",
        "CounterStore",
        "Defense",
        "DefenseEvent",
        "DefenseSettings",
        "FailureKind",
        "Fingerprinter",
        "MemoryCounterStore",
        "Posture",
        "PostureChanged",
        "PostureState",
        "SprayDetected",
        "Target",
        "TargetKind",
        "Verdict",
    }


def test_events_are_audit_records_without_passwords(make: Factory) -> None:
    h = make()
    for i in range(5):
        h.login(f"198.51.{i}.7", f"user{i}", "Summer2024!", ok=False)
    assert {type(e).__name__ for e in h.events} == {
        "BlockPlaced",
        "SprayDetected",
        "PostureChanged",
    }
    for event in h.events:
        line = to_json(event.record(), h.clock.now)
        assert "Summer2024" not in line
        assert json.loads(line)["event"] in {"defense_block", "spray_alert", "posture"}


def test_tokens_get_no_login_free_fingerprint(make: Factory) -> None:
    h = make()
    token = h.defense.attempt(
        "192.0.2.1", "alice", Secret("eyJ..."), method="oauthbearer", listener="l", spray=False
    )
    assert token.spray_fps == ()
    assert token.credential_fp is not None
    assert h.defense.attempt("192.0.2.1", "alice", None, method="m", listener="l").spray_fps == ()
