"""The defense's counter store on Redis (`imapguard.defense.counters.CounterStore`).

Keys, under a prefix (`[state] counters_prefix`, default "imapguard:"):

    c:KEY:BUCKET    hash n (count), e (logical expiry)       a counter bucket
    s:KEY:BUCKET    sorted set member -> logical expiry       a distinct set
    b:KIND:VALUE    JSON of the block                         a block
    v:NAME          hash v (value), e (logical expiry, if any) a value
    i:c i:s i:b i:v sorted sets of the above by expiry        what the purge reads
    t               scratch for a union, inside one script

The logical expiry (the callers' clock, the protocol's `expires`) decides what
a read sees, as in every implementation; Redis's own expiry, set on every key
at the logical one plus `GRACE` seconds of its clock, frees memory even if no
node purges. Only values put without expiry (the posture's two) never expire.

Every write that must be atomic is one Lua script (`scripts.py`) or one
MULTI/EXEC; reads are pipelined into one round trip. `batch()` adds nothing:
each call is sent at once, so a read in a batch sees the writes before it.
Any Redis error (refused, timed out, READONLY, authentication) leaves as
`StateUnavailable`.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ParamSpec, TypeVar

import redis

from imapguard.defense.counters import Block, Target, TargetKind
from imapguard.errors import StateUnavailable
from imapguard.state.redis import scripts

__all__ = ["GRACE", "RedisCounterStore"]

# Seconds Redis keeps a key past its logical expiry: room for the nodes' clocks
# to differ from Redis's (a key must not vanish while a node still counts it).
GRACE = 300.0

P = ParamSpec("P")
R = TypeVar("R")


def _unavailable(operation: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn any Redis error of the call into StateUnavailable(operation)."""

    def wrap(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(*args, **kwargs)
            except redis.RedisError as exc:
                raise StateUnavailable(operation, _describe(exc)) from None

        return call

    return wrap


def _describe(exc: redis.RedisError) -> str:
    """The error's kind and first line (Redis's messages hold no secret: the
    password is never part of a command's error)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"redis {type(exc).__name__}: {text}"[:200]


def _num(value: float) -> str:
    """A float as Redis and Lua read it back exactly."""
    return repr(float(value))


def _deadline(expires: float) -> int:
    """Redis's expiry (ms since the epoch) for an entry logically expiring at
    `expires`: that plus the grace, and never in Redis's past."""
    return math.ceil((max(expires, time.time()) + GRACE) * 1000)


class RedisCounterStore:
    """`CounterStore` on one Redis (standalone or found through Sentinel),
    shared by every node and process that names it. Thread-safe: the client
    keeps a pool of connections."""

    def __init__(self, client: redis.Redis, prefix: str = "imapguard:") -> None:
        self._r = client
        self._p = prefix
        self._index = [f"{prefix}i:{kind}" for kind in ("c", "s", "b", "v")]
        self._scratch = f"{prefix}t"
        self._incr = client.register_script(scripts.INCR)
        self._members_add = client.register_script(scripts.MEMBERS_ADD)
        self._members_count = client.register_script(scripts.MEMBERS_COUNT)
        self._members_list = client.register_script(scripts.MEMBERS_LIST)
        self._put_value = client.register_script(scripts.PUT_VALUE)
        self._purge = client.register_script(scripts.PURGE)

    def close(self) -> None:
        self._r.close()

    @_unavailable("ping")
    def ping(self) -> None:
        """Reach Redis once (at start: an unreachable one is named there)."""
        self._r.ping()

    # -- keys ----------------------------------------------------------------

    def _counter(self, key: str, bucket: int) -> str:
        return f"{self._p}c:{key}:{bucket}"

    def _set(self, key: str, bucket: int) -> str:
        return f"{self._p}s:{key}:{bucket}"

    def _block(self, target: Target) -> str:
        return f"{self._p}b:{target.key}"

    def _value(self, name: str) -> str:
        return f"{self._p}v:{name}"

    # -- counters and sets ---------------------------------------------------

    def batch(self) -> AbstractContextManager[None]:
        return nullcontext()

    @_unavailable("count")
    def bucket_incr(self, key: str, bucket: int, amount: int, expires: float, now: float) -> int:
        keys = [self._counter(key, bucket), self._index[0]]
        args: list[str | int] = [amount, _num(expires), _num(now), _deadline(expires)]
        return int(self._incr(keys, args))

    @_unavailable("read counters")
    def bucket_counts(self, key: str, buckets: range, now: float) -> list[int]:
        pipe = self._r.pipeline(transaction=False)
        for b in buckets:
            pipe.hmget(self._counter(key, b), ["n", "e"])
        rows: list[list[str | None]] = pipe.execute()
        return [
            int(n) if n is not None and e is not None and float(e) > now else 0 for n, e in rows
        ]

    def member_add(self, key: str, bucket: int, member: str, expires: float) -> None:
        self.members_add([(key, member)], bucket, expires)

    @_unavailable("add members")
    def members_add(self, entries: Sequence[tuple[str, str]], bucket: int, expires: float) -> None:
        if not entries:
            return
        keys = [self._index[1], *(self._set(key, bucket) for key, _ in entries)]
        args: list[str | int] = [_num(expires), _deadline(expires)]
        args += [member for _, member in entries]
        self._members_add(keys, args)

    @_unavailable("read member")
    def member_seen(self, key: str, buckets: range, member: str, now: float) -> bool:
        pipe = self._r.pipeline(transaction=False)
        for b in buckets:
            pipe.zscore(self._set(key, b), member)
        return any(score is not None and score > now for score in pipe.execute())

    def _sets(self, keys: Sequence[str], buckets: range) -> list[str]:
        return [self._scratch, *(self._set(key, b) for key in keys for b in buckets)]

    @_unavailable("count members")
    def distinct_count(
        self, keys: Sequence[str], buckets: range, now: float, limit: int | None = None
    ) -> int:
        count = int(self._members_count(self._sets(keys, buckets), [_num(now)]))
        return count if limit is None else min(count, limit)

    @_unavailable("count members")
    def distinct_counts(self, keys: Sequence[str], buckets: range, now: float) -> dict[str, int]:
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            self._members_count(self._sets([key], buckets), [_num(now)], client=pipe)
        return {key: int(n) for key, n in zip(keys, pipe.execute(), strict=True)}

    @_unavailable("list members")
    def distinct_members(
        self, keys: Sequence[str], buckets: range, now: float, limit: int
    ) -> list[str]:
        if limit < 1:
            return []
        return list(self._members_list(self._sets(keys, buckets), [_num(now), limit]))

    @_unavailable("forget counters")
    def buckets_forget(self, keys: Sequence[str], buckets: range) -> None:
        counters = [self._counter(key, b) for key in keys for b in buckets]
        sets = [self._set(key, b) for key in keys for b in buckets]
        if not counters:
            return
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(*counters, *sets)
        pipe.zrem(self._index[0], *counters)
        pipe.zrem(self._index[1], *sets)
        pipe.execute()

    # -- blocks --------------------------------------------------------------

    @_unavailable("put block")
    def block_put(self, block: Block) -> None:
        key = self._block(block.target)
        deadline = _deadline(block.expires)
        pipe = self._r.pipeline(transaction=True)
        pipe.set(key, _dump_block(block), pxat=deadline)
        pipe.zadd(self._index[2], {key: block.expires})
        pipe.pexpireat(self._index[2], deadline, nx=True)
        pipe.pexpireat(self._index[2], deadline, gt=True)
        pipe.execute()

    @_unavailable("get blocks")
    def blocks_get(self, targets: Sequence[Target], now: float) -> list[Block]:
        if not targets:
            return []
        return _live_blocks(self._r.mget([self._block(t) for t in targets]), now)

    @_unavailable("delete block")
    def block_delete(self, target: Target) -> bool:
        key = self._block(target)
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(key)
        pipe.zrem(self._index[2], key)
        deleted, _ = pipe.execute()
        return int(deleted) > 0

    @_unavailable("list blocks")
    def blocks_list(self, now: float) -> list[Block]:
        keys = [str(k) for k in self._r.zrangebyscore(self._index[2], f"({_num(now)}", "+inf")]
        if not keys:
            return []
        blocks = _live_blocks(self._r.mget(keys), now)
        return sorted(blocks, key=lambda b: (b.expires, b.target.key))

    # -- values --------------------------------------------------------------

    @_unavailable("get values")
    def values_get(self, names: Sequence[str], now: float) -> dict[str, str]:
        pipe = self._r.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self._value(name), ["v", "e"])
        return _live_values(names, pipe.execute(), now)

    def _put(
        self,
        mode: str,
        name: str,
        expected: str | None,
        value: str,
        expires: float | None,
        now: float,
    ) -> bool:
        keys = [self._value(name), self._index[3]]
        args: list[str | int] = [
            mode,
            expected or "",
            value,
            "" if expires is None else _num(expires),
            _num(now),
            _deadline(expires if expires is not None else now),
        ]
        return int(self._put_value(keys, args)) == 1

    @_unavailable("put value")
    def value_put(self, name: str, value: str, expires: float | None) -> None:
        self._put("put", name, None, value, expires, 0.0)

    @_unavailable("swap value")
    def value_swap(
        self, name: str, expected: str | None, value: str, expires: float | None, now: float
    ) -> bool:
        return self._put(
            "create" if expected is None else "swap", name, expected, value, expires, now
        )

    @_unavailable("delete values")
    def values_delete(self, names: Sequence[str]) -> None:
        if not names:
            return
        keys = [self._value(name) for name in names]
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(*keys)
        pipe.zrem(self._index[3], *keys)
        pipe.execute()

    @_unavailable("defense lookup")
    def defense_lookup(
        self, targets: Sequence[Target], names: Sequence[str], now: float
    ) -> tuple[list[Block], dict[str, str]]:
        pipe = self._r.pipeline(transaction=False)
        if targets:
            pipe.mget([self._block(t) for t in targets])
        for name in names:
            pipe.hmget(self._value(name), ["v", "e"])
        replies = pipe.execute()
        blocks = _live_blocks(replies.pop(0), now) if targets else []
        return blocks, _live_values(names, replies, now)

    @_unavailable("purge defense")
    def defense_purge(self, now: float, limit: int) -> int:
        return int(self._purge(self._index, [_num(now), limit]))


def _dump_block(block: Block) -> str:
    t = block.target
    return json.dumps(
        [t.kind.value, t.value, block.reason, block.level, block.created, block.expires]
    )


def _live_blocks(raw: Sequence[Any], now: float) -> list[Block]:
    blocks = []
    for text in raw:
        if text is None:
            continue
        kind, value, reason, level, created, expires = json.loads(text)
        block = Block(Target(TargetKind(kind), value), reason, int(level), created, expires)
        if block.active(now):
            blocks.append(block)
    return blocks


def _live_values(names: Sequence[str], rows: Sequence[Any], now: float) -> dict[str, str]:
    return {
        name: value
        for name, (value, expires) in zip(names, rows, strict=True)
        if value is not None and (expires is None or float(expires) > now)
    }
