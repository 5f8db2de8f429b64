"""auth/invites.py on the real SQLite store: once only, expiring, digest only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imapguard.auth import invites
from imapguard.state.sqlite import SqliteStore, open_store

KEY = b"i" * 32


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def test_an_invitation_opens_once(store: SqliteStore, tmp_path: Path) -> None:
    token = invites.issue(store, KEY, "alice", 100.0)
    assert len(token) == 43
    assert token.encode() not in (tmp_path / "state.db").read_bytes()
    assert invites.redeem(store, KEY, token, "alice", 200.0)
    assert not invites.redeem(store, KEY, token, "alice", 201.0)


def test_a_redemption_for_another_account_does_not_spend_the_link(store: SqliteStore) -> None:
    token = invites.issue(store, KEY, "alice", 100.0)
    assert not invites.redeem(store, KEY, token, "bob", 200.0)
    assert invites.redeem(store, KEY, token, "alice", 201.0)


def test_an_expired_invitation_is_refused(store: SqliteStore) -> None:
    token = invites.issue(store, KEY, "alice", 100.0, lifetime=60.0)
    assert not invites.redeem(store, KEY, token, "alice", 161.0)


def test_a_token_under_another_key_opens_nothing(store: SqliteStore) -> None:
    token = invites.issue(store, KEY, "alice", 100.0)
    assert not invites.redeem(store, b"j" * 32, token, "alice", 101.0)


@pytest.mark.parametrize("token", ["", "x", "a" * 44, "a" * 42 + "=", "../" + "a" * 40])
def test_what_is_not_a_token_is_not_looked_up(store: SqliteStore, token: str) -> None:
    assert not invites.redeem(store, KEY, token, "alice", 1.0)
