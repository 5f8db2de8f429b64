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


def test_device_lifecycle_and_pending_cap(tmp_path: Path) -> None:
    from imapguard.state.sqlite import MAX_PENDING_DEVICES, DeviceKey

    store = open_store(f"sqlite:///{tmp_path}/state.db")
    key = DeviceKey("alice", "192.0.2.0/24", "Thunderbird", "115")
    pending = store.add_pending_device(key, 1.0, "192.0.2.5")
    assert (pending.status, pending.trusted_at(1.0)) == ("pending", False)
    assert store.add_pending_device(key, 2.0, "192.0.2.6").id == pending.id  # one per device
    assert store.approve_device("alice", pending.id, until=100.0)
    approved = store.get_device("alice", pending.id)
    assert approved is not None
    assert (approved.trusted_at(99.0), approved.trusted_at(100.0)) == (True, False)
    # Whoever has the password cannot grow the table: the newest pending ones stay.
    for n in range(MAX_PENDING_DEVICES + 5):
        store.add_pending_device(
            DeviceKey("alice", f"10.{n}.0.0/24", "x", ""), 10.0 + n, "10.0.0.1"
        )
    devices = store.list_devices("alice")
    pending_networks = [d.network for d in devices if d.status == "pending"]
    assert len(pending_networks) == MAX_PENDING_DEVICES
    assert "10.0.0.0/24" not in pending_networks
    assert f"10.{MAX_PENDING_DEVICES + 4}.0.0/24" in pending_networks
    assert store.get_device("alice", pending.id) is not None  # trusted ones are kept
    assert store.revoke_device("alice", pending.id)
    assert not store.revoke_device("alice", pending.id)
    store.close()


def test_totp_step_is_taken_once_and_failures_lock(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    store.set_totp("alice", b"sealed", 1.0)
    assert store.use_totp_step("alice", 100)
    assert not store.use_totp_step("alice", 100)
    assert not store.use_totp_step("alice", 99)
    assert store.use_totp_step("alice", 101)
    assert [store.record_totp_failure("alice", 10.0 + i, 60, 3, 900) for i in range(3)] == [
        False,
        False,
        True,
    ]
    record = store.get_totp("alice")
    assert record is not None
    assert record.locked_until == 12.0 + 900
    assert store.clear_totp_lock("alice")
    assert store.claim_notice("alice", "new_device", 5.0, 3600)
    assert not store.claim_notice("alice", "new_device", 10.0, 3600)
    assert store.claim_notice("alice", "lockout", 10.0, 3600)
    assert store.claim_notice("alice", "new_device", 3605.0, 3600)
    store.close()


def test_notice_rows_are_purged_once_they_limit_nothing(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    for i in range(100):
        assert store.claim_notice(f"made-up-{i}", "lockout", 10.0, 3600)
    assert store.claim_notice("alice", "lockout", 4000.0, 3600)
    (rows,) = store._db.execute("SELECT COUNT(*) FROM notices").fetchone()
    assert rows == 1
    store.close()
