"""How often notices may go: once per account and kind per interval (the
caller's `should_send`, shared by every node), and at most so many an hour in all
(per node)."""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

__all__ = ["HourlyCap", "MemoryRateLimit", "ShouldSend"]

log = logging.getLogger("imapguard.notify")

ShouldSend = Callable[[str, str, float], Awaitable[bool]]
"""should_send(user, kind, now): True for exactly one caller per account, kind
and interval (an atomic check-and-set in the shared state store). `user` is the
account name in lower case (accounts compare case-insensitively), `kind` a
`NoticeKind` value, `now` the notifier's clock in Unix seconds."""


class MemoryRateLimit:
    """`should_send` for one node and for tests: at most one True per (user,
    kind) per `interval` seconds. Entries expire after the interval; at most
    `max_entries` are kept (the oldest is forgotten first, which at worst allows
    an early second notice, never an unbounded dict)."""

    def __init__(self, interval: float, max_entries: int = 100_000) -> None:
        self.interval = interval
        self.max_entries = max_entries
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()

    async def __call__(self, user: str, kind: str, now: float) -> bool:
        # No await in here: check and set are atomic on the event loop.
        while self._last:
            oldest_key, oldest = next(iter(self._last.items()))
            if now - oldest < self.interval and len(self._last) < self.max_entries:
                break
            del self._last[oldest_key]
        key = (user, kind)
        previous = self._last.get(key)
        # (A clock that went backwards counts as "within the interval".)
        if previous is not None and now - previous < self.interval:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        return True


class HourlyCap:
    """At most `max_per_hour` notices in any hour: a flood of lockouts (or an
    attacker who found a way to trigger notices) cannot make the relay mail
    without bound. The first suppressed one is logged, then a count."""

    def __init__(self, max_per_hour: int) -> None:
        self.max_per_hour = max_per_hour
        # When the notices of the last hour were sent.
        self._sent: deque[float] = deque()
        self._capped = 0  # suppressed since the last one that went out

    def take(self, now: float) -> bool:
        """True (and counted) when one more notice may go at `now`."""
        while self._sent and self._sent[0] <= now - 3600.0:
            self._sent.popleft()
        if len(self._sent) >= self.max_per_hour:
            self._capped += 1
            if self._capped == 1:
                log.warning(
                    "notifications: %d sent in the last hour (notify.max_per_hour); "
                    "suppressing until the hour has passed",
                    len(self._sent),
                )
            return False
        if self._capped:
            log.warning("notifications resume; %d suppressed by max_per_hour", self._capped)
            self._capped = 0
        self._sent.append(now)
        return True
