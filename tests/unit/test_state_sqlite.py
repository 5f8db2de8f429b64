"""The embedded store: migrations, app passwords, users; failures become StateUnavailable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from imapguard.errors import StateUnavailable
from imapguard.state.sqlite import MIGRATIONS, SqliteStore, open_store


def test_schema_is_migrated_and_survives_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sub/state.db"
    store = open_store(url)
    record = store.add_app_password("alice", "phone", b"d" * 32, 10.0)
    store.close()
    store = open_store(url)
    assert store.list_app_passwords("alice") == [record]
    (version,) = (
        sqlite3.connect(tmp_path / "sub" / "state.db").execute("PRAGMA user_version").fetchone()
    )
    assert version == len(MIGRATIONS)
    store.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StateUnavailable, match="newer"):
        SqliteStore(str(tmp_path / "state.db"))


def test_app_password_lifecycle(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    a = store.add_app_password("alice", "phone", b"a" * 32, 1.0)
    b = store.add_app_password("alice", "laptop", b"b" * 32, 2.0)
    assert store.find_app_password("alice", b"a" * 32) == a
    assert store.find_app_password("bob", b"a" * 32) is None
    store.record_app_password_use(a.id, 5.0, "192.0.2.1", "Thunderbird/128")
    used = store.find_app_password("alice", b"a" * 32)
    assert used is not None
    assert (used.last_used_at, used.last_used_address, used.last_used_client) == (
        5.0,
        "192.0.2.1",
        "Thunderbird/128",
    )
    assert store.revoke_app_password("alice", a.id) is True
    assert store.revoke_app_password("alice", a.id) is False
    assert store.revoke_app_password("bob", b.id) is False
    assert [r.id for r in store.list_app_passwords("alice")] == [b.id]
    user = store.get_user("alice")
    assert user is not None
    assert user.app_passwords == 1
    store.record_login("alice", 9.0, "192.0.2.2", "app-password")
    assert store.list_users()[0].last_login_address == "192.0.2.2"
    store.close()


def test_unwritable_database_raises_state_unavailable(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    store.close()
    with pytest.raises(StateUnavailable):
        store.list_users()
