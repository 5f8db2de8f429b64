"""One guess at a time per source and account, across every process and node.

The defense's precheck reads what earlier logins left (failures, blocks), and a
login's outcome is counted once the upstream answered. Guesses sent at once would
all pass the same precheck: the 20 pre-auth slots a source has in each process of
each node would all reach the upstream before the first failure was counted, and
`pair_block` failures would let through as many guesses as there are slots. The
gate makes a login of a (source, account) pair wait until the one before it was
decided and counted, so every precheck sees every earlier guess of its pair: the
pair's thresholds hold exactly, whatever the number of processes and nodes.

Inside a process an asyncio lock per pair queues the waiters (no polling). The
login at the head of the queue then takes the pair's turn in the counter store by
compare-and-set (`Defense.gate_enter`), which every process and node shares,
asking again after a growing pause while another holds it. A turn expires after
`engine.GATE_HOLD` seconds, so a process that died holding one stops nobody for
long.

What a turn costs a login is the store thread's time, not only the store's: each
hop to that thread and back costs more CPU than the SQLite statement it runs
(`auth/reads.py`). So the turn is taken and the precheck read in one hop
(`Turn.enter` runs the precheck right after the compare-and-set), and a turn is
given back in batches (`RELEASE_DELAY`, one transaction for all the turns left
meanwhile), after the outcome was counted. The next login of the same pair in this
process does not wait for that batch: it takes the turn over from the token still
held (a compare-and-set from that token to its own), and the queued release of
the old token then changes nothing. A login of the pair on another process or node
waits for the batch, at most `RELEASE_DELAY` and its own pause longer.

With a SQLite state the processes sharing it are on one machine, and a turn is
a byte-range lock of the kernel instead (`LocalTurns`, `state.sqlite.turns`):
taken and given back on the event loop without waiting, no hop to the store's
thread and no write, and freed by the kernel when a process ends; the precheck
is then read where the counter store's reads run (inline for the embedded store).

Only guesses of a named account with a secret are gated (a password, an app
password; not a client certificate, nor a bearer token whose account is known only
once it is verified). A mail client's parallel connections from one address queue
too, each behind a login that takes milliseconds when it succeeds. Logins of one
account from several sources are not queued behind each other (an attacker must
not be able to hold up its owner's logins from elsewhere); what a source does over
many accounts (spraying) is bounded by its pre-auth slots and counted by the
spray detection, not here.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar, cast

from imapguard.defense.engine import GATE_HOLD, Attempt, Defense
from imapguard.errors import StateUnavailable
from imapguard.state.on_thread import on_thread
from imapguard.state.writebehind import WriteBehind

__all__ = ["RELEASE_DELAY", "Gate", "LocalTurns", "Turn"]

T = TypeVar("T")

# Seconds between asking for a turn another process holds: doubling up to the
# longest, so a queue of guesses costs the store a few writes a second.
FIRST_PAUSE = 0.01
LONGEST_PAUSE = 0.25
# Seconds a left turn waits for the batch that gives it back in the store.
RELEASE_DELAY = 0.02
# Left turns remembered for a takeover at most: a release the batch queue dropped
# (`WriteBehind.max_pending`, a store stalled under a flood of logins) would
# otherwise leave its entry for good. Past it, a login waits for the release.
MAX_HELD = 10_000


class LocalTurns(Protocol):
    """Turns between the processes of one machine (`state.sqlite.turns`)."""

    def take(self, pair: str) -> bool:
        """Take the pair's turn now if nobody holds it; never waits."""
        ...

    def give_back(self, pair: str) -> None: ...


class _Queue:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # logins holding or waiting for `lock`


class Gate:
    def __init__(
        self,
        defense: Defense,
        executor: Executor,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        releases: WriteBehind | None = None,
        local: LocalTurns | None = None,
        reads: Executor | None = None,
    ) -> None:
        self.defense = defense
        self.local = local  # else the compare-and-set in the counter store
        self._reads = reads  # where `then` runs after a local turn (None: inline)
        self._executor = executor
        self._sleep = sleep
        self._queues: dict[str, _Queue] = {}
        # Turns left but still held in the store, their release queued: pair ->
        # (token, when left). The release runs on the store thread, a takeover on
        # the event loop.
        self._held: dict[str, tuple[str, float]] = {}
        self._held_lock = threading.Lock()
        self.releases = releases or WriteBehind(defense, executor, delay=RELEASE_DELAY)

    def turn(self) -> Turn:
        """A login's handle: `enter` once its attempt is known, `leave` always."""
        return Turn(self)

    def _take_over(self, key: str) -> str | None:
        """The token of the pair's turn this process left but still holds, if any."""
        with self._held_lock:
            held = self._held.pop(key, None)
        return held[0] if held is not None else None

    def _remember(self, key: str, token: str) -> None:
        """A turn left, its release queued: this process may take it over meanwhile.
        Past `MAX_HELD` entries, those older than a turn lives are forgotten first
        (their releases failed; the store lets them expire), then no more are kept."""
        now = time.monotonic()
        with self._held_lock:
            if len(self._held) >= MAX_HELD and key not in self._held:
                stale = [k for k, (_, left) in self._held.items() if now - left > GATE_HOLD]
                for k in stale:
                    del self._held[k]
                if len(self._held) >= MAX_HELD:
                    return
            self._held[key] = (token, now)

    def _release(self, key: str, attempt: Attempt, token: str) -> None:
        """On the store thread, in the release batch: give the turn back. Always
        written: the compare-and-set names our token, so it frees nothing a
        takeover holds, and a takeover that never reached the store (cancelled
        after it took the token here) leaves the turn to this write."""
        try:
            self.defense.gate_leave(attempt, token)
        except StateUnavailable:
            # Each release on its own: one failure must not cost the others. Kept
            # for a takeover by this process; elsewhere it expires (`GATE_HOLD`).
            return
        with self._held_lock:
            held = self._held.get(key)
            if held is not None and held[0] == token:
                del self._held[key]


class Turn:
    """One login's place at the gate."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._key: str | None = None  # queued under this pair
        self._locked = False  # holds the pair's lock in this process
        self._attempt: Attempt | None = None  # holds the pair's turn in the store
        self._token = ""
        self._local = False  # holds the pair's turn in `gate.local`

    async def enter(self, attempt: Attempt, then: Callable[[Attempt], T]) -> T:
        """Wait for the pair's turn, then `then(attempt)` (the precheck) in the same
        hop to the store thread; its result. Raises StateUnavailable if the store
        cannot be reached (the caller fails closed, or lets on with `fail_open`)."""
        gate = self._gate
        key = self._key = f"{attempt.ip}|{attempt.user}"
        queue = gate._queues.get(key)
        if queue is None:
            queue = gate._queues[key] = _Queue()
        queue.users += 1
        await queue.lock.acquire()
        self._locked = True
        local = gate.local
        if local is not None:
            pause = FIRST_PAUSE
            while not local.take(key):
                await gate._sleep(pause)
                pause = min(pause * 2, LONGEST_PAUSE)
            self._local = True
            # Where the counter store's reads run (inline for the embedded store).
            return await on_thread(gate._reads, then, attempt)
        # Known before asking: a login cancelled while its compare-and-set ran
        # may hold the turn, and `leave` gives it back only if it holds this token.
        token = self._token = secrets.token_hex(8)
        self._attempt = attempt
        held = gate._take_over(key)
        defense = gate.defense

        def take() -> tuple[bool, T | None]:
            if not defense.gate_enter(attempt, token, held):
                return False, None
            return True, then(attempt)

        pause = FIRST_PAUSE
        while True:
            taken, value = await on_thread(gate._executor, take)
            if taken:
                return cast(T, value)  # `then` ran: its result
            if held is not None:
                held = None  # given back meanwhile (or expired): ask as anyone would
                continue
            await gate._sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE)

    def leave(self) -> None:
        """Let the pair's next login of this process go, and queue the turn's
        release in the store (once the outcome is counted). Safe to call twice and
        after a failed or cancelled `enter`. A store that cannot be reached keeps
        the turn until it expires (`engine.GATE_HOLD`)."""
        gate = self._gate
        attempt, self._attempt = self._attempt, None
        key, self._key = self._key, None
        locked, self._locked = self._locked, False
        local, self._local = self._local, False
        if key is None:
            return
        if local and gate.local is not None:
            gate.local.give_back(key)
        if attempt is not None:
            gate._remember(key, self._token)
            gate.releases.submit(gate._release, key, attempt, self._token)
        queue = gate._queues[key]
        if locked:
            queue.lock.release()
        queue.users -= 1
        if queue.users == 0:
            del gate._queues[key]
