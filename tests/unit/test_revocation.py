"""gateway/revocation.py: the revocation feed ends the live sessions it names
(a fake feed and fake connections; tests/integration does it with the real store,
the CLI in another process and an IDLE session)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imapguard.audit import AuditLog
from imapguard.auth.model import AuthResult, Outcome
from imapguard.errors import StateUnavailable
from imapguard.gateway.revocation import BYE_REVOKED, RevocationWatch
from imapguard.state.portal import Revocation


@dataclass
class Feed:
    rows: list[Revocation] = field(default_factory=list)
    down: bool = False

    def add(self, user: str, credential: str | None) -> None:
        self.rows.append(Revocation(len(self.rows) + 1, user, credential, 0.0))

    def revocations_after(self, seq: int, limit: int) -> list[Revocation]:
        if self.down:
            raise StateUnavailable("state store", "database is locked")
        return [r for r in self.rows if r.seq > seq][:limit]

    def last_revocation(self) -> int:
        if self.down:
            raise StateUnavailable("state store", "database is locked")
        return len(self.rows)


@dataclass
class Conn:
    user: str | None
    credential: str | None
    session: str = "s"
    src: str = "192.0.2.1"
    ended: list[bytes] = field(default_factory=list)

    def end(self, bye: bytes) -> None:
        self.ended.append(bye)


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    yield log
    log.close()


@pytest.mark.asyncio
async def test_revoked_app_password_ends_its_sessions_only(audit: AuditLog, tmp_path: Path) -> None:
    feed = Feed()
    phone = Conn("alice", "app-password:aa", session="s1")
    laptop = Conn("alice", "app-password:bb", session="s2")
    other = Conn("bob", "app-password:aa", session="s3")  # same id string, other account
    watch = RevocationWatch(feed, lambda: [phone, laptop, other], audit)
    watch.start_position()
    feed.add("alice", "app-password:aa")
    assert await watch.tick() == 1
    assert phone.ended == [BYE_REVOKED]
    assert laptop.ended == other.ended == []
    audit.close()
    (event,) = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert (event["event"], event["session"], event["user"], event["credential"]) == (
        "revoked",
        "s1",
        "alice",
        "app-password:aa",
    )


@pytest.mark.asyncio
async def test_revoking_the_account_ends_every_session_of_it(audit: AuditLog) -> None:
    feed = Feed()
    conns = [Conn("alice", "device:d1"), Conn("alice", "oauth-mfa"), Conn("carol", None)]
    watch = RevocationWatch(feed, lambda: conns, audit)
    watch.start_position()
    feed.add("alice", None)
    assert await watch.tick() == 2
    assert [bool(c.ended) for c in conns] == [True, True, False]


@pytest.mark.asyncio
async def test_revocations_from_before_the_start_end_nothing(audit: AuditLog) -> None:
    """A restarted gateway must not replay old revocations at new sessions that
    logged in with a new credential of the same account."""
    feed = Feed()
    feed.add("alice", None)
    conn = Conn("alice", "app-password:new")
    watch = RevocationWatch(feed, lambda: [conn], audit)
    watch.start_position()
    assert await watch.tick() == 0
    assert conn.ended == []


@pytest.mark.asyncio
async def test_an_unreadable_feed_loses_no_revocation(audit: AuditLog) -> None:
    """Store down: relaying goes on; what was revoked meanwhile applies when it is back."""
    feed = Feed()
    conn = Conn("alice", "app-password:aa")
    watch = RevocationWatch(feed, lambda: [conn], audit)
    watch.start_position()
    feed.down = True
    feed.add("alice", "app-password:aa")
    assert await watch.tick() == 0
    feed.down = False
    assert await watch.tick() == 1
    assert await watch.tick() == 0  # applied once


@pytest.mark.asyncio
async def test_a_store_down_at_start_still_follows_from_where_it_comes_back(
    audit: AuditLog,
) -> None:
    feed = Feed(down=True)
    conn = Conn("alice", "device:d")
    watch = RevocationWatch(feed, lambda: [conn], audit)
    watch.start_position()
    assert await watch.tick() == 0
    feed.down = False
    assert await watch.tick() == 0  # the start position is taken now
    feed.add("alice", "device:d")
    assert await watch.tick() == 1


def test_credential_names() -> None:
    def named(factor: str, device: str | None, app_password: str | None) -> str | None:
        ok: AuthResult[object] = AuthResult(  # type: ignore[type-var]
            Outcome.OK, "u", "m", "ok", factor=factor, device=device, app_password=app_password
        )
        return ok.credential

    assert named("app-password", None, "abc") == "app-password:abc"
    assert named("password+totp", "d1", None) == "device:d1"
    assert named("trusted-device", "d1", None) == "device:d1"
    assert named("oauth-mfa", None, None) == "oauth-mfa"


@pytest.mark.asyncio
async def test_a_burst_of_revocations_costs_one_pass_over_the_live_sessions(
    audit: AuditLog,
) -> None:
    """A user revoking app passwords in a loop must not make each tick walk every
    live connection once per revocation (the event loop is the gateway's)."""
    feed = Feed()
    conns = [Conn(f"u{n}", f"app-password:{n}") for n in range(1000)]
    walks: list[int] = []

    def live() -> list[Conn]:
        walks.append(1)
        return conns

    watch = RevocationWatch(feed, live, audit)
    watch.start_position()
    for n in range(400):
        feed.add("mallory", f"app-password:{n}")
    feed.add("u7", "app-password:7")
    assert await watch.tick() == 1
    assert len(walks) == 1
    assert conns[7].ended == [BYE_REVOKED]


@pytest.mark.asyncio
async def test_with_a_read_executor_the_feed_is_read_off_the_event_loop(audit: AuditLog) -> None:
    """A networked store's feed is read on the read executor: a slow read a
    second must not stall the sessions the watch looks after. Ending them stays
    on the event loop, which owns the connections."""
    threads: dict[str, set[str]] = {"read": set(), "end": set()}

    class WatchedFeed(Feed):
        def revocations_after(self, seq: int, limit: int) -> list[Revocation]:
            threads["read"].add(threading.current_thread().name)
            return super().revocations_after(seq, limit)

    class WatchedConn(Conn):
        def end(self, bye: bytes) -> None:
            threads["end"].add(threading.current_thread().name)
            super().end(bye)

    feed = WatchedFeed()
    conn = WatchedConn("alice", "app-password:aa")
    with ThreadPoolExecutor(1, thread_name_prefix="reads") as reads:
        watch = RevocationWatch(feed, lambda: [conn], audit, executor=reads)
        watch.start_position()
        feed.add("alice", "app-password:aa")
        assert await watch.tick() == 1
    assert conn.ended == [BYE_REVOKED]
    (read,) = threads["read"]
    assert read.startswith("reads")
    assert threads["end"] == {threading.current_thread().name}
