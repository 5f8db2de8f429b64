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
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar, cast

from imapguard.defense.engine import Attempt, Defense
from imapguard.state.on_thread import on_thread
from imapguard.state.writebehind import WriteBehind

__all__ = ["RELEASE_DELAY", "Gate", "Turn"]

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
    ) -> None:
        self.defense = defense
        self._executor = executor
        self._sleep = sleep
        self._queues: dict[str, _Queue] = {}
        # Turns left but still held in the store, their release queued: pair -> token.
        # The release runs on the store thread, a takeover on the event loop.
        self._held: dict[str, str] = {}
        self._held_lock = threading.Lock()
        self.releases = releases or WriteBehind(defense, executor, delay=RELEASE_DELAY)

    def turn(self) -> Turn:
        """A login's handle: `enter` once its attempt is known, `leave` always."""
        return Turn(self)

    def _take_over(self, key: str) -> str | None:
        """The token of the pair's turn this process left but still holds, if any
        (the queued release then finds it taken over and does nothing)."""
        with self._held_lock:
            return self._held.pop(key, None)

    def _release(self, key: str, attempt: Attempt, token: str) -> None:
        """On the store thread, in the release batch: give the turn back. The
        compare-and-set frees nothing a takeover holds (it names our token); a
        later token remembered for the pair says ours was taken over: no write."""
        with self._held_lock:
            current = self._held.get(key)
            if current is not None and current != token:
                return
            if current is not None:
                del self._held[key]
        # A store that cannot be reached fails the batch (logged by `WriteBehind`):
        # the turn expires (`engine.GATE_HOLD`).
        self.defense.gate_leave(attempt, token)


class Turn:
    """One login's place at the gate."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._key: str | None = None  # queued under this pair
        self._locked = False  # holds the pair's lock in this process
        self._attempt: Attempt | None = None  # holds the pair's turn in the store
        self._token = ""

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
        if key is None:
            return
        if attempt is not None:
            with gate._held_lock:
                if len(gate._held) < MAX_HELD or key in gate._held:
                    gate._held[key] = self._token
            gate.releases.submit(gate._release, key, attempt, self._token)
        queue = gate._queues[key]
        if locked:
            queue.lock.release()
        queue.users -= 1
        if queue.users == 0:
            del gate._queues[key]
