"""The SQLite counter store's own rules: migration 2 -> 3 of an existing
database, the read-only reader, indexed point reads, errors as
StateUnavailable, purging a large backlog. What every counter store does is
tests/conformance/."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from imapguard.defense import Block, CounterStore, Target, TargetKind
from imapguard.errors import StateUnavailable
from imapguard.state.migrations import upgrade
from imapguard.state.sqlite import MIGRATIONS, SqliteStore, open_reader, open_store


def test_migration_from_version_2_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    for migration in MIGRATIONS[:2]:
        db.executescript(migration)
    db.execute("INSERT INTO users(name, created_at) VALUES ('alice', 1.0)")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    upgrade(f"sqlite:///{path}")
    store = open_store(f"sqlite:///{path}")
    (version,) = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()
    assert version == len(MIGRATIONS)
    assert [u.name for u in store.list_users()] == ["alice"]
    store.member_add("s", 1, "a", 100.0)
    assert store.distinct_count(["s"], range(1, 2), 0.0) == 1
    store.close()


def test_the_reader_serves_the_precheck_and_cannot_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    writer = open_store(url)
    reader = open_reader(url)
    try:
        block = Block(Target(TargetKind.FINGERPRINT, "19675.a1b2c3"), "spray", 1, 0.0, 600.0)
        writer.block_put(block)
        writer.value_put("posture", "under_attack", None)
        assert reader.defense_lookup([block.target], ["posture"], 1.0) == (
            [block],
            {"posture": "under_attack"},
        )
        with pytest.raises(StateUnavailable):
            reader.value_put("posture", "normal", None)
    finally:
        reader.close()
        writer.close()


def test_precheck_reads_are_primary_key_lookups(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    db = sqlite3.connect(tmp_path / "state.db")
    try:
        for query in (
            "SELECT kind FROM defense_blocks WHERE key IN (?, ?, ?) AND expires > ?",
            "SELECT value FROM defense_values WHERE name IN (?, ?)"
            " AND (expires IS NULL OR expires > ?)",
            "SELECT 1 FROM defense_members WHERE key = ? AND bucket BETWEEN ? AND ?"
            " AND member = ? AND expires > ?",
        ):
            plan = " ".join(
                row[-1]
                for row in db.execute("EXPLAIN QUERY PLAN " + query, (0,) * query.count("?"))
            )
            assert "USING PRIMARY KEY" in plan, plan
        purge = db.execute(
            "EXPLAIN QUERY PLAN SELECT key FROM defense_blocks WHERE expires <= ? LIMIT ?",
            (0, 1),
        ).fetchall()
        assert "defense_blocks_expires" in " ".join(row[-1] for row in purge)
    finally:
        db.close()
        store.close()


def test_a_dead_store_raises_state_unavailable(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    store.close()
    with pytest.raises(StateUnavailable):
        store.defense_lookup([Target(TargetKind.SOURCE, "x")], ["posture"], 0.0)
    with pytest.raises(StateUnavailable):
        store.member_add("s", 1, "a", 1.0)


def test_sqlite_store_is_a_counter_store(tmp_path: Path) -> None:
    sqlite_store: SqliteStore = open_store(f"sqlite:///{tmp_path}/state.db")
    typed: CounterStore = sqlite_store  # checked by mypy --strict
    assert typed.defense_purge(0.0, 1) == 0
    sqlite_store.close()


def test_maintain_purges_a_backlog_larger_than_one_round(tmp_path: Path) -> None:
    """A sustained attack leaves more expired rows than one purge round removes;
    maintain() keeps going until the backlog is gone."""
    from imapguard.defense import Defense, DefenseSettings, Fingerprinter
    from imapguard.secret import Secret

    store = open_store(f"sqlite:///{tmp_path}/state.db")
    entries = [(f"m:{n}", f"x{n}") for n in range(2_500)]
    store.members_add(entries, 1, 50.0)
    clock = [100.0]
    defense = Defense(
        DefenseSettings(purge_limit=1_000),
        store,
        lambda: clock[0],
        fingerprints=Fingerprinter(Secret(b"k" * 32)),
    )
    defense.maintain()
    remaining = store._read(
        "count", lambda db: db.execute("SELECT COUNT(*) FROM defense_members").fetchone()[0]
    )
    assert remaining == 0
    store.close()
