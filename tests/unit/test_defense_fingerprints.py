"""Password fingerprints: keyed, truncated, per account or login-free with a
daily key; spray detection and blocks across the key rotation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from imapguard.defense import Action, Fingerprinter, SprayDetected, Target, TargetKind
from imapguard.secret import Secret
from tests.unit.test_defense_support import KEY, STORES, T0, Factory, harnesses

DAY = 86400.0
BOUNDARY = math.ceil(T0 / DAY) * DAY  # the next fingerprint epoch starts here


@pytest.fixture(params=STORES)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    with harnesses(request.param, tmp_path) as factory:
        yield factory


def test_account_fingerprint_is_keyed_truncated_and_bound_to_the_account() -> None:
    fp = Fingerprinter(KEY)
    password = Secret("correct horse")
    one = fp.account("alice", password)
    assert len(one) == 4  # 16 bits
    assert int(one, 16) >= 0
    assert fp.account("alice", Secret("correct horse")) == one
    assert fp.account("bob", password) != one  # links nothing across accounts
    assert fp.account("alice", Secret("correct horsf")) != one
    assert (
        Fingerprinter(Secret(b"another-server-key-of-32-bytes!!!")).account("alice", password)
        != one
    )
    # "al" + "\0ice..." cannot pose as "ali" + "ce...": the separator is a NUL.
    assert fp.account("al", Secret("ice")) != fp.account("ali", Secret("ce"))


def test_spray_fingerprint_is_login_free_and_rotates_daily() -> None:
    fp = Fingerprinter(KEY)
    password = Secret("Summer2024!")
    current, previous = fp.spray(password, BOUNDARY - 1)
    epoch = int(BOUNDARY // DAY) - 1
    assert current.startswith(f"{epoch}.")
    assert previous.startswith(f"{epoch - 1}.")
    assert len(current.partition(".")[2]) == 6  # 24 bits
    assert fp.spray(Secret("Summer2024!"), BOUNDARY - 5000) == (current, previous)
    # After the rotation, yesterday's current is today's previous.
    today, yesterday = fp.spray(password, BOUNDARY + 1)
    assert yesterday == current
    assert today != current
    # Two days on, nothing links to the old value any more.
    assert current not in fp.spray(password, BOUNDARY + DAY + 1)
    assert fp.spray(Secret("Winter2024!"), BOUNDARY - 1)[0] != current


def test_a_spray_spanning_the_rotation_is_still_detected(make: Factory) -> None:
    h = make()
    h.clock.now = BOUNDARY - 600
    for i in range(3):
        h.login(f"198.51.{i}.7", f"user{i}", "Summer2024!", ok=False)
    h.clock.now = BOUNDARY + 600  # a new fingerprint key
    for i in range(3, 5):
        h.login(f"198.51.{i}.7", f"user{i}", "Summer2024!", ok=False)
    (alert,) = h.of(SprayDetected)
    assert alert.accounts == 5
    today = Fingerprinter(KEY).spray(Secret("Summer2024!"), h.clock.now)[0]
    assert alert.key == today
    assert Target(TargetKind.FINGERPRINT, today) in {b.target for b in h.defense.blocks()}
    assert h.login("192.0.2.9", "user9", "Summer2024!", ok=False).action is Action.BLOCKED


def test_a_block_placed_before_the_rotation_holds_after_it(make: Factory) -> None:
    h = make()
    h.clock.now = BOUNDARY - 120
    for i in range(5):
        h.login(f"198.51.{i}.7", f"user{i}", "Summer2024!", ok=False)
    (alert,) = h.of(SprayDetected)
    h.clock.now = BOUNDARY + 60  # the block (600 s) outlives the epoch it was keyed in
    verdict = h.login("192.0.2.9", "user9", "Summer2024!", ok=False)
    assert verdict.target == Target(TargetKind.FINGERPRINT, alert.key)
