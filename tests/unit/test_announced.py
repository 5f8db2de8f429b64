"""state/announced.py: the store every writer goes through announces each
revocation it committed, and only those (nothing revoked: no announcement);
everything else is the store's own; a failing close still closes the
announcer's connection. A real SQLite store and a counting announcer; the
Redis announcer between real gateway processes is in
tests/integration/test_cluster_live.py."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import cast

import pytest

from imapguard.state.announced import Announced
from imapguard.state.portal import PortalStore
from imapguard.state.sqlite import open_store


class Counting:
    def __init__(self, store: PortalStore | None = None) -> None:
        self.store = store
        self.announced = 0
        self.seen_committed: list[int] = []

    def announce(self) -> None:
        self.announced += 1
        if self.store is not None:  # what a follower reads when woken
            self.seen_committed.append(self.store.last_revocation())


def test_a_committed_revocation_is_announced_after_its_commit(tmp_path: Path) -> None:
    inner = open_store(f"sqlite:///{tmp_path}/state.db")
    announcer = Counting(inner)
    store: PortalStore = Announced(inner, announcer)
    try:
        record = store.add_app_password("alice", "phone", secrets.token_bytes(32), 1.0)
        assert store.revoke("alice", f"app-password:{record.id}", 2.0)
        # Woken, a follower finds the revocation in the feed already.
        assert announcer.seen_committed == [1]
        assert [r.user for r in store.revocations_after(0, 10)] == ["alice"]
        assert store.publish_revocation("bob", None, 3.0) == 2
        assert announcer.announced == 2
    finally:
        store.close()


def test_nothing_revoked_is_not_announced(tmp_path: Path) -> None:
    announcer = Counting()
    store: PortalStore = Announced(open_store(f"sqlite:///{tmp_path}/state.db"), announcer)
    try:
        assert not store.revoke("nobody", None, 1.0)
        assert not store.revoke("alice", "app-password:does-not-exist", 1.0)
        assert announcer.announced == 0
        assert store.last_revocation() == 0
    finally:
        store.close()


class BrokenClose:
    def close(self) -> None:
        raise RuntimeError("store close failed")


def test_close_closes_the_announcer_even_when_the_store_fails_to() -> None:
    closed: list[str] = []
    store = Announced(
        cast(PortalStore, BrokenClose()), Counting(), on_close=lambda: closed.append("announcer")
    )
    with pytest.raises(RuntimeError):
        store.close()
    assert closed == ["announcer"]
