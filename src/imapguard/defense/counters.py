"""What the defense remembers: bucketed counters, distinct sets, blocks, values.

One interface, `CounterStore`, with three implementations: `MemoryCounterStore`
here, `SqliteStore` (`imapguard.state.sqlite.counters`) and `RedisCounterStore`
(`imapguard.state.redis.counters`, for several nodes), and tests/conformance/
holds them all to the same behaviour. Every operation was chosen so that it is
one or two Redis commands (the Redis store makes each check-and-set one Lua
script and keeps the logical expiry beside each entry; see there):

    bucket_incr(key, b, n, exp, now)   INCRBY key:b n; EXPIREAT key:b exp
    bucket_counts(key, buckets, now)   MGET key:b1 key:b2 ...
    member_add(key, b, m, exp)         SADD key:b m (or PFADD); EXPIREAT key:b exp
    members_add(entries, b, exp)       the same for several (key, member), pipelined
    member_seen(key, buckets, m, now)  SISMEMBER on each bucket (pipelined)
    distinct_count(keys, buckets, ..)  SUNIONSTORE + SCARD (or PFCOUNT k1 k2 ...)
    distinct_counts(keys, buckets, ..) the same per key (each its own union), pipelined
    distinct_members(keys, buckets, ..) SUNION
    buckets_forget(keys, buckets)      DEL key:b ...
    block_put / blocks_get             SET block:kind:value json EXAT exp / MGET
    blocks_list / block_delete         ZRANGEBYSCORE on an expiry index / DEL + ZREM
    values_get / value_put             MGET / SET name value EXAT exp
    value_swap                         compare-and-set (WATCH/MULTI, or a Lua script)
    defense_lookup                     one MGET of blocks and values (the precheck)
    defense_purge                      ZREMRANGEBYSCORE on the index; keys expire themselves

Rules every implementation keeps:

* Time is cut into fixed buckets (`bucket = floor(now / bucket_seconds)`); a
  window is a contiguous `range` of buckets, and a window's count is the sum
  (counters) or the union (distinct sets) over its buckets. Each bucket entry
  carries its absolute expiry (when it leaves the longest window that reads
  it), so growth is bounded by traffic times window, and `defense_purge`
  (Redis: the server itself) removes what expired.
* An expired entry is never seen, purged or not: reads take `now`.
* Inside `batch()`, a read sees the writes made before it in the batch (SQLite:
  one transaction; Redis: commands are sent at once, not queued in MULTI).
* Names (keys, members) are text chosen by the engine; members hold user names
  and keyed, truncated fingerprints, never a password.
* A write is atomic on its own (`bucket_incr`, `value_swap`: of concurrent
  callers on every process sharing the store, none is lost and exactly one swap
  wins); absence is not an error (0, False, empty); a failure of a shared store
  is raised as `imapguard.errors.StateUnavailable`.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Block",
    "CounterStore",
    "MemoryCounterStore",
    "Target",
    "TargetKind",
]


class TargetKind(enum.StrEnum):
    """What a block stops."""

    SOURCE = "source"  # one client address
    NETWORK = "network"  # its /24 (IPv4) or /64 (IPv6)
    # An account, for sources that are not familiar to it (smart lockout).
    ACCOUNT_UNFAMILIAR = "account-unfamiliar"
    # One address for one account ("ADDRESS|USER"); it stops familiar sources too.
    ACCOUNT_SOURCE = "account-source"
    # A login-free password fingerprint (a sprayed password), for unfamiliar sources.
    # SOURCE, NETWORK and ACCOUNT_SOURCE apply to every source, familiar or not.
    FINGERPRINT = "fingerprint"


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    value: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.value}"

    @property
    def key(self) -> str:
        return str(self)

    @classmethod
    def parse(cls, text: str) -> Target:
        """`KIND:VALUE` as `str()` writes it (for `blocks clear TARGET`)."""
        kind, sep, value = text.partition(":")
        if not sep or not value:
            raise ValueError(f"{text!r} is not KIND:VALUE")
        try:
            return cls(TargetKind(kind), value)
        except ValueError:
            kinds = ", ".join(k.value for k in TargetKind)
            raise ValueError(f"unknown block kind {kind!r} (one of {kinds})") from None


@dataclass(frozen=True)
class Block:
    target: Target
    reason: str
    level: int  # 1 for a first offence, n for the n-th within the offence memory
    created: float
    expires: float

    def active(self, now: float) -> bool:
        return self.expires > now


class CounterStore(Protocol):
    """The defense's state. Writers call it on the store's worker thread; the
    precheck calls `defense_lookup` (and nothing else) on the event loop."""

    def batch(self) -> AbstractContextManager[None]:
        """Several calls as one unit of work (one transaction in SQLite); a read
        inside sees the writes made before it. Batches may nest."""
        ...

    def bucket_incr(self, key: str, bucket: int, amount: int, expires: float, now: float) -> int:
        """Atomically add `amount` to a counter bucket and return its new value
        (the check-and-increment: concurrent callers each see a distinct value,
        none is lost). An expired bucket restarts from `amount`. The bucket's
        expiry becomes `expires`."""
        ...

    def bucket_counts(self, key: str, buckets: range, now: float) -> list[int]:
        """Each bucket's value in order (0 where none or expired)."""
        ...

    def member_add(self, key: str, bucket: int, member: str, expires: float) -> None:
        """Add a member to the set of (key, bucket). It is seen until at least
        `expires` (the latest given, if added again; an implementation may keep a
        whole bucket until its latest expiry)."""
        ...

    def members_add(self, entries: Sequence[tuple[str, str]], bucket: int, expires: float) -> None:
        """`member_add` of each (key, member), all in one bucket."""
        ...

    def member_seen(self, key: str, buckets: range, member: str, now: float) -> bool:
        """Is `member` in the key's set in any of the buckets (and not expired)?"""
        ...

    def distinct_count(
        self, keys: Sequence[str], buckets: range, now: float, limit: int | None = None
    ) -> int:
        """Distinct members over the keys and buckets (counting stops at `limit`)."""
        ...

    def distinct_counts(self, keys: Sequence[str], buckets: range, now: float) -> dict[str, int]:
        """Each key's own distinct count over the buckets."""
        ...

    def distinct_members(
        self, keys: Sequence[str], buckets: range, now: float, limit: int
    ) -> list[str]:
        """The distinct members over the keys and buckets, sorted, the first `limit`."""
        ...

    def buckets_forget(self, keys: Sequence[str], buckets: range) -> None:
        """Drop counters and sets of these keys in these buckets (at once, not at
        their expiry)."""
        ...

    def block_put(self, block: Block) -> None:
        """Place the block on its target, replacing any block there (the new one's
        expiry counts, even if earlier)."""
        ...

    def blocks_get(self, targets: Sequence[Target], now: float) -> list[Block]:
        """The active (unexpired) blocks among these targets."""
        ...

    def block_delete(self, target: Target) -> bool:
        """Lift the block on this target; True if there was one (expired or not)."""
        ...

    def blocks_list(self, now: float) -> list[Block]:
        """Every active block, the soonest to expire first."""
        ...

    def values_get(self, names: Sequence[str], now: float) -> dict[str, str]:
        """The values of these names that exist and have not expired."""
        ...

    def value_put(self, name: str, value: str, expires: float | None) -> None:
        """Set a value (replacing any); it expires at `expires`, or never if None."""
        ...

    def value_swap(
        self, name: str, expected: str | None, value: str, expires: float | None, now: float
    ) -> bool:
        """Atomically set `name` to `value` only if it holds `expected` (None:
        absent or expired): the compare-and-set that lets several nodes agree.
        True if it was set."""
        ...

    def values_delete(self, names: Sequence[str]) -> None:
        """Delete these values (absent ones are ignored)."""
        ...

    def defense_lookup(
        self, targets: Sequence[Target], names: Sequence[str], now: float
    ) -> tuple[list[Block], dict[str, str]]:
        """`blocks_get` and `values_get` in one round trip: the whole read of a precheck."""
        ...

    def defense_purge(self, now: float, limit: int) -> int:
        """Remove entries expired at `now` (at most `limit` of each kind: counter
        buckets, set entries, blocks, values); how many were removed. Reads never
        depend on it: it only bounds the store's size."""
        ...


@dataclass
class _Entry:
    expires: float
    count: int = 0
    members: set[str] = field(default_factory=set)


class MemoryCounterStore:
    """`CounterStore` in a dict, for unit tests and a single process. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._counters: dict[tuple[str, int], _Entry] = {}
        self._sets: dict[tuple[str, int], _Entry] = {}
        self._blocks: dict[str, Block] = {}
        self._values: dict[str, tuple[str, float | None]] = {}

    @contextmanager
    def _batch(self) -> Iterator[None]:
        with self._lock:
            yield

    def batch(self) -> AbstractContextManager[None]:
        return self._batch()

    @staticmethod
    def _live(
        table: dict[tuple[str, int], _Entry], key: str, bucket: int, now: float
    ) -> _Entry | None:
        entry = table.get((key, bucket))
        return entry if entry is not None and entry.expires > now else None

    def bucket_incr(self, key: str, bucket: int, amount: int, expires: float, now: float) -> int:
        with self._lock:
            entry = self._live(self._counters, key, bucket, now)
            if entry is None:
                entry = self._counters[(key, bucket)] = _Entry(expires)
            entry.count += amount
            entry.expires = expires
            return entry.count

    def bucket_counts(self, key: str, buckets: range, now: float) -> list[int]:
        with self._lock:
            return [
                entry.count if entry is not None else 0
                for entry in (self._live(self._counters, key, b, now) for b in buckets)
            ]

    def member_add(self, key: str, bucket: int, member: str, expires: float) -> None:
        with self._lock:
            entry = self._sets.get((key, bucket))
            if entry is None:
                entry = self._sets[(key, bucket)] = _Entry(expires)
            entry.members.add(member)
            entry.expires = max(entry.expires, expires)

    def members_add(self, entries: Sequence[tuple[str, str]], bucket: int, expires: float) -> None:
        with self._lock:
            for key, member in entries:
                self.member_add(key, bucket, member, expires)

    def member_seen(self, key: str, buckets: range, member: str, now: float) -> bool:
        with self._lock:
            return any(
                (entry := self._live(self._sets, key, b, now)) is not None
                and member in entry.members
                for b in buckets
            )

    def _union(self, keys: Sequence[str], buckets: range, now: float) -> set[str]:
        union: set[str] = set()
        for key in keys:
            for b in buckets:
                entry = self._live(self._sets, key, b, now)
                if entry is not None:
                    union |= entry.members
        return union

    def distinct_count(
        self, keys: Sequence[str], buckets: range, now: float, limit: int | None = None
    ) -> int:
        with self._lock:
            count = len(self._union(keys, buckets, now))
        return count if limit is None else min(count, limit)

    def distinct_counts(self, keys: Sequence[str], buckets: range, now: float) -> dict[str, int]:
        with self._lock:
            return {key: len(self._union([key], buckets, now)) for key in keys}

    def distinct_members(
        self, keys: Sequence[str], buckets: range, now: float, limit: int
    ) -> list[str]:
        with self._lock:
            return sorted(self._union(keys, buckets, now))[:limit]

    def buckets_forget(self, keys: Sequence[str], buckets: range) -> None:
        with self._lock:
            for key in keys:
                for b in buckets:
                    self._counters.pop((key, b), None)
                    self._sets.pop((key, b), None)

    def block_put(self, block: Block) -> None:
        with self._lock:
            self._blocks[block.target.key] = block

    def blocks_get(self, targets: Sequence[Target], now: float) -> list[Block]:
        with self._lock:
            found = (self._blocks.get(t.key) for t in targets)
            return [b for b in found if b is not None and b.active(now)]

    def block_delete(self, target: Target) -> bool:
        with self._lock:
            return self._blocks.pop(target.key, None) is not None

    def blocks_list(self, now: float) -> list[Block]:
        with self._lock:
            active = [b for b in self._blocks.values() if b.active(now)]
        return sorted(active, key=lambda b: (b.expires, b.target.key))

    def _value(self, name: str, now: float) -> str | None:
        item = self._values.get(name)
        if item is None or (item[1] is not None and item[1] <= now):
            return None
        return item[0]

    def values_get(self, names: Sequence[str], now: float) -> dict[str, str]:
        with self._lock:
            found = {name: self._value(name, now) for name in names}
        return {name: value for name, value in found.items() if value is not None}

    def value_put(self, name: str, value: str, expires: float | None) -> None:
        with self._lock:
            self._values[name] = (value, expires)

    def value_swap(
        self, name: str, expected: str | None, value: str, expires: float | None, now: float
    ) -> bool:
        with self._lock:
            if self._value(name, now) != expected:
                return False
            self._values[name] = (value, expires)
            return True

    def values_delete(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self._values.pop(name, None)

    def defense_lookup(
        self, targets: Sequence[Target], names: Sequence[str], now: float
    ) -> tuple[list[Block], dict[str, str]]:
        with self._lock:
            return self.blocks_get(targets, now), self.values_get(names, now)

    def defense_purge(self, now: float, limit: int) -> int:
        with self._lock:
            counters = [k for k, e in self._counters.items() if e.expires <= now][:limit]
            sets = [k for k, e in self._sets.items() if e.expires <= now][:limit]
            blocks = [k for k, b in self._blocks.items() if b.expires <= now][:limit]
            values = [k for k, (_, exp) in self._values.items() if exp is not None and exp <= now][
                :limit
            ]
            for bucket_key in counters:
                del self._counters[bucket_key]
            for bucket_key in sets:
                del self._sets[bucket_key]
            for key in blocks:
                del self._blocks[key]
            for key in values:
                del self._values[key]
            return len(counters) + len(sets) + len(blocks) + len(values)
