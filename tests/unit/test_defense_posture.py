"""The under-attack posture: rises under a failure flood, falls after it, not on
a quiet night; shared by nodes; and its pure parts (fold, decide)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from imapguard.defense import DefenseSettings, Posture, PostureChanged, PostureState
from imapguard.defense.posture import ShortWindow, decide, fold, trigger_ratio
from tests.unit.test_defense_support import STORES, Factory, Harness, harnesses

_serial = itertools.count()
SETTINGS = DefenseSettings()


@pytest.fixture(params=STORES)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    with harnesses(request.param, tmp_path) as factory:
        yield factory


def _minute(h: Harness, *, successes: int, failures: int, nodes: list[Harness]) -> None:
    """One minute of traffic spread over the nodes: distinct users, addresses and
    passwords, so no per-key rule fires; only the global ratio moves."""
    for i in range(successes + failures):
        n = next(_serial)
        node = nodes[i % len(nodes)]
        ip = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
        node.login(ip, f"user{n}", f"pw-{n}", ok=i < successes)
    h.clock.advance(60)  # the nodes share this clock


def test_posture_rises_under_a_failure_flood_and_falls_after_it(make: Factory) -> None:
    a = make()
    b = make(clock=a.clock, seed=2)  # a second node on the same store and time
    nodes = [a, b]
    for _ in range(30):  # half an hour of normal traffic: 1 failure in 21
        _minute(a, successes=20, failures=1, nodes=nodes)
    assert a.defense.posture() is Posture.NORMAL
    for _ in range(3):  # the flood
        _minute(a, successes=20, failures=80, nodes=nodes)
    raised = a.of(PostureChanged) + b.of(PostureChanged)
    assert len(raised) == 1  # one node reports the transition
    (up,) = raised
    assert (up.before, up.after) == (Posture.NORMAL, Posture.UNDER_ATTACK)
    assert up.failures >= 50
    assert up.ratio >= up.trigger == pytest.approx(trigger_ratio(SETTINGS, up.baseline))
    assert up.trigger < 0.35  # 3 x a baseline near 1 in 20, at least 0.3
    assert a.defense.posture() is b.defense.posture() is Posture.UNDER_ATTACK
    state = a.defense.posture_state()
    assert state is not None
    frozen = state.baseline
    for _ in range(10):  # calm again, but the minimum duration (15 min) holds
        _minute(a, successes=20, failures=1, nodes=nodes)
    assert a.defense.posture() is Posture.UNDER_ATTACK
    state = a.defense.posture_state()
    assert state is not None
    assert state.baseline == frozen  # the attack did not become the norm
    for _ in range(10):
        _minute(a, successes=20, failures=1, nodes=nodes)
    events = a.of(PostureChanged) + b.of(PostureChanged)
    assert [(e.before, e.after) for e in events] == [
        (Posture.NORMAL, Posture.UNDER_ATTACK),
        (Posture.UNDER_ATTACK, Posture.NORMAL),
    ]
    assert b.defense.posture() is Posture.NORMAL


def test_a_quiet_night_with_three_failures_of_four_is_no_attack(make: Factory) -> None:
    h = make()
    for _ in range(5):
        _minute(h, successes=1, failures=3, nodes=[h])
    h.defense.maintain()
    assert h.defense.posture() is Posture.NORMAL
    assert h.of(PostureChanged) == []


def test_maintain_relaxes_the_posture_without_any_login(make: Factory) -> None:
    h = make(DefenseSettings(posture_min_failures=5))
    _minute(h, successes=0, failures=10, nodes=[h])
    h.defense.maintain()
    assert h.defense.posture() is Posture.UNDER_ATTACK
    h.clock.advance(900)
    (down,) = h.defense.maintain()
    assert isinstance(down, PostureChanged)
    assert down.after is Posture.NORMAL
    assert h.defense.posture() is Posture.NORMAL


def test_trigger_is_a_multiple_of_the_baseline_clamped() -> None:
    assert trigger_ratio(SETTINGS, 0.0) == pytest.approx(0.3)
    assert trigger_ratio(SETTINGS, 0.2) == pytest.approx(0.6)
    assert trigger_ratio(SETTINGS, 0.5) == pytest.approx(0.9)


def test_decide_has_hysteresis_and_a_minimum_duration() -> None:
    normal = PostureState.start(SETTINGS, 0.0, 0)
    flood = ShortWindow(failures=60, attempts=100, sprays=0)
    assert decide(normal, flood, SETTINGS, 10.0) is Posture.UNDER_ATTACK
    assert decide(normal, ShortWindow(49, 50, 0), SETTINGS, 10.0) is Posture.NORMAL
    assert decide(normal, ShortWindow(0, 1, 1), SETTINGS, 10.0) is Posture.UNDER_ATTACK
    attack = PostureState(Posture.UNDER_ATTACK, 0.0, 0, 0.1, 1.0)
    calm = ShortWindow(failures=5, attempts=100, sprays=0)
    assert decide(attack, calm, SETTINGS, 899.0) is Posture.UNDER_ATTACK  # too soon
    assert decide(attack, calm, SETTINGS, 900.0) is Posture.NORMAL
    # Below the trigger (0.3) but above half of it, with volume: stays raised.
    assert decide(attack, ShortWindow(40, 200, 0), SETTINGS, 900.0) is Posture.UNDER_ATTACK
    assert decide(attack, ShortWindow(0, 1, 1), SETTINGS, 900.0) is Posture.UNDER_ATTACK


def test_fold_weighs_by_volume_decays_over_gaps_and_freezes_under_attack() -> None:
    settings = DefenseSettings(posture_baseline=600.0)  # alpha 0.1 per bucket
    state = PostureState.start(settings, 0.0, 10)
    assert state.folded == 9
    folded = fold(state, settings, 13, {10: (0, 100), 11: (0, 100), 12: (50, 100)})
    assert folded.folded == 12
    assert folded.base_attempts == pytest.approx(0.9**3 + 0.1 * 100 * (0.81 + 0.9 + 1))
    assert 0.1 < folded.baseline < 0.2
    # A long silence: missing buckets are empty; the ratio survives the decay.
    later = fold(folded, settings, 113, {111: (0, 0), 112: (0, 0)})
    assert later.folded == 112
    assert later.base_attempts == pytest.approx(folded.base_attempts * 0.9**100)
    assert later.baseline == pytest.approx(folded.baseline)
    frozen = PostureState(Posture.UNDER_ATTACK, 0.0, 9, 1.0, 10.0)
    assert fold(frozen, settings, 13, {10: (99, 100)}).baseline == frozen.baseline


def test_state_roundtrips_and_garbage_starts_afresh() -> None:
    state = PostureState(Posture.UNDER_ATTACK, 12.5, 42, 0.25, 3.0, 0.1)
    loaded = PostureState.loads(state.dumps())
    assert loaded == state
    assert PostureState.loads("{") is None
    assert PostureState.loads('{"mode": "panic"}') is None
