"""The cluster's live events on a real redis-server (imapguard.state.redis.live):
what one node puts on the stream another reads after the id it saw last, with
the shown fields only; the stream stays capped and a reader that fell behind
the cap is told it skipped; with Redis killed, putting never blocks, every
event is counted as dropped, and the stream is written again once Redis is back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from imapguard.audit import events
from imapguard.errors import StateUnavailable
from imapguard.portal.admin_feed import SHOWN_FIELDS
from imapguard.state.redis.connect import open_client
from imapguard.state.redis.live import LiveIn, LiveOut, stream_key
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)

PREFIX = "imapguard:"


def auth(user: str, result: str = "invalid") -> events.Auth:
    return events.Auth(
        src="198.51.100.7",
        listener="0.0.0.0:993",
        mechanism="PLAIN",
        user=user,
        method="app-password",
        device="dev-secretish",
        credential="app-password:0123456789abcdef",
        result=result,
        reason="wrong password",
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_what_one_node_puts_another_reads_after_its_last_id_with_the_shown_fields_only(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    state = redis_server.state()
    node_a, node_b = open_client(state, redis_server.url), open_client(state, redis_server.url)
    out = LiveOut(node_a, PREFIX, SHOWN_FIELDS)
    reader = LiveIn(node_b, PREFIX)
    try:
        start = reader.after(None, 100)
        assert start.records == []
        out(events.Start(pid=1), time.time())  # not an auth event: not on the stream
        for n in range(3):
            out(auth(f"victim{n}"), time.time())
        batch = wait_for(lambda: len((b := reader.after(start.last_id, 100)).records) == 3 and b)
        assert [r["user"] for r in batch.records] == ["victim0", "victim1", "victim2"]
        assert not batch.skipped
        for record in batch.records:
            assert set(record) <= {"event", *SHOWN_FIELDS}
            assert "credential" not in record
            assert "device" not in record
        # Resuming from the last id gives only what came after it.
        out(auth("victim3"), time.time())
        after = wait_for(lambda: (b := reader.after(batch.last_id, 100)).records and b)
        assert [r["user"] for r in after.records] == ["victim3"]
        # An id that is not one (from a browser) starts at the end.
        assert reader.after("1.2", 100).records == []
    finally:
        out.close()
        node_a.close()
        node_b.close()


def test_the_stream_is_capped_and_a_reader_behind_the_cap_is_told_it_skipped(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    client = open_client(redis_server.state(), redis_server.url)
    out = LiveOut(client, PREFIX, SHOWN_FIELDS, maxlen=100)
    reader = LiveIn(client, PREFIX)
    try:
        out(auth("first"), time.time())
        first = wait_for(lambda: (b := reader.newest(10)).records and b)
        for n in range(1000):
            out(auth(f"spray{n}"), time.time())
        wait_for(lambda: reader.newest(1).records[0]["user"] == "spray999")
        # About the cap (trimmed a node of entries at a time), not all of them.
        assert client.xlen(stream_key(PREFIX)) <= 300
        late = reader.after(first.last_id, 5000)
        assert late.skipped
        assert late.records[-1]["user"] == "spray999"
        # A reader more than a read behind gets the newest, and is told so.
        behind = reader.after(first.last_id, 10)
        assert behind.skipped
        assert [r["user"] for r in behind.records][-1] == "spray999"
        assert len(behind.records) == 10
    finally:
        out.close()
        client.close()


def test_with_redis_killed_putting_never_blocks_and_every_event_is_counted_as_dropped(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    client = open_client(redis_server.state(), redis_server.url)
    out = LiveOut(client, PREFIX, SHOWN_FIELDS, size=100)
    told: list[int] = []
    lock = threading.Lock()

    def on_drop(n: int) -> None:
        with lock:
            told.append(n)

    out.on_drop = on_drop
    reader = LiveIn(client, PREFIX)
    try:
        redis_server.stop()
        for n in range(5000):  # a spray while Redis is away: each put returns at once
            out(auth(f"lost{n}"), time.time())
        wait_for(lambda: out.dropped == 5000)
        with lock:
            assert sum(told) == 5000
        redis_server.start()
        start = reader.after(None, 10)
        out(auth("after-restart"), time.time())
        back = wait_for(lambda: (b := reader.after(start.last_id, 10)).records and b, 15.0)
        assert [r["user"] for r in back.records] == ["after-restart"]
        assert out.dropped == 5000
    finally:
        out.close()
        client.close()


def test_a_reader_with_redis_away_is_told_the_store_is_unavailable(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    client = open_client(redis_server.state(), redis_server.url)
    reader = LiveIn(client, PREFIX)
    try:
        redis_server.stop()
        with pytest.raises(StateUnavailable) as after:
            reader.after("1-0", 10)
        with pytest.raises(StateUnavailable) as newest:
            reader.newest(10)
        for raised in (after, newest):
            assert redis_server.password not in str(raised.value)
    finally:
        client.close()
