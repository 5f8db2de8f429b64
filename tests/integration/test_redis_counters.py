"""The Redis counter store against a real `redis-server` (tests/redis_server.py):
a dead or hung Redis fails a call fast and the store recovers by itself; a
wrong password, a wrong certificate authority and an inline password are
refused without repeating a secret; TLS and Sentinel find the server; every
key is under the prefix and expires; `blocks list/clear` act on Redis. The
whole CounterStore behaviour, and processes racing one counter, run on Redis
in tests/conformance/."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import trustme

from imapguard.cli import main
from imapguard.config.state import StateConfig
from imapguard.defense.counters import Block, Target, TargetKind
from imapguard.errors import ConfigError, StateUnavailable
from imapguard.state.redis import open_counters
from imapguard.state.redis.connect import COMMAND_TIMEOUT, CONNECT_TIMEOUT
from imapguard.state.redis.counters import RedisCounterStore
from tests.redis_server import (
    RedisServer,
    SentinelServer,
    counters_address,
    mtls_redis_server,  # noqa: F401 (fixture)
    open_redis_counters,
    redis_server,  # noqa: F401 (fixture)
    sentinel,  # noqa: F401 (fixture)
    tls_redis_server,  # noqa: F401 (fixture)
)

# What a call may take against a Redis that is gone or hung: the connect and
# command timeouts and a little room for a loaded machine.
BOUND = CONNECT_TIMEOUT + COMMAND_TIMEOUT + 1.0


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisCounterStore]:  # noqa: F811
    counters = open_counters(redis_server.state())
    yield counters
    counters.close()


def _fails_fast(store: RedisCounterStore) -> float:
    """Seconds until a login's precheck read gives StateUnavailable."""
    start = time.monotonic()
    with pytest.raises(StateUnavailable) as caught:
        store.defense_lookup([Target(TargetKind.SOURCE, "192.0.2.1")], ["posture"], time.time())
    assert caught.value.operation == "defense lookup"
    return time.monotonic() - start


def test_a_stopped_redis_fails_fast_and_the_store_recovers_when_it_returns(
    redis_server: RedisServer,  # noqa: F811
    store: RedisCounterStore,
) -> None:
    now = time.time()
    assert store.bucket_incr("k", 1, 1, now + 60, now) == 1
    redis_server.stop()
    assert _fails_fast(store) < BOUND
    with pytest.raises(StateUnavailable):
        store.bucket_incr("k", 1, 1, now + 60, now)
    redis_server.start()  # the same port, empty (no persistence)
    # The same handle, no reopening: the pool's dead connections are replaced.
    assert store.bucket_incr("k", 1, 1, now + 60, now) == 1
    assert store.defense_lookup([], ["posture"], now) == ([], {})


def test_a_hung_redis_costs_a_call_at_most_the_timeouts(
    redis_server: RedisServer,  # noqa: F811
    store: RedisCounterStore,
) -> None:
    store.ping()  # a pooled connection, then Redis stops answering on it
    assert redis_server.process is not None
    pid = redis_server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        elapsed = _fails_fast(store)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert COMMAND_TIMEOUT * 0.9 <= elapsed < BOUND
    assert store.value_swap("v", None, "1", None, time.time())


def test_a_wrong_password_is_refused_without_showing_it(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password-8f3a\n")
    wrong.chmod(0o600)
    store = open_counters(redis_server.state(counters_password_file=str(wrong)))
    with pytest.raises(StateUnavailable) as caught:
        store.blocks_list(time.time())
    assert "not-the-password-8f3a" not in str(caught.value)
    assert redis_server.password not in str(caught.value)
    store.close()


def test_a_password_in_the_url_is_refused_and_not_repeated() -> None:
    with pytest.raises(ConfigError) as caught:
        StateConfig.checked(counters_url="redis://imapguard:s3cret-in-url@127.0.0.1:6379/0")
    assert caught.value.problems == [
        ("state.counters_url", "no password in the URL: put it in state.counters_password_file")
    ]
    assert "s3cret-in-url" not in str(caught.value)


def test_rediss_verifies_the_server_against_the_configured_ca(
    tls_redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = open_counters(tls_redis_server.state())
    block = Block(Target(TargetKind.SOURCE, "192.0.2.7"), "spray", 1, 0.0, time.time() + 60)
    store.block_put(block)
    assert store.blocks_get([block.target], time.time()) == [block]
    store.close()
    # A Redis whose certificate another CA signed (a man in the middle) is refused.
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    stranger = open_counters(tls_redis_server.state(counters_ca_file=str(other)))
    with pytest.raises(StateUnavailable, match="certificate verify failed"):
        stranger.blocks_get([block.target], time.time())
    stranger.close()


def test_a_redis_asking_for_a_client_certificate_gets_the_configured_one(
    mtls_redis_server: RedisServer,  # noqa: F811
) -> None:
    now = time.time()
    without = open_counters(mtls_redis_server.state())
    with pytest.raises(StateUnavailable):
        without.values_get(["v"], now)
    without.close()
    pem, key = mtls_redis_server.issue_client_cert("gateway-node")
    store = open_counters(
        mtls_redis_server.state(counters_cert_file=str(pem), counters_key_file=str(key))
    )
    assert store.value_swap("v", None, "1", None, now)
    assert store.values_get(["v"], now) == {"v": "1"}
    store.close()


def test_the_sentinel_url_finds_the_master(
    redis_server: RedisServer,  # noqa: F811
    sentinel: SentinelServer,  # noqa: F811
) -> None:
    store = open_counters(redis_server.state(counters_url=sentinel.url))
    now = time.time()
    assert store.bucket_incr("via-sentinel", 3, 2, now + 60, now) == 2
    store.close()
    # It landed on the master the Sentinel watches.
    direct = open_counters(redis_server.state())
    assert direct.bucket_counts("via-sentinel", range(3, 4), now) == [2]
    direct.close()


def test_a_loopback_sentinel_naming_a_master_on_another_host_is_not_followed(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """redis+sentinel:// without TLS: the Sentinel is on loopback, but a master
    it names elsewhere would get the password and the defense's answers in
    plain text: no connection is made, the call fails closed saying why."""
    watcher = SentinelServer.create(tmp_path / "sentinel", redis_server)
    conf = watcher.base / "sentinel.conf"
    # A master at a documentation address (RFC 5737), down only after a minute.
    conf.write_text(
        conf.read_text()
        .replace(f"127.0.0.1 {redis_server.port} 1", "192.0.2.10 6379 1")
        .replace("down-after-milliseconds svc 1000", "down-after-milliseconds svc 60000")
    )
    watcher.start()
    try:
        store = open_counters(redis_server.state(counters_url=watcher.url))
        with pytest.raises(StateUnavailable, match="a master on another host"):
            store.defense_lookup([Target(TargetKind.SOURCE, "192.0.2.1")], ["posture"], time.time())
        store.close()
    finally:
        watcher.stop()


def test_after_a_failover_the_sentinel_url_follows_the_new_master(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    replica = RedisServer.create(tmp_path / "replica", replica_of=redis_server)
    replica.start()
    watcher = SentinelServer.create(tmp_path / "sentinel", redis_server)
    watcher.start()
    try:
        store = open_counters(redis_server.state(counters_url=watcher.url))
        now = time.time()
        block = Block(Target(TargetKind.SOURCE, "192.0.2.8"), "spray", 1, now, now + 600)
        store.block_put(block)
        replicated = replica.client()
        deadline = time.monotonic() + 30
        while not replicated.exists("imapguard:b:source:192.0.2.8"):
            assert time.monotonic() < deadline, "the replica never got the block"
            time.sleep(0.1)
        # Straight to the replica (not through the Sentinel), a write is READONLY.
        on_replica = open_counters(replica.state())
        with pytest.raises(StateUnavailable, match="ReadOnlyError"):
            on_replica.bucket_incr("k", 1, 1, now + 60, now)
        on_replica.close()
        redis_server.stop()  # the master dies; the Sentinel promotes the replica
        deadline = time.monotonic() + 60
        while True:
            try:
                assert store.blocks_get([block.target], time.time()) == [block]
                break
            except StateUnavailable:
                assert time.monotonic() < deadline, "no new master within 60 s"
                time.sleep(0.5)
        # The same handle writes to the new master.
        assert store.bucket_incr("after-failover", 1, 1, now + 60, now) == 1
        assert replicated.info("replication")["role"] == "master"
        replicated.close()
        store.close()
    finally:
        watcher.stop()
        replica.stop()


def test_every_key_is_under_the_prefix_and_expires(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    store = open_counters(redis_server.state(counters_prefix="node-test:"))
    now = time.time()
    store.bucket_incr("fail:src:192.0.2.1", 10, 1, now + 60, now)
    store.members_add([("acc:192.0.2.1", "alice"), ("acc:192.0.2.1", "bob")], 10, now + 60)
    store.block_put(Block(Target(TargetKind.SOURCE, "192.0.2.1"), "r", 1, now, now + 600))
    store.value_put("fam:alice|192.0.2.0/24", "1", now + 86400)
    assert store.value_swap("posture-state", None, "{}", None, now)  # no expiry: the posture's
    assert store.distinct_count(["acc:192.0.2.1"], range(10, 11), now) == 2
    client = redis_server.client()
    keys = sorted(client.scan_iter("*"))
    assert keys == [
        "node-test:b:source:192.0.2.1",
        "node-test:c:fail:src:192.0.2.1:10",
        *(f"node-test:i:{kind}" for kind in "bcsv"),  # the purge's expiry indexes
        "node-test:s:acc:192.0.2.1:10",
        "node-test:v:fam:alice|192.0.2.0/24",
        "node-test:v:posture-state",
    ]
    forever = [k for k in keys if client.pttl(k) < 0]
    assert forever == ["node-test:v:posture-state"]
    # Redis's own expiry is the logical one plus the grace, not sooner.
    assert client.pttl("node-test:b:source:192.0.2.1") > 590_000
    # The purge leaves nothing of what expired, including its index entries.
    assert store.defense_purge(now + 86400 + 1, 100) == 1 + 2 + 1 + 1
    assert sorted(client.scan_iter("*")) == ["node-test:v:posture-state"]
    client.close()
    store.close()


def test_blocks_list_and_clear_act_on_redis(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = tmp_path / "server.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    config = tmp_path / "imapguard.toml"
    config.write_text(
        f"""
[state]
url = "sqlite:///{tmp_path}/state.db"
key_file = "{key}"
counters_url = "{redis_server.url}"
counters_password_file = "{redis_server.password_file}"
[[listen]]
address = "127.0.0.1:10993"
tls = "implicit"
[tls]
certificate = "{tmp_path}/cert.pem"
private_key = "{tmp_path}/key.pem"
[upstream]
address = "127.0.0.1:143"
tls = "none"
master_user = "imapguard"
master_password_file = "{tmp_path}/master"
[audit]
path = "{tmp_path}/audit.jsonl"
"""
    )
    store = open_counters(redis_server.state())
    now = time.time()
    for target in (
        Target(TargetKind.SOURCE, "203.0.113.9"),
        Target(TargetKind.NETWORK, "198.51.100.0/24"),
    ):
        store.block_put(Block(target, "test", 1, now, now + 600))
    cfg = ("--config", str(config))
    assert main(["blocks", "list", "--json", *cfg]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(b["target"] for b in listed) == ["network:198.51.100.0/24", "source:203.0.113.9"]
    assert main(["blocks", "clear", "203.0.113.9", *cfg]) == 0
    assert [str(b.target) for b in store.blocks_list(time.time())] == ["network:198.51.100.0/24"]
    store.close()
    # Redis gone: one line naming the store, exit 1, no traceback.
    redis_server.stop()
    capsys.readouterr()
    assert main(["blocks", "list", *cfg]) == 1
    err = capsys.readouterr().err
    assert "state store list blocks failed: redis ConnectionError" in err
    assert "Traceback" not in err
    assert redis_server.password not in err


def _attacker(address: str, threshold: int, tries: int, now: float) -> int:
    """One node's worth of guesses at one account: how many got under the
    threshold (each a guess the node lets through)."""
    store = open_redis_counters(address)
    try:
        return sum(
            store.bucket_incr("f:pair:192.0.2.66|alice", 5, 1, now + 600, now) <= threshold
            for _ in range(tries)
        )
    finally:
        store.close()


def test_nodes_racing_one_threshold_let_through_exactly_the_threshold(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Four processes (four nodes) count one attacker's guesses at once: the
    atomic count lets exactly `threshold` of the 200 through, not 4 times it."""
    nodes, tries, threshold = 4, 50, 37
    address = counters_address(redis_server, "race:")
    context = multiprocessing.get_context("spawn")
    now = time.time()
    with ProcessPoolExecutor(nodes, mp_context=context) as pool:
        admitted = list(
            pool.map(
                _attacker, [address] * nodes, [threshold] * nodes, [tries] * nodes, [now] * nodes
            )
        )
    assert sum(admitted) == threshold
    store = open_redis_counters(address)
    assert store.bucket_counts("f:pair:192.0.2.66|alice", range(5, 6), now) == [nodes * tries]
    store.close()
