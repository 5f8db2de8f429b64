"""The numbers in force: thresholds under a posture, windows, delays, block durations.

Pure arithmetic over `DefenseConfig`; the engine and its rules ask here
instead of each doing its own sums, so one rule of escalation holds everywhere.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from imapguard.config.defense import MAX_DELAY, DefenseConfig
from imapguard.defense.posture import Posture

__all__ = ["POSTURE_SPARE_BUCKETS", "Limits", "Windows", "delay", "span"]

# Posture buckets kept beyond the short window, for the baseline fold.
POSTURE_SPARE_BUCKETS = 5


@dataclass(frozen=True)
class Limits:
    """The thresholds in force under the current posture."""

    pair_free: int
    source_free: int
    pair_block: int
    account_lockout: int
    account_attacked: int
    source_failures: int
    source_accounts: int
    network_failures: int
    network_accounts: int
    spray_accounts: int
    duration_factor: float

    @classmethod
    def under(cls, settings: DefenseConfig, posture: Posture) -> Limits:
        """UNDER_ATTACK scales every limit by `attack_threshold_factor` (never below
        what keeps the rule meaningful) and blocks by `attack_duration_factor`."""
        s = settings
        if posture is Posture.NORMAL:
            factor, duration = 1.0, 1.0
        else:
            factor, duration = s.attack_threshold_factor, s.attack_duration_factor

        def scaled(n: int, least: int = 1) -> int:
            return max(least, math.ceil(n * factor))

        return cls(
            pair_free=scaled(s.pair_free, 0),
            source_free=scaled(s.source_free, 0),
            pair_block=scaled(s.pair_block),
            account_lockout=scaled(s.account_lockout),
            account_attacked=scaled(s.account_attacked),
            source_failures=scaled(s.source_failures),
            source_accounts=scaled(s.source_accounts, 2),
            network_failures=scaled(s.network_failures),
            network_accounts=scaled(s.network_accounts, 2),
            spray_accounts=scaled(s.spray_accounts, 2),
            duration_factor=duration,
        )

    def block_duration(self, settings: DefenseConfig, level: int) -> float:
        """The n-th offence of a target: block_base x block_factor^(n-1), longer
        under attack, at most block_max."""
        duration = settings.block_base * settings.block_factor ** min(level - 1, 64)
        return min(duration * self.duration_factor, settings.block_max)


class Windows:
    """Which buckets a moment falls in: the counting window and the posture's."""

    def __init__(self, settings: DefenseConfig) -> None:
        self._settings = settings

    def window(self, now: float) -> range:
        """The buckets of the counting window that ends with the current one."""
        s = self._settings
        last = math.floor(now / s.bucket_seconds)
        return range(last - s.window_buckets + 1, last + 1)

    def expiry(self, bucket: int) -> float:
        """When a bucket leaves the window (its entries are then dead)."""
        s = self._settings
        return (bucket + s.window_buckets) * s.bucket_seconds

    def posture_bucket(self, now: float) -> int:
        return math.floor(now / self._settings.posture_bucket)

    def posture_expiry(self, bucket: int) -> float:
        """When a posture bucket is no longer needed, baseline fold included."""
        kept = self._settings.posture_buckets + POSTURE_SPARE_BUCKETS
        return (bucket + kept) * self._settings.posture_bucket


def delay(settings: DefenseConfig, rng: random.Random, level: int) -> float:
    """The wait at delay level n: delay_base x 2^(n-1) up to delay_max, x (1 +-
    jitter), always under MAX_DELAY (mail clients give up near 30 s)."""
    s = settings
    base = min(s.delay_base * 2.0 ** min(level - 1, 32), s.delay_max)
    jittered = base * (1.0 + rng.uniform(-s.delay_jitter, s.delay_jitter))
    return min(max(0.0, jittered), math.nextafter(MAX_DELAY, 0.0))


def span(seconds: float) -> str:
    """A duration for a block's reason: `1 h`, `10 min`, `90 s`."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
