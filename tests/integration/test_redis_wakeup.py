"""Wake-ups between nodes over Redis pub/sub (imapguard.state.redis.wakeup),
against a real redis-server: one node's publish reaches another node's
subscriber at once, and a subscriber survives a Redis restart by itself."""

from __future__ import annotations

import threading
import time

import pytest

from imapguard.errors import StateUnavailable
from imapguard.state.redis.connect import open_client
from imapguard.state.redis.wakeup import RETRY, Wakeup, publish
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)


def test_a_wakeup_published_by_one_node_reaches_the_other_at_once(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    state = redis_server.state()
    node_a, node_b = open_client(state, redis_server.url), open_client(state, redis_server.url)
    woken = threading.Event()
    other_topic = threading.Event()
    watch = Wakeup(node_b, "imapguard:", "revocations", woken.set)
    unrelated = Wakeup(node_b, "imapguard:", "portal", other_topic.set)
    watch.start()
    unrelated.start()
    try:
        assert watch.wait_subscribed(5)
        assert unrelated.wait_subscribed(5)
        start = time.monotonic()
        assert publish(node_a, "imapguard:", "revocations") == 1
        assert woken.wait(2)
        assert time.monotonic() - start < 1.0
        assert not other_topic.is_set()  # one topic's wake-up wakes only its subscribers
    finally:
        watch.stop()
        unrelated.stop()
    node_a.close()
    node_b.close()


def test_a_subscriber_comes_back_after_a_redis_restart(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    client = open_client(redis_server.state(), redis_server.url)
    calls: list[float] = []
    called = threading.Event()

    def wake() -> None:
        calls.append(time.monotonic())
        called.set()

    watch = Wakeup(client, "imapguard:", "revocations", wake)
    watch.start()
    try:
        assert watch.wait_subscribed(5)
        redis_server.stop()
        with pytest.raises(StateUnavailable):
            publish(client, "imapguard:", "revocations")
        redis_server.start()
        # Subscribed again, and woken once for what may have been missed.
        assert called.wait(RETRY + 5)
        assert watch.wait_subscribed(5)
        called.clear()
        assert publish(client, "imapguard:", "revocations") == 1
        assert called.wait(2)
        assert len(calls) == 2
    finally:
        watch.stop()
    client.close()
