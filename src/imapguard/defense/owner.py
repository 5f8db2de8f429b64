"""The owner's word: the owner of an account says an address is not theirs
("this wasn't me" on a sign-in, a pending device rejected in the portal).

What it blocks, through the same escalating `Blocks` as every other rule:

* that address for that account (ACCOUNT_SOURCE, "ADDRESS|USER"): the
  account's logins from there are refused, familiar or not; nobody else's are;
* that address for everyone (SOURCE) as well, only when nothing says it is
  shared: no other account logged in successfully from it in the window
  (`sources.logged_in_accounts`, the evidence the spray rule's NAT exemption
  reads) and it is not in a trusted network. One account's word never shuts
  out a campus NAT or the webmail server (the engine's rule: an address is
  never blocked because of one account);
* nothing for an allowlisted address (the allowlist is never blocked).

An account has `OWNER_REPORTS` such reports per window (the defense's
`window`, 1 h by default), counted in the shared store ("w:acct:USER"): a
user cannot run blocks up (each one escalates) or keep the admins busy with
report after report. Past it nothing is blocked and the caller says so
(`limited`); the report itself is not counted then, so the allowance comes
back as the window moves on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imapguard.config.defense import DefenseConfig
from imapguard.defense.blocks import Blocks
from imapguard.defense.counters import CounterStore, Target, TargetKind
from imapguard.defense.events import DefenseEvent
from imapguard.defense.limits import Limits, Windows, span
from imapguard.defense.sources import SourceClasses, logged_in_accounts, source

__all__ = ["OWNER_REPORTS", "OwnerBlocks", "OwnerVerdict"]

# Reports per account and window. An owner disowns the few sign-ins of one
# incident (an attacker rarely uses more than a couple of addresses for one
# account within an hour); more than this in one window is someone using the
# button as a weapon, or a case for the admins, who are told of each anyway.
OWNER_REPORTS = 5


@dataclass(frozen=True)
class OwnerVerdict:
    """What one report left in force for the address."""

    # Blocked now: placed by this report, or in force already.
    blocked: tuple[Target, ...] = ()
    # The blocks this report placed (for the audit log).
    events: list[DefenseEvent] = field(default_factory=list)
    # The account's reports of the window were used up: nothing was blocked.
    limited: bool = False

    @property
    def everyone(self) -> bool:
        """The address is blocked for every account, not only the owner's."""
        return any(t.kind is TargetKind.SOURCE for t in self.blocked)


class OwnerBlocks:
    def __init__(
        self,
        settings: DefenseConfig,
        store: CounterStore,
        windows: Windows,
        sources: SourceClasses,
        blocks: Blocks,
    ) -> None:
        self._settings = settings
        self._store = store
        self._windows = windows
        self._sources = sources
        self._blocks = blocks

    def report(self, user: str, ip: str, reason: str, now: float, limits: Limits) -> OwnerVerdict:
        """`user`'s owner says `ip` is not theirs; the caller holds the batch."""
        store, window = self._store, self._windows.window(now)
        key = f"w:acct:{user}"
        if sum(store.bucket_counts(key, window, now)) >= OWNER_REPORTS:
            return OwnerVerdict(limited=True)
        store.bucket_incr(key, window[-1], 1, self._windows.expiry(window[-1]), now)
        address = source(ip).ip
        allowlisted, trusted = self._sources.classify(address)
        if allowlisted:
            return OwnerVerdict()
        targets = [(Target(TargetKind.ACCOUNT_SOURCE, f"{address}|{user}"), reason)]
        others = [u for u in logged_in_accounts(store, address, window, now, 2) if u != user]
        if not trusted and not others:
            within = span(self._settings.window)
            alone = f"{reason}; no other account logged in from there in {within}"
            targets.append((Target(TargetKind.SOURCE, address), alone))
        events: list[DefenseEvent] = []
        for target, why in targets:
            self._blocks.place(target, why, now, limits, events)
        return OwnerVerdict(tuple(t for t, _ in targets), events)
