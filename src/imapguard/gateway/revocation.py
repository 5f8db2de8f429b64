"""Revocation reaches live sessions: when an app password, a device or a whole
account's access is revoked (by the portal, the CLI or another node: whichever
process does it writes the store's revocation feed), every session logged in
with it ends within seconds, IDLE included.

`RevocationWatch` follows the feed (`state.portal.RevocationFeed`) from where it
stood at start, one indexed read a second on the reader connection (inline for
the embedded store; on the read executor for a networked one, so a slow store
never stalls the sessions it is watching: `auth.reads`), and ends each
matching connection on the event loop: `* BYE [ALERT] ...` to the client (a client shows an ALERT
to its user, who then knows why the password stopped working), then both sides
closed. A revocation names an account and optionally one credential
(`KIND:ID`, as `AuthResult.credential` names it at login); none means every session of
the account.

Between nodes the feed alone would take up to `INTERVAL`; with `wakeups` (the
composition root gives Redis pub/sub, `state.redis.wakeup`) a process that
writes a revocation wakes every watch, which reads the feed at once. A
wake-up carries nothing: the feed stays the truth, so a forged one costs one
read (reads are at least `MIN_GAP` apart however many arrive), and a lost
one is caught by the next tick.

A feed that cannot be read (the store is down) is retried on the next tick and
logged once per outage: relaying sessions go on, and revocations written
meanwhile are applied when the store is back (the feed is read from the last seq
seen, not from the clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import Protocol

from imapguard.audit import AuditLog, events
from imapguard.errors import StateUnavailable
from imapguard.state.on_thread import on_thread
from imapguard.state.portal import Revocation

__all__ = ["BYE_REVOKED", "Revocable", "RevocationReader", "RevocationWatch", "Wakeups"]

log = logging.getLogger("imapguard.gateway")

BYE_REVOKED = b"* BYE [ALERT] Access with this password was revoked.\r\n"
# How often the feed is read: a revocation ends its sessions within this plus a
# round trip (the portal promises 5 seconds).
INTERVAL = 1.0
# Revocations applied per read (a burst is worked off over a few ticks).
BATCH = 500
# Seconds between two reads at least, however many wake-ups arrive.
MIN_GAP = 0.05


class RevocationReader(Protocol):
    def revocations_after(self, seq: int, limit: int) -> list[Revocation]: ...
    def last_revocation(self) -> int: ...


class Wakeups(Protocol):
    """Tells the watch that another process wrote the feed (a hint, not the
    revocation: the feed is read for that)."""

    def start(self, wake: Callable[[], None]) -> None:
        """Call `wake()` on each wake-up from now on, from any thread."""

    def stop(self) -> None: ...


class Revocable(Protocol):
    """A live connection as the watch sees it."""

    @property
    def user(self) -> str | None: ...
    @property
    def credential(self) -> str | None: ...
    @property
    def session(self) -> str: ...
    @property
    def src(self) -> str: ...

    def end(self, bye: bytes) -> None:
        """Tell the client `bye` and close both sides."""


class RevocationWatch:
    def __init__(
        self,
        feed: RevocationReader,
        live: Callable[[], Iterable[Revocable]],
        audit: AuditLog,
        *,
        interval: float | None = None,
        executor: Executor | None = None,
        wakeups: Wakeups | None = None,
    ) -> None:
        self._feed = feed
        self._live = live
        self._audit = audit
        self._interval = INTERVAL if interval is None else interval
        self._executor = executor  # where the feed is read (None: inline)
        self._wakeups = wakeups
        self._seq: int | None = None
        self._down = False

    def start_position(self) -> None:
        """Revocations from before the start concern no session of this process."""
        if self._seq is None:
            try:
                self._seq = self._feed.last_revocation()
            except StateUnavailable as exc:
                self._outage(exc)

    async def tick(self) -> int:
        """Read the feed once and end what it names; how many sessions ended."""
        batch = await on_thread(self._executor, self._read)
        if not batch or self._seq is None:
            return 0
        self._seq = max(self._seq, batch[-1].seq)
        # One pass over the live connections per read, whatever the batch size:
        # account -> the credentials revoked (None: all of them).
        revoked: dict[str, set[str | None]] = {}
        for revocation in batch:
            revoked.setdefault(revocation.user, set()).add(revocation.credential)
        ended = 0
        for conn in list(self._live()):
            user = conn.user
            names = revoked.get(user) if user is not None else None
            if user is None or names is None:
                continue
            if None not in names and conn.credential not in names:
                continue
            conn.end(BYE_REVOKED)
            ended += 1
            self._audit.emit(
                events.Revoked(
                    session=conn.session, src=conn.src, user=user, credential=conn.credential
                )
            )
        return ended

    def _read(self) -> list[Revocation]:
        """The revocations after the last one seen (none while the store is down)."""
        self.start_position()
        if self._seq is None:
            return []
        try:
            batch = self._feed.revocations_after(self._seq, BATCH)
        except StateUnavailable as exc:
            self._outage(exc)
            return []
        if self._down:
            self._down = False
            log.info("revocation feed readable again")
        return batch

    async def run(self) -> None:
        """Read the feed every `interval` seconds, and at once on a wake-up."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:  # on the subscriber's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are done
                loop.call_soon_threadsafe(woken.set)

        if self._wakeups is not None:
            self._wakeups.start(wake)
        try:
            while True:
                woken.clear()  # a wake-up during the read calls for another
                await self.tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), self._interval)
                await asyncio.sleep(MIN_GAP)
        finally:
            if self._wakeups is not None:
                self._wakeups.stop()

    def _outage(self, exc: StateUnavailable) -> None:
        if not self._down:
            self._down = True
            log.warning("revocation feed unreadable, retrying: %s", exc.detail)
