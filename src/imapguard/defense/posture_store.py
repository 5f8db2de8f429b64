"""The posture as every node shares it: global attempt, failure and spray
counts per bucket in the counter store, and the evaluation that moves the
posture between NORMAL and UNDER_ATTACK (the rule itself is `posture`, pure).

The state is one JSON value replaced by compare-and-set, so nodes agree and
exactly one node reports each transition; the mode alone is a second value,
read by every precheck.
"""

from __future__ import annotations

import math
from dataclasses import replace

from imapguard.config.defense import DefenseConfig
from imapguard.defense.counters import CounterStore, TargetKind
from imapguard.defense.events import DefenseEvent, PostureChanged, SprayDetected
from imapguard.defense.limits import POSTURE_SPARE_BUCKETS, Windows
from imapguard.defense.posture import (
    Posture,
    PostureState,
    ShortWindow,
    decide,
    fold,
    trigger_ratio,
)

__all__ = ["G_ATTEMPTS", "G_FAILURES", "G_SPRAYS", "POSTURE", "POSTURE_STATE", "PostureStore"]

POSTURE = "posture"  # the mode, read by every precheck
POSTURE_STATE = "posture-state"  # PostureState JSON, replaced by compare-and-set
G_ATTEMPTS, G_FAILURES, G_SPRAYS = "g:attempts", "g:failures", "g:sprays"
UNDER_ATTACK = Posture.UNDER_ATTACK.value


def read_posture(store: CounterStore, now: float) -> Posture:
    """The mode in force (NORMAL until one was written)."""
    value = store.values_get([POSTURE], now).get(POSTURE)
    return Posture.UNDER_ATTACK if value == UNDER_ATTACK else Posture.NORMAL


class PostureStore:
    """Counts on the writer store and re-evaluates at most every
    `posture_interval` (or at once when forced: a spray, `maintain`)."""

    def __init__(
        self,
        settings: DefenseConfig,
        store: CounterStore,
        windows: Windows,
    ) -> None:
        self._settings = settings
        self._store = store
        self._windows = windows
        self._next = -math.inf  # touched by the writers alone

    def count(self, now: float, *, failure: bool) -> None:
        """One attempt (a success or a new distinct failure)."""
        bucket = self._windows.posture_bucket(now)
        expires = self._windows.posture_expiry(bucket)
        self._store.bucket_incr(G_ATTEMPTS, bucket, 1, expires, now)
        if failure:
            self._store.bucket_incr(G_FAILURES, bucket, 1, expires, now)

    def spray(
        self,
        by: TargetKind,
        key: str,
        accounts: int,
        sources: tuple[str, ...],
        now: float,
        events: list[DefenseEvent],
    ) -> None:
        """A spray detected: it counts toward the posture, and it is an alert."""
        bucket = self._windows.posture_bucket(now)
        self._store.bucket_incr(G_SPRAYS, bucket, 1, self._windows.posture_expiry(bucket), now)
        events.append(SprayDetected(by, key, accounts, sources, self._settings.enforce))

    @staticmethod
    def state(store: CounterStore, now: float) -> PostureState | None:
        """The shared posture state (mode, since, baseline), if any was written."""
        raw = store.values_get([POSTURE_STATE], now).get(POSTURE_STATE)
        return None if raw is None else PostureState.loads(raw)

    def evaluate(self, now: float, *, force: bool = False) -> list[DefenseEvent]:
        """Fold the finished buckets into the baseline, decide, and publish a
        change (the node whose compare-and-set wins reports it)."""
        s, store = self._settings, self._store
        if not force and now < self._next:
            return []
        self._next = now + s.posture_interval
        current = self._windows.posture_bucket(now)
        kept = s.posture_buckets + POSTURE_SPARE_BUCKETS
        buckets = range(current - kept + 1, current + 1)
        failures = store.bucket_counts(G_FAILURES, buckets, now)
        attempts = store.bucket_counts(G_ATTEMPTS, buckets, now)
        short = range(current - s.posture_buckets + 1, current + 1)
        sprays = sum(store.bucket_counts(G_SPRAYS, short, now))
        raw = store.values_get([POSTURE_STATE], now).get(POSTURE_STATE)
        state = (PostureState.loads(raw) if raw is not None else None) or PostureState.start(
            s, now, current
        )
        counts = dict(zip(buckets, zip(failures, attempts, strict=True), strict=True))
        folded = fold(state, s, current, counts)
        window = ShortWindow(
            sum(failures[-s.posture_buckets :]), sum(attempts[-s.posture_buckets :]), sprays
        )
        mode = decide(folded, window, s, now)
        new = folded if mode is state.mode else replace(folded, mode=mode, since=now)
        if raw is not None and new == state:
            return []
        if not store.value_swap(POSTURE_STATE, raw, new.dumps(), None, now):
            return []  # another node moved it first; it reports what it saw
        if mode is state.mode:
            return []
        store.value_put(POSTURE, mode.value, None)
        return [
            PostureChanged(
                state.mode,
                mode,
                window.ratio,
                folded.baseline,
                trigger_ratio(s, folded.baseline),
                window.failures,
                window.attempts,
                window.sprays,
            )
        ]
