"""Counter store semantics (SQLite, and the in-memory twin the engine tests
also use): bucket windows, distinct counts, expiry and purge, blocks, values;
and the SQLite specifics: migration 2 -> 3 of an existing database, the
read-only reader, indexed point reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from imapguard.defense import Block, CounterStore, MemoryCounterStore, Target, TargetKind
from imapguard.errors import StateUnavailable
from imapguard.state.sqlite import MIGRATIONS, SqliteStore, open_reader, open_store


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CounterStore]:
    if request.param == "memory":
        yield MemoryCounterStore()
        return
    sqlite_store = open_store(f"sqlite:///{tmp_path}/state.db")
    yield sqlite_store
    sqlite_store.close()


def test_bucket_counters_sum_over_a_window(store: CounterStore) -> None:
    assert store.bucket_incr("k", 10, 1, 100.0, 0.0) == 1
    assert store.bucket_incr("k", 10, 2, 100.0, 0.0) == 3
    store.bucket_incr("k", 12, 5, 100.0, 0.0)
    store.bucket_incr("other", 11, 7, 100.0, 0.0)
    assert store.bucket_counts("k", range(9, 13), 0.0) == [0, 3, 0, 5]
    assert store.bucket_counts("k", range(11, 13), 0.0) == [0, 5]  # bucket 10 slid out


def test_an_expired_counter_is_unseen_and_restarts(store: CounterStore) -> None:
    store.bucket_incr("o", 0, 4, 50.0, 0.0)
    assert store.bucket_counts("o", range(0, 1), 49.0) == [4]
    assert store.bucket_counts("o", range(0, 1), 50.0) == [0]  # not purged, not seen
    assert store.bucket_incr("o", 0, 1, 200.0, 60.0) == 1


def test_distinct_members_over_buckets_and_keys(store: CounterStore) -> None:
    for bucket, member in ((1, "a"), (1, "b"), (2, "a"), (3, "c")):
        store.member_add("s", bucket, member, 100.0)
    store.member_add("t", 2, "d", 100.0)
    assert store.distinct_count(["s"], range(1, 4), 0.0) == 3  # "a" twice is one
    assert store.distinct_count(["s"], range(2, 4), 0.0) == 2
    assert store.distinct_count(["s", "t"], range(1, 4), 0.0) == 4
    assert store.distinct_count(["s", "t"], range(1, 4), 0.0, limit=2) == 2
    assert store.distinct_members(["s", "t"], range(1, 4), 0.0, 10) == ["a", "b", "c", "d"]
    assert store.distinct_members(["s"], range(1, 4), 0.0, 2) == ["a", "b"]
    assert store.member_seen("s", range(2, 4), "a", 0.0)
    assert not store.member_seen("s", range(2, 4), "b", 0.0)
    assert store.distinct_count(["s"], range(1, 4), 100.0) == 0  # expired
    store.buckets_forget(["s"], range(1, 3))
    assert store.distinct_members(["s", "t"], range(1, 4), 0.0, 10) == ["c", "d"]


def test_blocks_put_get_list_delete(store: CounterStore) -> None:
    source = Block(Target(TargetKind.SOURCE, "192.0.2.1"), "spray", 1, 0.0, 600.0)
    account = Block(Target(TargetKind.ACCOUNT_UNFAMILIAR, "alice"), "lockout", 2, 0.0, 300.0)
    store.block_put(source)
    store.block_put(account)
    assert store.blocks_list(0.0) == [account, source]  # soonest expiry first
    wanted = [source.target, Target(TargetKind.SOURCE, "192.0.2.2")]
    assert store.blocks_get(wanted, 0.0) == [source]
    assert store.blocks_list(300.0) == [source]  # expired ones are gone from view
    longer = Block(source.target, "again", 2, 10.0, 1200.0)
    store.block_put(longer)
    assert store.blocks_get([source.target], 0.0) == [longer]
    assert store.block_delete(source.target)
    assert not store.block_delete(source.target)


def test_values_and_compare_and_set(store: CounterStore) -> None:
    store.value_put("a", "1", 100.0)
    store.value_put("forever", "x", None)
    assert store.values_get(["a", "forever", "missing"], 0.0) == {"a": "1", "forever": "x"}
    assert store.values_get(["a"], 100.0) == {}
    assert store.value_swap("new", None, "v1", None, 0.0)
    assert not store.value_swap("new", None, "v2", None, 0.0)
    assert not store.value_swap("new", "stale", "v2", None, 0.0)
    assert store.value_swap("new", "v1", "v2", None, 0.0)
    assert store.value_swap("a", None, "again", None, 100.0)  # expired counts as absent
    store.values_delete(["new", "forever"])
    blocks, values = store.defense_lookup(
        [Target(TargetKind.SOURCE, "192.0.2.1")], ["a", "new"], 0.0
    )
    assert (blocks, values) == ([], {"a": "again"})


def test_purge_removes_what_expired_in_bounded_runs(store: CounterStore) -> None:
    for i in range(5):
        store.member_add("s", i, "m", 10.0)
        store.bucket_incr("c", i, 1, 10.0, 0.0)
    store.block_put(Block(Target(TargetKind.SOURCE, "x"), "r", 1, 0.0, 10.0))
    store.value_put("v", "1", 10.0)
    store.value_put("keep", "1", None)
    store.member_add("s", 9, "live", 20.0)
    assert store.defense_purge(9.0, 100) == 0
    assert store.defense_purge(10.0, 2) == 2 + 2 + 1 + 1  # at most 2 rows per kind
    assert store.defense_purge(10.0, 100) == 6
    assert store.defense_purge(10.0, 100) == 0
    assert store.distinct_members(["s"], range(0, 10), 10.0, 10) == ["live"]
    assert store.values_get(["keep"], 10.0) == {"keep": "1"}


def test_batch_reads_its_own_writes(store: CounterStore) -> None:
    with store.batch():
        store.member_add("s", 1, "a", 100.0)
        assert store.distinct_count(["s"], range(1, 2), 0.0) == 1
        assert store.value_swap("v", None, "1", None, 0.0)
        assert store.values_get(["v"], 0.0) == {"v": "1"}


# -- SQLite specifics --------------------------------------------------------------


def test_migration_from_version_2_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    for migration in MIGRATIONS[:2]:
        db.executescript(migration)
    db.execute("INSERT INTO users(name, created_at) VALUES ('alice', 1.0)")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
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
