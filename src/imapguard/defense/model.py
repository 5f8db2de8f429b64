"""What crosses the engine's boundary: the attempt it judges and the verdict it gives.

`Defense.attempt` builds an `Attempt`; `Defense.precheck` answers a `Verdict`;
the caller reports the outcome with a `FailureKind` (or a success).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from imapguard.defense.counters import Block, Target
from imapguard.defense.posture import Posture

__all__ = ["Action", "Attempt", "FailureKind", "Verdict"]


class Action(enum.Enum):
    ALLOW = "allow"
    DELAY = "delay"
    BLOCKED = "blocked"


class FailureKind(enum.Enum):
    """What failed. Refusals by the precheck or by policy are never recorded."""

    CREDENTIAL = "credential"  # a wrong password, app password or token: a guess
    FACTOR = "factor"  # a correct password without a sufficient second factor
    MALFORMED = "malformed"  # no usable account name (counted per source only)


@dataclass(frozen=True)
class Attempt:
    """One login attempt as the defense sees it (build it with `Defense.attempt`)."""

    ip: str  # normalized (an IPv4-mapped IPv6 address is IPv4)
    network: str  # its /24 or /64
    user: str | None  # the canonical account, None when the name was unusable
    credential_fp: str | None  # per-account fingerprint of the presented secret
    spray_fps: tuple[str, ...]  # login-free: (current epoch, previous); () without a password
    method: str
    listener: str
    trusted_device: bool = False  # the caller found a trusted device for (user, source)


@dataclass(frozen=True)
class Verdict:
    """`action` is what to do now; `would*` what enforcement does (equal to it
    unless log-only). `block` is the block that applies (enforced or not)."""

    action: Action
    delay: float = 0.0
    block: Block | None = None
    would: Action = Action.ALLOW
    would_delay: float = 0.0
    familiar: bool = False
    posture: Posture = Posture.NORMAL
    # The posture is UNDER_ATTACK and so is this account: a trusted device's
    # password alone is not enough for this login (ask for a fresh factor).
    require_factor: bool = False

    @property
    def would_block(self) -> bool:
        """Log-only: a block applies but is not enforced."""
        return self.would is Action.BLOCKED and self.action is not Action.BLOCKED

    @property
    def reason(self) -> str | None:
        return self.block.reason if self.block is not None else None

    @property
    def target(self) -> Target | None:
        return self.block.target if self.block is not None else None

    @property
    def expires(self) -> float | None:
        return self.block.expires if self.block is not None else None
