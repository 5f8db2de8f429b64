"""What the defense reports: typed records, not log lines.

`record_failure`, `record_success` and `maintain` return them; the caller
writes each to the audit log (`record()` is its audit record, `event` the
kind's name), counts it in metrics, and notifies (an ACCOUNT_UNFAMILIAR
block is the owner's "lockout" notice). Nothing here holds a password: a
fingerprint is keyed and truncated (see `fingerprints`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from imapguard.audit import events as audit
from imapguard.defense.counters import Block, TargetKind
from imapguard.defense.posture import Posture

__all__ = ["BlockPlaced", "DefenseEvent", "PostureChanged", "SprayDetected"]


@dataclass(frozen=True)
class BlockPlaced:
    event: ClassVar[str] = "defense_block"
    block: Block
    enforced: bool  # False in log-only mode: recorded, not applied

    def record(self, session: str | None = None) -> audit.DefenseBlock:
        block = self.block
        return audit.DefenseBlock(
            session=session,
            target=str(block.target),
            target_kind=block.target.kind.value,
            reason=block.reason,
            level=block.level,
            expires=block.expires,
            duration=round(block.expires - block.created, 3),
            enforced=self.enforced,
        )


@dataclass(frozen=True)
class SprayDetected:
    """One password on many accounts (`by` FINGERPRINT), or one address or
    network failing on many accounts (`by` SOURCE / NETWORK): an alert."""

    event: ClassVar[str] = "spray_alert"
    by: TargetKind
    key: str  # the login-free fingerprint, the address or the network
    accounts: int
    sources: tuple[str, ...]  # the sources blocked for it
    enforced: bool

    def record(self, session: str | None = None) -> audit.SprayAlert:
        return audit.SprayAlert(
            session=session,
            by=self.by.value,
            key=self.key,
            accounts=self.accounts,
            sources=list(self.sources),
            enforced=self.enforced,
        )


@dataclass(frozen=True)
class PostureChanged:
    event: ClassVar[str] = "posture"
    before: Posture
    after: Posture
    ratio: float  # failures / attempts over the short window
    baseline: float
    trigger: float  # the ratio that raises the posture
    failures: int
    attempts: int
    sprays: int

    def record(self, session: str | None = None) -> audit.Posture:
        return audit.Posture(
            session=session,
            before=self.before.value,
            after=self.after.value,
            ratio=round(self.ratio, 4),
            baseline=round(self.baseline, 4),
            trigger=round(self.trigger, 4),
            failures=self.failures,
            attempts=self.attempts,
            sprays=self.sprays,
        )


DefenseEvent = BlockPlaced | SprayDetected | PostureChanged
