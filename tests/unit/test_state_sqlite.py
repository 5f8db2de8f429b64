"""The SQLite store's own rules: schema migrations and versions, the notices
table kept small. What every account store does is tests/conformance/."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from imapguard.errors import StateUnavailable
from imapguard.state.migrations import upgrade
from imapguard.state.sqlite import MIGRATIONS, SqliteStore, open_store
from imapguard.state.sqlite.schema import check_version, migrate


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


def test_notice_rows_are_purged_once_they_limit_nothing(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    for i in range(100):
        assert store.claim_notice(f"made-up-{i}", "lockout", 10.0, 3600)
    assert store.claim_notice("alice", "lockout", 4000.0, 3600)
    (rows,) = store._db.execute("SELECT COUNT(*) FROM notices").fetchone()
    assert rows == 1
    store.close()


def test_two_first_opens_at_once_migrate_the_file_once(tmp_path: Path) -> None:
    """Two processes opening a new state file at once (the gateway and the CLI)
    both read schema version 0; the second to take the write lock finds the
    schema migrated and must not create the tables again."""
    url = f"sqlite:///{tmp_path}/state.db"
    db = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    opened: list[int] = []

    def other_process_first(statement: str) -> None:
        if statement == "BEGIN IMMEDIATE" and not opened:
            other = open_store(url)  # migrates the whole schema meanwhile
            opened.append(len(other.list_users()))
            other.close()

    db.set_trace_callback(other_process_first)
    migrate(db)
    db.set_trace_callback(None)
    assert opened == [0]
    assert check_version(db) == len(MIGRATIONS)
    db.close()
    store = open_store(url)
    assert store.list_users() == []
    store.close()


def test_a_version_4_database_gains_the_portal_tables(tmp_path: Path) -> None:
    """A file written before the portal (schema 4) is upgraded (`imapguard db
    upgrade`) with its records kept and the portal's tables (schema 5) added."""
    path = tmp_path / "state.db"
    db = sqlite3.connect(path, isolation_level=None)
    for number, migration in enumerate(MIGRATIONS[:4]):
        db.executescript(migration)
        db.execute(f"PRAGMA user_version = {number + 1}")
    db.execute("INSERT INTO users(name, created_at) VALUES ('alice', 1.0)")
    db.close()
    upgrade(f"sqlite:///{path}")
    store = open_store(f"sqlite:///{path}")
    assert [u.name for u in store.list_users()] == ["alice"]
    assert check_version(store._db) == len(MIGRATIONS)
    store.add_invite("alice", b"i" * 32, 2.0, 100.0)
    assert store.use_invite(b"i" * 32, "alice", 3.0)
    assert store.publish_revocation("alice", None, 4.0) == 1
    store.close()
