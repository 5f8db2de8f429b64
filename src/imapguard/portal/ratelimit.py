"""The portal's own limit on sign-in attempts, per source, in memory.

Rules: a sliding window of 60 s per source (an IPv4 address or an IPv6 /64,
as the gateway counts sources); at most `limit` attempts (password or code
POSTs) in it; one more is refused with how long until the oldest attempt
leaves the window (the `Retry-After`), and is not counted itself, so a client
that waits as told gets in; only the first refusal of a run is marked `first`
(one audit line per run, not one per request of a flood). Memory is bounded:
at most `max_sources` sources are tracked, the least recently seen forgotten
first. This limit only keeps a
single source from hammering the sign-in form; the defense (shared with IMAP
logins through the auth service) decides about accounts and sprays.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from imapguard.net import masked

__all__ = ["Refusal", "SlidingWindow", "source_key"]

WINDOW = 60.0
MAX_SOURCES = 10_000


def source_key(ip: str) -> str:
    """What the limit counts: the IPv4 address (IPv4-mapped as IPv4), or the IPv6 /64."""
    return masked(ip, 32, 64)


@dataclass(frozen=True)
class Refusal:
    retry_after: int  # whole seconds, at least 1
    first: bool  # the first refusal since this source's last allowed attempt


@dataclass(slots=True)
class _Source:
    hits: deque[float] = field(default_factory=deque)
    refused: bool = False


class SlidingWindow:
    def __init__(
        self, limit: int, *, window: float = WINDOW, max_sources: int = MAX_SOURCES
    ) -> None:
        if limit < 1 or max_sources < 1:
            raise ValueError("limit and max_sources must be positive")
        self.limit = limit
        self.window = window
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def hit(self, ip: str, now: float) -> Refusal | None:
        """Count an attempt from `ip` at `now`: None if it may go on."""
        key = source_key(ip)
        source = self._sources.get(key)
        if source is None:
            source = _Source(deque(maxlen=self.limit))
            self._sources[key] = source
            while len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(key)
        hits = source.hits
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            # Bounded by the window even if the clock went back.
            wait = math.ceil(hits[0] + self.window - now)
            first, source.refused = not source.refused, True
            return Refusal(max(1, min(wait, math.ceil(self.window))), first)
        source.refused = False
        hits.append(now)
        return None
