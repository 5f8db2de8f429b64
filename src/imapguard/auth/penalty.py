"""How long the upstream would take to refuse a password from a given source now.

Every failure must be answered after the same time, whatever failed, or the
timing tells an attacker what the uniform failure text hides. A wrong password
takes as long as the upstream takes to refuse it, and Dovecot's refusal time
depends on the client address it sees (the gateway forwards it): its
authentication penalty (src/auth/auth-penalty.c, anvil) delays every login from
an address by 2·2^n seconds after n recent failures, at most 15 s, then a
refusal adds `auth_failure_delay` (2 s); a success clears the penalty, and it
fades when the address is quiet (the penalty level drops while the time since
its last failure exceeds the delay of that level: about 15 s of quiet clears
it). Measured on Debian's Dovecot 2.3 behind the gateway: refusals of 2, 6, 10,
17, 17 s for one address, a right password after 15 s, 2 s again after 16 s of
quiet.

So this keeps, per address as Dovecot keys it (IPv4, IPv6 /48), the penalty
level that the gateway's own observations imply, and predicts the refusal time
of a check made now: what a failure that never reached the upstream (a blocked
source, a malformed name) must wait. The refusal delay itself is learned from
every refusal, less the penalty it carried (Dovecot sends refusals from a 500 ms
timer, so one alone may come half a second early: the median of many is used).
For an upstream without a penalty the prediction is simply that delay; for one
with another schedule the checked failures stay uniform anyway (a right
password's failure waits for its own check plus the refusal delay), and only
unchecked ones follow this model.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque
from collections.abc import Callable

from imapguard.net import masked

__all__ = ["UpstreamPenalty", "penalty_seconds"]

# src/auth/auth-penalty.h: AUTH_PENALTY_INIT_SECS, AUTH_PENALTY_MAX_SECS,
# AUTH_PENALTY_MAX_PENALTY; anvil forgets a penalty after AUTH_PENALTY_TIMEOUT.
INIT_SECS = 2.0
MAX_SECS = 15.0
MAX_LEVEL = 4
FORGET_AFTER = INIT_SECS + 4 + 8 + MAX_SECS
# Dovecot tracks IPv6 penalties per /48 (PENALTY_IPV6_MASK_BITS).
IPV6_PREFIX = 48
MAX_SOURCES = 100_000
SAMPLES = 256


def penalty_seconds(level: int) -> float:
    """auth_penalty_to_secs: 2·2^level, at most 15 (level 0 means no delay)."""
    return min(INIT_SECS * 2**level, MAX_SECS) if level > 0 else 0.0


def _decayed(level: int, last: float, now: float) -> int:
    """The level after quiet since `last` (auth_penalty_anvil_callback)."""
    drop = MAX_LEVEL
    while level > 0 and now - last >= min(INIT_SECS * 2**drop, MAX_SECS):
        drop -= 1
        level -= 1
    return level


def ident(ip: str) -> str:
    """The address as the upstream's penalty keys it."""
    return masked(ip, 32, IPV6_PREFIX)


class UpstreamPenalty:
    def __init__(self, clock: Callable[[], float], default_delay: float) -> None:
        self._clock = clock
        self.default_delay = default_delay
        # ident -> (level, when the upstream last counted a failure)
        self._sources: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # Refusal delays seen: a refusal's time minus the penalty it carried.
        self._refusal_samples: deque[float] = deque(maxlen=SAMPLES)
        self._delay: float | None = None  # their median, computed when one is added
        # Has the upstream been seen to apply the penalty? Until then (or after it
        # was seen not to), predictions are the refusal delay alone.
        self.penalizes = False

    def refusal_delay(self) -> float:
        """What a refusal adds to a success: the median of the refusal times seen,
        each less the penalty it carried (`default_delay` until one is seen)."""
        if self._delay is None:
            self._delay = (
                max(self.default_delay, statistics.median(self._refusal_samples))
                if self._refusal_samples
                else self.default_delay
            )
        return self._delay

    def level(self, ip: str, at: float | None = None) -> int:
        """The penalty level the upstream applies to a login from `ip` that starts
        at `at` (default: now)."""
        if not self._sources:
            return 0
        key = ident(ip)
        state = self._sources.get(key)
        if state is None:
            return 0
        when = self._clock() if at is None else at
        if when - state[1] >= FORGET_AFTER:
            if at is None:
                del self._sources[key]
            return 0
        return _decayed(state[0], state[1], when)

    def predicted_refusal(self, ip: str) -> float:
        """How long a wrong password from `ip` would take to be refused now."""
        penalty = penalty_seconds(self.level(ip)) if self.penalizes else 0.0
        return penalty + self.refusal_delay()

    def refused(self, ip: str, duration: float) -> None:
        """The upstream refused a password from `ip` after `duration` seconds."""
        now = self._clock()
        before = self.level(ip, now - duration)  # the level applied when it started
        sample: float | None = duration
        if before > 0:
            # Did the upstream apply the penalty the model expected? (An upstream
            # without one refuses as fast the tenth time as the first.)
            expected = penalty_seconds(before)
            self.penalizes = duration >= expected + self.refusal_delay() / 2
            if self.penalizes:
                sample = duration - expected  # the refusal delay after the penalty
            elif duration < expected / 2:
                before = -1  # no penalty here: count this as the first failure again
            else:
                sample = None  # neither: learn nothing from it
        if sample is not None:
            # Dovecot sends refusals from a 500 ms timer: a single one may come half a
            # second early; the median of many is the delay.
            self._refusal_samples.append(sample)
            self._delay = None
        key = ident(ip)
        # The upstream counts the failure before its failure delay.
        self._sources[key] = (min(before + 1, MAX_LEVEL), now - self.refusal_delay())
        self._sources.move_to_end(key)
        while len(self._sources) > MAX_SOURCES:
            self._sources.popitem(last=False)

    def succeeded(self, ip: str) -> None:
        """The upstream accepted a login from `ip`: its penalty is cleared."""
        self._sources.pop(ident(ip), None)
