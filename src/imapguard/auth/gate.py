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
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from imapguard.defense.engine import Attempt, Defense
from imapguard.errors import StateUnavailable
from imapguard.state.on_thread import on_thread

__all__ = ["Gate", "Turn"]

# Seconds between asking for a turn another process holds: doubling up to the
# longest, so a queue of guesses costs the store a few writes a second.
FIRST_PAUSE = 0.01
LONGEST_PAUSE = 0.25


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
    ) -> None:
        self.defense = defense
        self._executor = executor
        self._sleep = sleep
        self._queues: dict[str, _Queue] = {}

    def turn(self) -> Turn:
        """A login's handle: `enter` once its attempt is known, `leave` always."""
        return Turn(self)


class Turn:
    """One login's place at the gate."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._key: str | None = None  # queued under this pair
        self._locked = False  # holds the pair's lock in this process
        self._attempt: Attempt | None = None  # holds the pair's turn in the store
        self._token = ""

    async def enter(self, attempt: Attempt) -> None:
        """Wait for the pair's turn. Raises StateUnavailable if the store cannot
        be reached (the caller fails closed, or lets on with `fail_open`)."""
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
        pause = FIRST_PAUSE
        while not await on_thread(gate._executor, gate.defense.gate_enter, attempt, token):
            await gate._sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE)

    async def leave(self) -> None:
        """Give the turn back (once the outcome is counted); safe to call twice
        and after a failed or cancelled `enter`. A store that cannot be reached
        keeps the turn until it expires (`engine.GATE_HOLD`)."""
        gate = self._gate
        attempt, self._attempt = self._attempt, None
        key, self._key = self._key, None
        locked, self._locked = self._locked, False
        try:
            if attempt is not None:
                await on_thread(gate._executor, gate.defense.gate_leave, attempt, self._token)
        except StateUnavailable:
            pass  # the login already failed closed (or let on); the turn expires
        finally:
            if key is not None:
                queue = gate._queues[key]
                if locked:
                    queue.lock.release()
                queue.users -= 1
                if queue.users == 0:
                    del gate._queues[key]
