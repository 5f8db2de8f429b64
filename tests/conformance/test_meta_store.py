"""The store's own values (`MetaStore`): where the server key's check value is
kept. A value is written once and never replaced, so two nodes started at once
with different key files cannot both record theirs: whoever is second is told
its key is wrong (imapguard.state.keycheck)."""

from __future__ import annotations

from typing import Any

import pytest

from imapguard.state.accounts import AccountStore
from tests.conformance import racers
from tests.conformance.conftest import Backend
from tests.conformance.test_concurrent_writers import Sharing, race_processes, race_threads


def test_a_value_is_absent_until_claimed(accounts: AccountStore) -> None:
    assert accounts.get_meta("server-key-check") is None
    assert accounts.claim_meta("server-key-check", b"first") == b"first"
    assert accounts.get_meta("server-key-check") == b"first"


def test_the_first_claim_wins_and_is_never_replaced(accounts: AccountStore) -> None:
    accounts.claim_meta("server-key-check", b"first")
    assert accounts.claim_meta("server-key-check", b"second") == b"first"
    assert accounts.get_meta("server-key-check") == b"first"
    assert accounts.claim_meta("other", b"x") == b"x"  # names are separate


def test_a_second_handle_sees_the_claim(account_backend: Backend[AccountStore]) -> None:
    one, two = account_backend.open(), account_backend.open()
    one.claim_meta("server-key-check", b"first")
    assert two.claim_meta("server-key-check", b"second") == b"first"


def test_any_totp_finds_a_sealed_secret_when_there_is_one(accounts: AccountStore) -> None:
    assert accounts.any_totp() is None
    accounts.ensure_user("bob", 1.0)
    assert accounts.any_totp() is None
    accounts.set_totp("alice", b"sealed", 2.0)
    record = accounts.any_totp()
    assert record is not None
    assert (record.user, record.sealed) == ("alice", b"sealed")


def _one_value_per_round(results: list[list[Any]]) -> None:
    for round_ in zip(*results, strict=True):
        assert len(set(round_)) == 1, round_


@pytest.mark.parametrize("sharing", ["one handle", "a handle each"])
def test_threads_claiming_at_once_agree_on_one_value(
    account_backend: Backend[AccountStore], sharing: Sharing
) -> None:
    _one_value_per_round(race_threads(account_backend, sharing, racers.claim_meta))


def test_processes_claiming_at_once_agree_on_one_value(
    shared_account_backend: Backend[AccountStore],
) -> None:
    _one_value_per_round(race_processes(shared_account_backend, racers.claim_meta))
