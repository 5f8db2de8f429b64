"""What every CounterStore does (imapguard.defense.counters): bucket windows,
the atomic check-and-increment, distinct counts, expiry and purge, blocks,
values and their compare-and-set, batches; and that a second handle on the
same state (another gateway node) sees it all. Concurrent writers:
test_concurrent_writers.py."""

from __future__ import annotations

from imapguard.defense import Block, CounterStore, Target, TargetKind
from tests.conformance.conftest import Backend


def test_bucket_counters_sum_over_a_window(counters: CounterStore) -> None:
    assert counters.bucket_incr("k", 10, 1, 100.0, 0.0) == 1
    assert counters.bucket_incr("k", 10, 2, 100.0, 0.0) == 3
    counters.bucket_incr("k", 12, 5, 100.0, 0.0)
    counters.bucket_incr("other", 11, 7, 100.0, 0.0)
    assert counters.bucket_counts("k", range(9, 13), 0.0) == [0, 3, 0, 5]
    assert counters.bucket_counts("k", range(11, 13), 0.0) == [0, 5]  # bucket 10 slid out


def test_an_expired_counter_is_unseen_and_restarts(counters: CounterStore) -> None:
    counters.bucket_incr("o", 0, 4, 50.0, 0.0)
    assert counters.bucket_counts("o", range(0, 1), 49.0) == [4]
    assert counters.bucket_counts("o", range(0, 1), 50.0) == [0]  # not purged, not seen
    assert counters.bucket_incr("o", 0, 1, 200.0, 60.0) == 1


def test_distinct_members_over_buckets_and_keys(counters: CounterStore) -> None:
    for bucket, member in ((1, "a"), (1, "b"), (2, "a"), (3, "c")):
        counters.member_add("s", bucket, member, 100.0)
    counters.member_add("t", 2, "d", 100.0)
    assert counters.distinct_count(["s"], range(1, 4), 0.0) == 3  # "a" twice is one
    assert counters.distinct_count(["s"], range(2, 4), 0.0) == 2
    assert counters.distinct_count(["s", "t"], range(1, 4), 0.0) == 4
    assert counters.distinct_count(["s", "t"], range(1, 4), 0.0, limit=2) == 2
    assert counters.distinct_members(["s", "t"], range(1, 4), 0.0, 10) == ["a", "b", "c", "d"]
    assert counters.distinct_members(["s"], range(1, 4), 0.0, 2) == ["a", "b"]
    assert counters.member_seen("s", range(2, 4), "a", 0.0)
    assert not counters.member_seen("s", range(2, 4), "b", 0.0)
    assert counters.distinct_count(["s"], range(1, 4), 100.0) == 0  # expired
    counters.buckets_forget(["s"], range(1, 3))
    assert counters.distinct_members(["s", "t"], range(1, 4), 0.0, 10) == ["c", "d"]


def test_blocks_put_get_list_delete(counters: CounterStore) -> None:
    source = Block(Target(TargetKind.SOURCE, "192.0.2.1"), "spray", 1, 0.0, 600.0)
    account = Block(Target(TargetKind.ACCOUNT_UNFAMILIAR, "alice"), "lockout", 2, 0.0, 300.0)
    counters.block_put(source)
    counters.block_put(account)
    assert counters.blocks_list(0.0) == [account, source]  # soonest expiry first
    wanted = [source.target, Target(TargetKind.SOURCE, "192.0.2.2")]
    assert counters.blocks_get(wanted, 0.0) == [source]
    assert counters.blocks_list(300.0) == [source]  # expired ones are gone from view
    longer = Block(source.target, "again", 2, 10.0, 1200.0)
    counters.block_put(longer)
    assert counters.blocks_get([source.target], 0.0) == [longer]
    assert counters.block_delete(source.target)
    assert not counters.block_delete(source.target)


def test_values_and_compare_and_set(counters: CounterStore) -> None:
    counters.value_put("a", "1", 100.0)
    counters.value_put("forever", "x", None)
    assert counters.values_get(["a", "forever", "missing"], 0.0) == {"a": "1", "forever": "x"}
    assert counters.values_get(["a"], 100.0) == {}
    assert counters.value_swap("new", None, "v1", None, 0.0)
    assert not counters.value_swap("new", None, "v2", None, 0.0)
    assert not counters.value_swap("new", "stale", "v2", None, 0.0)
    assert counters.value_swap("new", "v1", "v2", None, 0.0)
    assert counters.value_swap("a", None, "again", None, 100.0)  # expired counts as absent
    counters.values_delete(["new", "forever"])
    blocks, values = counters.defense_lookup(
        [Target(TargetKind.SOURCE, "192.0.2.1")], ["a", "new"], 0.0
    )
    assert (blocks, values) == ([], {"a": "again"})


def test_purge_removes_what_expired_in_bounded_runs(counters: CounterStore) -> None:
    for i in range(5):
        counters.member_add("s", i, "m", 10.0)
        counters.bucket_incr("c", i, 1, 10.0, 0.0)
    counters.block_put(Block(Target(TargetKind.SOURCE, "x"), "r", 1, 0.0, 10.0))
    counters.value_put("v", "1", 10.0)
    counters.value_put("keep", "1", None)
    counters.member_add("s", 9, "live", 20.0)
    assert counters.defense_purge(9.0, 100) == 0
    assert counters.defense_purge(10.0, 2) == 2 + 2 + 1 + 1  # at most 2 rows per kind
    assert counters.defense_purge(10.0, 100) == 6
    assert counters.defense_purge(10.0, 100) == 0
    assert counters.distinct_members(["s"], range(0, 10), 10.0, 10) == ["live"]
    assert counters.values_get(["keep"], 10.0) == {"keep": "1"}


def test_batch_reads_its_own_writes(counters: CounterStore) -> None:
    with counters.batch():
        counters.member_add("s", 1, "a", 100.0)
        assert counters.distinct_count(["s"], range(1, 2), 0.0) == 1
        assert counters.value_swap("v", None, "1", None, 0.0)
        assert counters.values_get(["v"], 0.0) == {"v": "1"}


def test_bucket_incr_returns_each_new_value(counters: CounterStore) -> None:
    assert [counters.bucket_incr("n", 1, 1, 100.0, 0.0) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert counters.bucket_incr("n", 1, 10, 100.0, 0.0) == 15
    assert counters.bucket_incr("n", 2, 1, 100.0, 0.0) == 1  # another bucket, its own count
    assert counters.bucket_counts("n", range(1, 3), 0.0) == [15, 1]


def test_bucket_incr_moves_the_expiry(counters: CounterStore) -> None:
    counters.bucket_incr("e", 0, 1, 50.0, 0.0)
    counters.bucket_incr("e", 0, 1, 80.0, 10.0)
    assert counters.bucket_counts("e", range(0, 1), 60.0) == [2]  # kept past 50
    assert counters.bucket_counts("e", range(0, 1), 80.0) == [0]
    assert counters.defense_purge(80.0, 100) == 1


def test_an_expired_member_is_unseen_until_added_again(counters: CounterStore) -> None:
    counters.member_add("s", 1, "a", 50.0)
    assert counters.member_seen("s", range(1, 2), "a", 49.0)
    assert not counters.member_seen("s", range(1, 2), "a", 50.0)
    assert counters.distinct_members(["s"], range(1, 2), 50.0, 10) == []
    assert counters.distinct_counts(["s", "none"], range(1, 2), 49.0) == {"s": 1, "none": 0}
    assert counters.distinct_counts(["s"], range(1, 2), 50.0) == {"s": 0}
    counters.member_add("s", 1, "a", 200.0)
    assert counters.member_seen("s", range(1, 2), "a", 150.0)


def test_members_add_is_member_add_for_each(counters: CounterStore) -> None:
    counters.members_add([("x", "1"), ("y", "1"), ("x", "2")], 4, 100.0)
    assert counters.distinct_counts(["x", "y"], range(4, 5), 0.0) == {"x": 2, "y": 1}
    assert counters.member_seen("y", range(3, 5), "1", 0.0)
    assert not counters.member_seen("y", range(3, 5), "2", 0.0)


def test_an_expired_block_stops_nothing(counters: CounterStore) -> None:
    block = Block(Target(TargetKind.NETWORK, "192.0.2.0/24"), "spray", 1, 0.0, 60.0)
    counters.block_put(block)
    assert counters.blocks_get([block.target], 59.0) == [block]
    assert counters.blocks_get([block.target], 60.0) == []
    assert counters.defense_lookup([block.target], [], 60.0) == ([], {})
    assert counters.blocks_list(60.0) == []
    # A shorter block replaces a longer one: the last word counts.
    counters.block_put(Block(block.target, "spray", 1, 0.0, 600.0))
    counters.block_put(Block(block.target, "manual", 1, 1.0, 30.0))
    assert [b.reason for b in counters.blocks_get([block.target], 29.0)] == ["manual"]
    assert counters.blocks_get([block.target], 30.0) == []
    assert counters.block_delete(block.target)  # expired or not, it was there


def test_a_second_handle_sees_the_same_state(counter_backend: Backend[CounterStore]) -> None:
    """Two handles (two gateway nodes) on one store read each other's writes."""
    one, two = counter_backend.open(), counter_backend.open()
    one.bucket_incr("k", 1, 2, 100.0, 0.0)
    assert two.bucket_incr("k", 1, 3, 100.0, 0.0) == 5
    assert one.bucket_counts("k", range(1, 2), 0.0) == [5]
    block = Block(Target(TargetKind.SOURCE, "192.0.2.9"), "r", 1, 0.0, 100.0)
    one.block_put(block)
    one.member_add("s", 1, "m", 100.0)
    assert two.value_swap("v", None, "1", None, 0.0)
    assert not one.value_swap("v", None, "2", None, 0.0)
    assert two.defense_lookup([block.target], ["v"], 0.0) == ([block], {"v": "1"})
    assert two.member_seen("s", range(1, 2), "m", 0.0)
    assert two.block_delete(block.target)
    assert one.blocks_get([block.target], 0.0) == []
