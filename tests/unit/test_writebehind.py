"""Batched bookkeeping writes: one transaction per batch, bounded, failures contained."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imapguard.state.sqlite import SqliteStore, open_reader, open_store
from imapguard.state.writebehind import WriteBehind


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    ex = ThreadPoolExecutor(1)
    yield ex
    ex.shutdown()


@pytest.mark.asyncio
async def test_queued_writes_land_in_one_batch_after_the_delay(
    store: SqliteStore, executor: ThreadPoolExecutor
) -> None:
    wb = WriteBehind(store, executor, delay=0.05)
    for i in range(5):
        wb.submit(store.record_login, f"user{i}", 10.0 + i, "192.0.2.1", "app-password")
    assert store.list_users() == []  # nothing written synchronously
    await asyncio.sleep(0.3)
    assert [u.name for u in store.list_users()] == [f"user{i}" for i in range(5)]


@pytest.mark.asyncio
async def test_flush_writes_immediately(store: SqliteStore, executor: ThreadPoolExecutor) -> None:
    wb = WriteBehind(store, executor, delay=60)
    wb.submit(store.record_login, "alice", 1.0, "192.0.2.1", "app-password")
    await wb.flush()
    user = store.get_user("alice")
    assert user is not None
    assert user.last_login_address == "192.0.2.1"


@pytest.mark.asyncio
async def test_a_failing_call_rolls_back_its_batch_and_is_contained(
    store: SqliteStore, executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    wb = WriteBehind(store, executor, delay=60)

    def broken(*_: object) -> None:
        with store._tx("broken") as db:  # a write that SQLite refuses
            db.execute("INSERT INTO no_such_table VALUES (1)")

    wb.submit(store.record_login, "alice", 1.0, "192.0.2.1", "app-password")
    wb.submit(broken)
    await wb.flush()
    assert store.get_user("alice") is None  # all or nothing
    assert "bookkeeping not recorded" in caplog.text
    # The queue keeps working afterwards.
    wb.submit(store.record_login, "bob", 2.0, "192.0.2.2", "app-password")
    await wb.flush()
    assert store.get_user("bob") is not None


@pytest.mark.asyncio
async def test_the_queue_is_bounded(store: SqliteStore, executor: ThreadPoolExecutor) -> None:
    wb = WriteBehind(store, executor, delay=60, max_pending=3)
    for i in range(10):
        wb.submit(store.record_login, f"u{i}", float(i), "192.0.2.1", "m")
    assert wb.dropped == 7
    await wb.flush()
    assert [u.name for u in store.list_users()] == ["u7", "u8", "u9"]


def test_reader_sees_committed_writes_and_cannot_write(store: SqliteStore, tmp_path: Path) -> None:
    reader = open_reader(f"sqlite:///{tmp_path}/state.db")
    try:
        store.add_app_password("alice", "phone", b"d" * 32, 1.0)
        assert reader.find_app_password("alice", b"d" * 32) is not None
        from imapguard.errors import StateUnavailable

        with pytest.raises(StateUnavailable):
            reader.record_login("alice", 2.0, "192.0.2.1", "m")
    finally:
        reader.close()


@pytest.mark.asyncio
async def test_a_batch_stuck_in_the_store_piles_up_no_callbacks(
    store: SqliteStore, executor: ThreadPoolExecutor
) -> None:
    """A store that stalls (a flood of logins, a slow disk) while writes keep
    coming: each timer that fires during the stuck batch must not add one more
    callback to it (they re-added themselves while anything was pending: memory
    and loop time growing with the stall). One callback, one next batch."""
    release = threading.Event()
    wb = WriteBehind(store, executor, delay=0.001)

    def stuck() -> None:
        release.wait(10)

    wb.submit(stuck)  # the batch the store cannot finish
    await asyncio.sleep(0.02)
    for i in range(50):
        wb.submit(store.record_login, f"user{i}", 10.0 + i, "192.0.2.1", "app-password")
        await asyncio.sleep(0.003)  # the timer fires again and again meanwhile
    assert wb._inflight is not None
    # Its own (the chained future's, `_done`) and one to start the next batch.
    assert len(wb._inflight._callbacks) <= 3
    release.set()
    await wb.flush()
    assert len(store.list_users()) == 50
