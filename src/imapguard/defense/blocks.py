"""Blocks: placing one that escalates with each offence, and lifting one
together with the counters that led to it.

A target's n-th offence within the offence memory is blocked for block_base x
block_factor^(n-1), at most block_max (longer under attack, see `limits`). The
counter names here are the ones `failures` and `spray` write for each kind of
target.
"""

from __future__ import annotations

from imapguard.config.defense import DefenseConfig
from imapguard.defense.counters import Block, CounterStore, Target, TargetKind
from imapguard.defense.events import BlockPlaced, DefenseEvent
from imapguard.defense.limits import Limits, Windows

__all__ = ["Blocks"]


def _counters(target: Target) -> list[str]:
    """The distinct-failure sets whose counts place a block on `target`."""
    value = target.value
    return {
        TargetKind.SOURCE: [f"f:src:{value}", f"a:src:{value}"],
        TargetKind.NETWORK: [f"f:net:{value}", f"a:net:{value}"],
        TargetKind.ACCOUNT_UNFAMILIAR: [f"f:acct-u:{value}", f"f:acct:{value}"],
        TargetKind.ACCOUNT_SOURCE: [f"f:pair:{value}"],
        TargetKind.FINGERPRINT: [f"s:fp:{value}", f"s:src:{value}"],
    }[target.kind]


def _values(target: Target) -> list[str]:
    """The delay levels and marks kept for `target`."""
    value = target.value
    return {
        TargetKind.SOURCE: [f"d:src:{value}"],
        TargetKind.NETWORK: [],
        TargetKind.ACCOUNT_UNFAMILIAR: [f"atk:{value}"],
        TargetKind.ACCOUNT_SOURCE: [f"d:pair:{value}"],
        TargetKind.FINGERPRINT: [],
    }[target.kind]


class Blocks:
    def __init__(self, settings: DefenseConfig, store: CounterStore, windows: Windows) -> None:
        self._settings = settings
        self._store = store
        self._windows = windows

    def place(
        self,
        target: Target,
        reason: str,
        now: float,
        limits: Limits,
        events: list[DefenseEvent],
    ) -> Block | None:
        """Place an escalating block unless one is in force already."""
        s, store = self._settings, self._store
        if store.blocks_get([target], now):
            return None
        level = store.bucket_incr(
            f"o:{target.key}", 0, 1, now + s.block_max + s.offence_memory, now
        )
        block = Block(target, reason, level, now, now + limits.block_duration(s, level))
        store.block_put(block)
        events.append(BlockPlaced(block, s.enforce))
        return block

    def clear(self, target: Target, now: float) -> bool:
        """Lift a block and forget what led to it (its counters and offence
        level), so the next failure does not place it again at once."""
        store = self._store
        with store.batch():
            removed = store.block_delete(target)
            store.buckets_forget(_counters(target), self._windows.window(now))
            store.buckets_forget([f"o:{target.key}"], range(0, 1))
            values = _values(target)
            if values:
                store.values_delete(values)
        return removed

    def unlock(self, user: str, now: float) -> list[Target]:
        """Lift the account's lockout and every (address, account) block of it;
        the targets that were blocked."""
        targets = [Target(TargetKind.ACCOUNT_UNFAMILIAR, user)] + [
            b.target
            for b in self._store.blocks_list(now)
            if b.target.kind is TargetKind.ACCOUNT_SOURCE
            and b.target.value.partition("|")[2] == user
        ]
        with self._store.batch():
            return [t for t in targets if self.clear(t, now)]
