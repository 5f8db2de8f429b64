"""Brute-force and spraying defense: counters, blocks, smart lockout, posture.

A pure, synchronous core (`engine.Defense`) over a shared `counters.CounterStore`
(SQLite now, Redis later); the authentication chokepoint calls it in a fixed
order (see `engine`). The modules:

    counters      the store interface, Target/Block, an in-memory store
    fingerprints  keyed, truncated password fingerprints (per account, login-free)
    posture       the under-attack posture (pure)
    events        BlockPlaced, SprayDetected, PostureChanged (and their audit records)
    model         Attempt, Verdict, Action, FailureKind
    sources       a source parsed once; allowlist and trusted networks
    limits        thresholds under a posture, windows, delays, block durations
    posture_store the shared posture: global counts, evaluation
    blocks        placing and lifting blocks
    recording     the write path: failures and successes
    spray         the one-password-many-accounts rule
    owner         an account owner's "not me": blocks for that account, shared addresses spared
    engine        Defense: the facade and the precheck

Its settings are the `[defense]` section, imapguard.config.DefenseConfig (every
threshold, with where its number comes from); `DefenseSettings` is that class
under the name this package has always exported.
"""

from imapguard.config.defense import MAX_DELAY, DefenseConfig
from imapguard.defense.counters import (
    Block,
    CounterStore,
    MemoryCounterStore,
    Target,
    TargetKind,
)
from imapguard.defense.engine import (
    Action,
    Attempt,
    Defense,
    FailureKind,
    Verdict,
)
from imapguard.defense.events import BlockPlaced, DefenseEvent, PostureChanged, SprayDetected
from imapguard.defense.fingerprints import Fingerprinter
from imapguard.defense.posture import Posture, PostureState

DefenseSettings = DefenseConfig

__all__ = [
    "MAX_DELAY",
    "Action",
    "Attempt",
    "Block",
    "BlockPlaced",
    "CounterStore",
    "Defense",
    "DefenseEvent",
    "DefenseSettings",
    "FailureKind",
    "Fingerprinter",
    "MemoryCounterStore",
    "Posture",
    "PostureChanged",
    "PostureState",
    "SprayDetected",
    "Target",
    "TargetKind",
    "Verdict",
]
