"""When a failed login is answered: never sooner than the upstream would have
refused this source's password right now, so that the answer's timing tells a
guesser nothing.

Every failure looks the same on the wire; it must take the same time too, or
timing tells an unknown user from a wrong password, a right password without
its factor from a wrong one, or a blocked source from a checked one. The
upstream sets the pace: its refusals take what they take (Dovecot waits before
answering a failure, longer for an address it penalises: `penalty.py`), and a
failure the gateway decides alone must wait as long. So each attempt carries a
clock (`AttemptClock`), the service notes on it when the upstream said the
password was right (`password_ok`), and `FailureTiming.target` is the highest of

- the floor: the slow end of recent refusal times from anywhere, capped at
  `MAX_FAILURE_FLOOR`, and never below `auth.failure_delay`;
- the refusal time predicted for this source when the attempt began (what a
  failure that never reached the upstream, a block or a malformed name, waits);
- when the password was right but the login fails anyway (no factor, a policy),
  the time that took plus what a refusal adds.

A random jitter of up to `auth.failure_jitter` goes on top.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from imapguard.auth.penalty import UpstreamPenalty

__all__ = ["MAX_FAILURE_FLOOR", "REFUSAL_SAMPLES", "AttemptClock", "FailureTiming", "password_ok"]

# The adaptive failure floor never exceeds this: clients give up near 30 s, and an
# upstream that hangs must not make every failure hang with it. (Per source, the
# upstream's own penalty is followed further: see `FailureTiming.target`.)
MAX_FAILURE_FLOOR = 10.0
# Upstream refusal times kept for the floor's percentile.
REFUSAL_SAMPLES = 256


@dataclass
class AttemptClock:
    """One attempt's clock, for its failure's timing."""

    started: float
    # The upstream's refusal time for this source when the attempt began.
    refusal: float = 0.0
    # When an upstream check said the password was right (or the verified cache did).
    password_ok_at: float | None = None


_ATTEMPT: contextvars.ContextVar[AttemptClock | None] = contextvars.ContextVar(
    "imapguard_attempt", default=None
)


def password_ok(at: float) -> None:
    """Note on the running attempt that the upstream accepted the password."""
    attempt = _ATTEMPT.get()
    if attempt is not None and attempt.password_ok_at is None:
        attempt.password_ok_at = at


class FailureTiming:
    """The failure floor, the upstream's per-source penalty, and the wait."""

    def __init__(
        self,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[Any]],
        rng: random.Random,
        *,
        delay: float,
        jitter: float,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._delay = delay
        self._jitter = jitter
        self._refusals: deque[float] = deque(maxlen=REFUSAL_SAMPLES)
        # The upstream's per-address refusal time (imapguard.auth.penalty).
        self.penalty = UpstreamPenalty(clock, delay)

    @contextlib.contextmanager
    def attempt(self, ip: str) -> Iterator[AttemptClock]:
        """The clock of one attempt from `ip`, current for `password_ok` within."""
        clock = AttemptClock(self._clock(), self.penalty.predicted_refusal(ip))
        token = _ATTEMPT.set(clock)
        try:
            yield clock
        finally:
            _ATTEMPT.reset(token)

    def refused(self, ip: str, duration: float) -> None:
        """The upstream refused a password from `ip` after `duration` seconds."""
        self._refusals.append(duration)
        self.penalty.refused(ip, duration)

    def accepted(self, ip: str) -> None:
        """The upstream let a login from `ip` in (its penalty for `ip` ends)."""
        self.penalty.succeeded(ip)

    def floor(self) -> float:
        """How long every failure takes at least (before jitter)."""
        if not self._refusals:
            return self._delay
        ordered = sorted(self._refusals)
        # Few samples (just started): the slowest one, not a percentile of them.
        index = len(ordered) - 1 if len(ordered) < 32 else int(len(ordered) * 0.9)
        return max(self._delay, min(ordered[index], MAX_FAILURE_FLOOR))

    def target(self, attempt: AttemptClock) -> float:
        """How long after the command this failure is answered (before jitter):
        at any penalty, a right and a wrong password then end alike."""
        target = max(self.floor(), attempt.refusal)
        if attempt.password_ok_at is not None:
            ok_after = attempt.password_ok_at - attempt.started
            target = max(target, ok_after + self.penalty.refusal_delay())
        return target

    async def wait_out(self, attempt: AttemptClock) -> None:
        """Sleep until this failure may be answered."""
        target = self.target(attempt) + self._rng.uniform(0, self._jitter)
        remaining = target - (self._clock() - attempt.started)
        if remaining > 0:
            await self._sleep(remaining)
