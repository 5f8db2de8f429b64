"""Admission: pre-auth slots per source at accept, then handshake turns under
saturation, familiar sources first.

**Slots** (`PreauthSlots`). Every connection that has not logged in yet holds a
slot of its source and one of the total, taken at accept, before any TLS work,
turn or task: a connection over a limit is closed at once and costs nothing
else. A source is an IPv4 address (a NAT shares one, hence
`limits.max_preauth_per_source` is 20, not 1) or an IPv6 /64, the smallest
prefix a subscriber gets (RFC 6177): per address, one host with 2^64 of them
would have no limit. IPv4-mapped IPv6 addresses count as their IPv4 address.
Of `limits.max_preauth_total`, `limits.familiar_reserve` slots are taken only
by familiar sources (below), so that a flood from many unfamiliar addresses
cannot keep the real users out. Refusals are reported in the audit log per
source and reason, the first at once and then one count per interval
(`Refusals`): a flood of a million connections is a few lines, not a million.

**Turns.**
A flood of connections from unfamiliar addresses (a distributed brute force, a
spray) is refused by the defense before any credential check, but every one of
those connections still costs the event loop a TLS handshake, a command parse, a
precheck and an audit line. At about a thousand attempts a second one core is
saturated, and a real user's handshake waits in the same FIFO queue as the
attacker's (bench/defense.py measured her p99 going from 20 ms to 2.3 s).

So the expensive first step of a connection, its TLS handshake (implicit or
STARTTLS), takes a *turn*:

- a familiar source (a configured trusted network, or an address from which
  someone logged in successfully in the last `FAMILIAR_TTL` seconds) never waits;
- unfamiliar sources share `limit` concurrent turns. The limit follows the event
  loop's lag, as TCP follows packet loss (AIMD): every `SAMPLE_INTERVAL` a sleeper
  measures how late it woke; lag above `TARGET_LAG` sets the limit to `DECREASE`
  times the turns in use; lag below it grows the limit by one while connections
  wait, and doubles it when none does, between `MIN_LIMIT` (the ceiling if that is
  lower) and the ceiling `limits.max_handshakes` (HAProxy's `maxsslconn`). On an
  idle or merely busy gateway the limit sits at the ceiling and nobody waits
  unless the ceiling is reached; a saturated loop makes unfamiliar handshakes
  queue (FIFO, up to the handshake timeout) behind familiar ones.

Turns are a scheduling preference, not a security decision: nothing here refuses
a login or reveals anything to a client. An attacker on a familiar address (a
NAT shared with real users) is merely not slowed by it; the defense still
decides. The controller is pure (`AimdLimit`); `Admission` is its asyncio shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable

from imapguard.errors import ImapguardError
from imapguard.net import masked

__all__ = [
    "DECREASE",
    "FAMILIAR_TTL",
    "MIN_LIMIT",
    "OTHER_SOURCES",
    "REFUSALS_MAX",
    "SAMPLE_INTERVAL",
    "TARGET_LAG",
    "UNNAMED",
    "Admission",
    "AdmissionShed",
    "AimdLimit",
    "PreauthSlots",
    "Refusals",
    "source_key",
]

# A login is a handful of loop turns (handshake flights, greeting, LOGIN, the
# upstream's answers); 10 ms of lag per turn keeps a real user's login well under
# 100 ms while the loop is saturated.
TARGET_LAG = 0.010
SAMPLE_INTERVAL = 0.020
# Halve slowly: a single late wake-up (a GC pause) should not throttle much.
DECREASE = 0.75
# Enough concurrent handshakes to keep one core busy over loopback round trips.
MIN_LIMIT = 8
# Addresses with a recent successful login; a device's address rarely lives
# longer than a day (DHCP leases, mobile networks).
FAMILIAR_TTL = 24 * 3600.0
# Bounded memory: about 100 bytes an entry.
FAMILIAR_MAX = 100_000
# Sources with refusals reported apart per interval; the rest are summed under
# OTHER_SOURCES (a distributed flood: the count matters, not a million lines).
REFUSALS_MAX = 10_000
OTHER_SOURCES = "(other sources)"

#: The "source" of connections from a trusted proxy whose PROXY header has not
#: named their client yet (imapguard.gateway.proxied): not limited per source.
UNNAMED = "(behind a proxy, not named yet)"

PER_SOURCE = "per-source pre-auth limit"
TOTAL = "total pre-auth limit"
UNFAMILIAR = "pre-auth limit for unfamiliar sources"


def source_key(ip: str) -> str:
    """What a per-source limit counts: the IPv4 address, or the IPv6 /64."""
    return masked(ip, 32, 64)


class PreauthSlots:
    """Pre-auth connections per source and in total (see the module docstring)."""

    def __init__(
        self, *, per_source: int, total: int, reserve: int, familiar: Callable[[str], bool]
    ) -> None:
        self.per_source = per_source
        self.total = total
        self.reserve = reserve
        self._familiar = familiar
        self._by_source: dict[str, int] = {}
        self.in_use = 0

    def configure(self, *, per_source: int, total: int, reserve: int) -> None:
        """A reload: new limits for new connections; slots held are kept."""
        self.per_source, self.total, self.reserve = per_source, total, reserve

    def take(self, ip: str) -> tuple[str, str | None]:
        """(source key, None) with a slot taken, or (source key, why refused)."""
        key = source_key(ip)
        held = self._by_source.get(key, 0)
        if held >= self.per_source:
            return key, PER_SOURCE
        if self.in_use >= self.total - self.reserve:
            # Only now ask who it is: a dict lookup, and the trusted networks.
            if self.in_use >= self.total:
                return key, TOTAL
            if not self._familiar(ip):
                return key, UNFAMILIAR
        self._by_source[key] = held + 1
        self.in_use += 1
        return key, None

    def take_unnamed(self) -> tuple[str, str | None]:
        """A slot of the total only, for a connection whose source is not known
        yet (a proxy's, before its header): (UNNAMED, None), or (UNNAMED, why
        refused). The per-source limit and the familiar reserve are checked when
        the slot is taken again under the source the header names (`take`)."""
        if self.in_use >= self.total:
            return UNNAMED, TOTAL
        self._by_source[UNNAMED] = self._by_source.get(UNNAMED, 0) + 1
        self.in_use += 1
        return UNNAMED, None

    def give_back(self, key: str) -> None:
        held = self._by_source[key] - 1
        if held:
            self._by_source[key] = held
        else:
            del self._by_source[key]
        self.in_use -= 1

    def held(self, key: str) -> int:
        return self._by_source.get(key, 0)


class Refusals:
    """Refused connections per (source, reason) for the audit log: the first of a
    source and reason in an interval is reported at once, the rest as one count
    when the interval ends (`drain`)."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], int] = {}

    def note(self, key: str, reason: str) -> bool:
        """Count one refusal; True if it is the first of (key, reason): report it now."""
        if (key, reason) not in self._pending and len(self._pending) >= REFUSALS_MAX:
            key = OTHER_SOURCES
        count = self._pending.get((key, reason))
        self._pending[(key, reason)] = 0 if count is None else count + 1
        return count is None

    def drain(self) -> list[tuple[str, str, int]]:
        """(source, reason, count) of the refusals not reported yet; a new interval."""
        pending = [(key, reason, n) for (key, reason), n in self._pending.items() if n]
        self._pending.clear()
        return pending


class AdmissionShed(ImapguardError):
    """An unfamiliar connection waited for its turn longer than allowed."""


class AimdLimit:
    """The concurrency limit for unfamiliar handshakes, driven by lag samples."""

    def __init__(self, ceiling: int, *, floor: int = MIN_LIMIT, target: float = TARGET_LAG):
        self.ceiling = max(ceiling, floor)
        self.floor = floor
        self.target = target
        self.value = self.ceiling

    @property
    def saturated(self) -> bool:
        """Throttling in earnest (not one late wake-up): below half the ceiling."""
        return self.value <= self.ceiling // 2

    def sample(self, lag: float, active: int, waiting: int) -> int:
        """One lag sample, with the turns in use and the connections waiting."""
        if lag > self.target:
            # Relative to what is in flight: a ceiling nobody reached says nothing.
            self.value = max(self.floor, int(min(self.value, active) * DECREASE))
        elif waiting:
            self.value = min(self.ceiling, self.value + 1)  # probe upwards, gently
        else:
            self.value = min(self.ceiling, self.value * 2)  # nobody held back: no limit
        return self.value


class Admission:
    def __init__(
        self,
        *,
        ceiling: int,
        trusted: Callable[[str], bool] = lambda ip: False,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool, int, int], None] | None = None,
    ) -> None:
        self.limit = AimdLimit(ceiling, floor=min(MIN_LIMIT, ceiling))
        self._trusted = trusted
        self._clock = clock
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._on_change = on_change
        self.shed = 0  # unfamiliar connections that gave up waiting (since the last change)
        self.waited = 0  # unfamiliar connections that had to wait

    def configure(self, ceiling: int, trusted: Callable[[str], bool]) -> None:
        """A reload: new cap and trusted networks; turns held and waiting are kept."""
        self.limit.floor = min(MIN_LIMIT, ceiling)
        self.limit.ceiling = max(ceiling, self.limit.floor)
        self.limit.value = max(self.limit.floor, min(self.limit.value, self.limit.ceiling))
        self._trusted = trusted

    # -- who is familiar ----------------------------------------------------------

    def note_success(self, ip: str) -> None:
        self._recent[ip] = self._clock() + FAMILIAR_TTL
        self._recent.move_to_end(ip)
        while len(self._recent) > FAMILIAR_MAX:
            self._recent.popitem(last=False)

    def familiar(self, ip: str) -> bool:
        expires = self._recent.get(ip)
        if expires is not None:
            if expires > self._clock():
                return True
            del self._recent[ip]
        return self._trusted(ip)

    # -- turns --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(self, ip: str, patience: float) -> AsyncIterator[None]:
        """Hold a handshake turn; raises AdmissionShed after `patience` seconds of waiting."""
        if self.familiar(ip):
            yield
            return
        if self._active >= self.limit.value or self._waiters:
            self.waited += 1
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), patience)
            except TimeoutError:
                if waiter.done():  # granted just as the clock ran out: give it back
                    self._release()
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                self.shed += 1
                raise AdmissionShed from None
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
        else:
            self._active += 1
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self._active -= 1
        self._wake()

    def _wake(self) -> None:
        # A granted waiter inherits the slot (the count does not drop and rise).
        while self._waiters and self._active < self.limit.value:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._active += 1
            waiter.set_result(None)

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    # -- the lag sensor -----------------------------------------------------------

    async def monitor(self) -> None:
        """Run forever: sample the loop's lag and adapt the limit."""
        loop = asyncio.get_running_loop()
        saturated = False
        while True:
            start = loop.time()
            await asyncio.sleep(SAMPLE_INTERVAL)
            lag = loop.time() - start - SAMPLE_INTERVAL
            self.limit.sample(lag, self._active, len(self._waiters))
            self._wake()
            # Throttling is news only when someone had to wait for it.
            busy = self.limit.saturated and bool(self._waiters or self.waited)
            if busy != saturated:
                saturated = busy
                if self._on_change is not None:
                    self._on_change(saturated, self.waited, self.shed)
                self.waited = self.shed = 0
