"""gateway/revocation.py with wake-ups: another process's revocation is read at
once when a wake-up comes (the poll set to an hour, so nothing else could end
the session), a flood of forged wake-ups costs a bounded number of reads and
ends nothing, and the subscription ends with the watch. A fake feed and fake
wake-ups from another thread; tests/integration/test_cluster_live.py does it
with real Redis pub/sub between two gateway processes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imapguard.audit import AuditLog
from imapguard.gateway import revocation
from imapguard.gateway.revocation import BYE_REVOKED, RevocationWatch
from imapguard.state.portal import Revocation
from tests.unit.test_revocation import Conn

HOUR = 3600.0


@dataclass
class Feed:
    rows: list[Revocation] = field(default_factory=list)
    reads: int = 0

    def add(self, user: str, credential: str | None) -> None:
        self.rows.append(Revocation(len(self.rows) + 1, user, credential, 0.0))

    def revocations_after(self, seq: int, limit: int) -> list[Revocation]:
        self.reads += 1
        return [r for r in self.rows if r.seq > seq][:limit]

    def last_revocation(self) -> int:
        return len(self.rows)


class Wakeups:
    """What `state.redis.wakeup.Topic` does for the watch, by hand."""

    def __init__(self) -> None:
        self.wake: Callable[[], None] | None = None
        self.started = threading.Event()
        self.stopped = False

    def start(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.started.set()

    def stop(self) -> None:
        self.stopped = True

    def from_another_thread(self, times: int = 1) -> None:
        def send() -> None:
            assert self.wake is not None
            for _ in range(times):
                self.wake()

        thread = threading.Thread(target=send)
        thread.start()
        thread.join()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    yield log
    log.close()


async def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5.0
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_a_wakeup_from_another_thread_reads_the_feed_at_once(audit: AuditLog) -> None:
    feed, wakeups = Feed(), Wakeups()
    idle = Conn("alice", "app-password:aa")
    watch = RevocationWatch(feed, lambda: [idle], audit, interval=HOUR, wakeups=wakeups)
    watch.start_position()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(watch.run())
        await until(lambda: wakeups.started.is_set() and feed.reads == 1)
        feed.add("alice", "app-password:aa")  # another node's revocation, committed
        wakeups.from_another_thread()
        # The next poll is an hour away: only the wake-up can end it now.
        await until(lambda: idle.ended == [BYE_REVOKED])
        task.cancel()
    assert wakeups.stopped


@pytest.mark.asyncio
async def test_a_flood_of_forged_wakeups_costs_bounded_reads_and_ends_nothing(
    audit: AuditLog,
) -> None:
    feed, wakeups = Feed(), Wakeups()
    idle = Conn("alice", "app-password:aa")
    watch = RevocationWatch(feed, lambda: [idle], audit, interval=HOUR, wakeups=wakeups)
    watch.start_position()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(watch.run())
        await until(lambda: wakeups.started.is_set() and feed.reads == 1)
        started = time.monotonic()
        wakeups.from_another_thread(10_000)  # anyone who may publish on the channel
        await until(lambda: feed.reads >= 2)
        await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        task.cancel()
    assert idle.ended == []
    # Wake-ups that arrive while a read is due are one read; reads are MIN_GAP apart.
    assert feed.reads <= 2 + elapsed / revocation.MIN_GAP, (feed.reads, elapsed)
    assert feed.reads < 100


@pytest.mark.asyncio
async def test_without_wakeups_the_feed_is_polled_at_its_interval(audit: AuditLog) -> None:
    feed = Feed()
    idle = Conn("alice", None)
    watch = RevocationWatch(feed, lambda: [idle], audit, interval=0.05)
    watch.start_position()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(watch.run())
        await until(lambda: feed.reads >= 1)
        feed.add("alice", None)
        await until(lambda: idle.ended == [BYE_REVOKED])
        task.cancel()


def test_the_interval_is_read_when_the_watch_is_made(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tests/integration/test_cluster_live.py sets it in a gateway process this way.
    monkeypatch.setattr(revocation, "INTERVAL", HOUR)
    watch = RevocationWatch(Feed(), list, audit)
    assert watch._interval == HOUR
