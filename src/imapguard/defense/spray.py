"""Password spraying seen from the password: one login-free fingerprint that
fails on `spray_accounts` accounts, from anywhere, within the window.

The fingerprint is blocked (it then refuses that password from unfamiliar
sources everywhere), and so is every source that tried it, except shared ones
(an address with `shared_source_accounts` successful accounts is a NAT: the
fingerprint block already stops the spray there). Counted under the current
and the previous epoch's fingerprint, so a window spanning the key rotation
still adds up.
"""

from __future__ import annotations

from imapguard.config.defense import DefenseConfig
from imapguard.defense.blocks import Blocks
from imapguard.defense.counters import CounterStore, Target, TargetKind
from imapguard.defense.events import DefenseEvent
from imapguard.defense.limits import Limits, Windows, span
from imapguard.defense.model import Attempt
from imapguard.defense.posture_store import PostureStore
from imapguard.defense.sources import SourceClasses, logged_in_accounts

__all__ = ["SprayRule"]


class SprayRule:
    def __init__(
        self,
        settings: DefenseConfig,
        store: CounterStore,
        windows: Windows,
        sources: SourceClasses,
        blocks: Blocks,
        posture: PostureStore,
    ) -> None:
        self._settings = settings
        self._store = store
        self._windows = windows
        self._sources = sources
        self._blocks = blocks
        self._posture = posture

    def check(
        self, attempt: Attempt, now: float, limits: Limits, events: list[DefenseEvent]
    ) -> None:
        """After a credential failure joined the fingerprint's sets: block the
        fingerprint and its sources once it crossed the limit."""
        s, store = self._settings, self._store
        window = self._windows.window(now)
        current = attempt.spray_fps[0]
        accounts = store.distinct_count([f"s:fp:{fp}" for fp in attempt.spray_fps], window, now)
        if accounts < limits.spray_accounts:
            return
        fingerprints = [Target(TargetKind.FINGERPRINT, fp) for fp in attempt.spray_fps]
        if store.blocks_get(fingerprints, now):
            return  # already detected (a familiar source failing with it again)
        block = self._blocks.place(
            fingerprints[0],
            f"one password failed on {accounts} accounts in {span(s.window)}"
            f" (limit {limits.spray_accounts}): password spraying",
            now,
            limits,
            events,
        )
        if block is None:
            return
        participants = store.distinct_members(
            [f"s:src:{fp}" for fp in attempt.spray_fps], window, now, s.spray_block_sources
        )
        blocked: list[str] = []
        for ip in participants:
            if self._sources.allowlisted(ip):
                continue
            shared = logged_in_accounts(store, ip, window, now, s.shared_source_accounts)
            if len(shared) >= s.shared_source_accounts:
                continue  # a NAT: the fingerprint block stops the spray
            placed = self._blocks.place(
                Target(TargetKind.SOURCE, ip),
                f"tried a sprayed password (fingerprint {current}, {accounts} accounts)",
                now,
                limits,
                events,
            )
            if placed is not None:
                blocked.append(ip)
        self._posture.spray(TargetKind.FINGERPRINT, current, accounts, tuple(blocked), now, events)
