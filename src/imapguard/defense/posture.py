"""The under-attack posture: a global failure ratio against its own baseline.

Why a ratio: a spray or a credential-stuffing run below every per-address
limit still moves one number, the share of logins that fail. Every node
counts, in shared one-minute buckets, *attempts* (successes plus new distinct
failures: a phone repeating its old password adds nothing) and *failures*.
The short window is the last `posture_buckets` buckets, the current one
included.

* Baseline: an exponentially weighted mean of failures and of attempts per
  completed bucket, time constant `posture_baseline` (7 days), ratio of the two
  (so a quiet minute weighs little). It starts from `posture_initial_baseline`
  with the weight of one attempt per bucket, and it is *frozen* while the
  posture is UNDER_ATTACK, so a long attack does not become the new normal.
* NORMAL -> UNDER_ATTACK when the short window holds at least
  `posture_min_failures` failures and its ratio reaches
  clamp(factor x baseline, min_ratio, max_ratio), or when it holds
  `posture_spray_alerts` spray detections.
* UNDER_ATTACK -> NORMAL only after `posture_min_duration`, with no spray in
  the short window, and once the failures fall below exit_fraction x
  min_failures or the ratio below exit_fraction x the trigger (hysteresis).

The whole state is one JSON value in the shared store, replaced by
compare-and-set, so nodes agree and exactly one node reports each transition.
This module is pure: the engine reads the counters and writes the result.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace

from imapguard.config.defense import DefenseConfig

__all__ = ["Posture", "PostureState", "ShortWindow", "decide", "fold", "trigger_ratio"]


class Posture(enum.Enum):
    NORMAL = "normal"
    UNDER_ATTACK = "under_attack"


@dataclass(frozen=True)
class ShortWindow:
    failures: int
    attempts: int
    sprays: int

    @property
    def ratio(self) -> float:
        return self.failures / self.attempts if self.attempts else 0.0


@dataclass(frozen=True)
class PostureState:
    mode: Posture
    since: float  # when `mode` began
    folded: int  # the last completed bucket folded into the baseline
    base_failures: float  # EWMA of failures per bucket
    base_attempts: float  # EWMA of attempts per bucket
    initial: float = 0.1  # the baseline while nothing was folded in

    @property
    def baseline(self) -> float:
        if self.base_attempts <= 1e-12:
            return self.initial
        return min(1.0, self.base_failures / self.base_attempts)

    @classmethod
    def start(cls, settings: DefenseConfig, now: float, bucket: int) -> PostureState:
        return cls(
            Posture.NORMAL,
            now,
            bucket - 1,
            settings.posture_initial_baseline,
            1.0,
            settings.posture_initial_baseline,
        )

    def dumps(self) -> str:
        return json.dumps(
            {
                "mode": self.mode.value,
                "since": self.since,
                "folded": self.folded,
                "f": self.base_failures,
                "a": self.base_attempts,
                "initial": self.initial,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, text: str) -> PostureState | None:
        """None for anything unreadable (the engine then starts afresh)."""
        try:
            data = json.loads(text)
            return cls(
                Posture(data["mode"]),
                float(data["since"]),
                int(data["folded"]),
                float(data["f"]),
                float(data["a"]),
                float(data["initial"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def fold(
    state: PostureState,
    settings: DefenseConfig,
    current: int,
    counts: Mapping[int, tuple[int, int]],
) -> PostureState:
    """Fold the completed buckets after `state.folded` (up to `current - 1`)
    into the baseline. `counts` maps a bucket to (failures, attempts); buckets
    it lacks (expired: nobody evaluated for a while) count as empty."""
    first, last = state.folded + 1, current - 1
    if last < first:
        return state
    if state.mode is Posture.UNDER_ATTACK:
        return replace(state, folded=last)  # frozen: an attack is not the norm
    alpha = min(1.0, settings.posture_bucket / settings.posture_baseline)
    keep = 1.0 - alpha
    # Only the buckets still held can be read; the gap before them (after a long
    # silence) is empty buckets, folded as one decay.
    low = max(first, min(counts)) if counts else last + 1
    readable = [b for b in range(low, last + 1) if b in counts]
    empty = (last - first + 1) - len(readable)
    failures = state.base_failures * keep**empty
    attempts = state.base_attempts * keep**empty
    for bucket in readable:
        f, a = counts[bucket]
        failures = keep * failures + alpha * f
        attempts = keep * attempts + alpha * a
    return replace(state, folded=last, base_failures=failures, base_attempts=attempts)


def trigger_ratio(settings: DefenseConfig, baseline: float) -> float:
    return min(
        settings.posture_max_ratio,
        max(settings.posture_min_ratio, settings.posture_factor * baseline),
    )


def decide(
    state: PostureState, window: ShortWindow, settings: DefenseConfig, now: float
) -> Posture:
    trigger = trigger_ratio(settings, state.baseline)
    spraying = settings.posture_spray_alerts > 0 and window.sprays >= settings.posture_spray_alerts
    if state.mode is Posture.NORMAL:
        flood = window.failures >= settings.posture_min_failures and window.ratio >= trigger
        return Posture.UNDER_ATTACK if flood or spraying else Posture.NORMAL
    if now - state.since < settings.posture_min_duration or window.sprays > 0:
        return Posture.UNDER_ATTACK
    exit_fraction = settings.posture_exit_fraction
    calm = (
        window.failures < settings.posture_min_failures * exit_fraction
        or window.ratio < trigger * exit_fraction
    )
    return Posture.NORMAL if calm else Posture.UNDER_ATTACK
