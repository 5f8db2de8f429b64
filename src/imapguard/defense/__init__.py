"""Brute-force and spraying defense: counters, blocks, smart lockout, posture.

A pure, synchronous core (`engine.Defense`) over a shared `counters.CounterStore`
(SQLite now, Redis later); the authentication chokepoint calls it in a fixed
order (see `engine`). The modules:

    counters      the store interface, Target/Block, an in-memory store
    fingerprints  keyed, truncated password fingerprints (per account, login-free)
    posture       the under-attack posture (pure)
    events        BlockPlaced, SprayDetected, PostureChanged
    engine        Attempt, Verdict, Defense

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
    normalize_ip,
    source_network,
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
    "normalize_ip",
    "source_network",
]
