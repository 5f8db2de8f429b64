"""Shared harness of the defense tests (no tests here): an injected clock, the
engine over an in-memory or a SQLite store (writer + read-only reader, as the
gateway uses them), and `login()` driving one attempt the way the chokepoint
does: attempt -> precheck -> (unless refused) record_failure / record_success."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from imapguard.defense import (
    Action,
    BlockPlaced,
    CounterStore,
    Defense,
    DefenseEvent,
    DefenseSettings,
    FailureKind,
    Fingerprinter,
    MemoryCounterStore,
    PostureChanged,
    SprayDetected,
    TargetKind,
    Verdict,
)
from imapguard.secret import Secret
from imapguard.state.sqlite import open_reader, open_store

E = TypeVar("E", BlockPlaced, SprayDetected, PostureChanged)
STORES = ["memory", "sqlite"]
KEY = Secret(b"defense-test-server-key-32-bytes!!")
# 2023-11-14 22:13:20 UTC; a day boundary (fingerprint epoch) is 6,400 s away.
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    defense: Defense
    clock: Clock
    store: CounterStore
    events: list[DefenseEvent] = field(default_factory=list)

    def login(
        self,
        ip: str,
        user: str | None,
        password: str,
        *,
        ok: bool,
        trusted_device: bool = False,
        kind: FailureKind = FailureKind.CREDENTIAL,
    ) -> Verdict:
        attempt = self.defense.attempt(
            ip,
            user,
            Secret(password),
            method="password",
            listener="imaps",
            trusted_device=trusted_device,
        )
        verdict = self.defense.precheck(attempt)
        if verdict.action is Action.BLOCKED:
            return verdict
        if ok:
            self.events += self.defense.record_success(attempt)
        else:
            self.events += self.defense.record_failure(attempt, kind, verdict.familiar)
        return verdict

    def block_kinds(self) -> set[TargetKind]:
        return {b.target.kind for b in self.defense.blocks()}

    def of(self, cls: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, cls)]


Factory = Callable[..., Harness]


@contextmanager
def harnesses(kind: str, tmp_path: Path) -> Iterator[Factory]:
    """A factory of harnesses; every harness from one factory shares one store
    (several gateway nodes), each with its own Defense, clock and reader."""
    closers: list[Callable[[], None]] = []
    shared: MemoryCounterStore | None = None
    url = f"sqlite:///{tmp_path}/state.db"

    def make(
        settings: DefenseSettings | None = None, *, clock: Clock | None = None, seed: int = 1
    ) -> Harness:
        nonlocal shared
        clock = clock or Clock()
        settings = settings or DefenseSettings()
        store: CounterStore
        reader: CounterStore
        if kind == "memory":
            shared = shared or MemoryCounterStore()
            store = reader = shared
        else:
            writer = open_store(url)
            read_only = open_reader(url)
            closers.extend([writer.close, read_only.close])
            store, reader = writer, read_only
        defense = Defense(
            settings,
            store,
            clock,
            random.Random(seed),
            fingerprints=Fingerprinter(KEY, epoch_seconds=settings.fingerprint_epoch),
            reader=reader,
        )
        return Harness(defense, clock, store)

    try:
        yield make
    finally:
        for close in closers:
            close()
