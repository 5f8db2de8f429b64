"""The defense engine: how often have you failed, and what follows from it.

Sans-IO: synchronous, deterministic given the injected clock (wall time, shared
by nodes), RNG and store; it never sleeps and never awaits. The caller does the
awaiting, in this fixed order:

1. `attempt()` builds the `Attempt` (fingerprints: three HMACs, ~6 µs);
2. `precheck()` READS only (one `defense_lookup` on the reader: two indexed
   point queries), before any expensive check: on the event loop for the
   embedded store, on a read thread for a networked one (`auth.reads`). It answers
   BLOCKED (fail the login uniformly, check nothing), DELAY (await
   `asyncio.sleep(verdict.delay)`, then check) or ALLOW;
3. the credential check;
4. `record_failure()` or `record_success()` WRITE, on the store's worker thread
   (one transaction). Nothing is recorded for a login that precheck refused or
   that a policy denied (wforce PR #75: an engine that counts its own refusals
   feeds on itself).

Rules:

* **Distinct wrong passwords.** A failure counts only if its per-account
  fingerprint is new for the account within the window; a repeat changes no
  counter at all (not even the posture's), so a phone retrying an old password
  a hundred times is one failure.
* **Keys** (`recording`). Each new failure is added to distinct sets per
  (account, source), account (unfamiliar sources only), source address, source
  /24 or /64, and login-free fingerprint (`spray`); sets of failing *accounts*
  per address and network; sets of successful accounts per address and network.
  All are windows of fixed buckets (`counters`, `limits`).
* **Delays** grow per key, not per connection: past `pair_free` distinct
  failures on (account, source), or `source_free` from the source, the next
  attempt waits delay_base x 2^(n-1), at most delay_max, x (1 +- jitter): always
  under 25 s (clients time out near 30 s). The level is written by the failure
  and read by the precheck; a success from the pair clears the pair's level and
  counters (ownCloud, fail2ban #1747), never the account's (Bongo: a login
  forgives no guesses at the password).
* **Blocks** (`blocks`; `Target` kinds), each with a reason and an expiry, escalating
  block_base x block_factor^(n-1) up to block_max for the n-th offence of the
  target within the offence memory (x attack_duration_factor under attack):
  - SOURCE / NETWORK: that address or network itself failed on too many
    distinct accounts (a spray: alert) or passwords; applies to everyone,
    familiar or not (an address that sprays is hostile; shared addresses are
    protected by the NAT rule below, not by familiarity);
  - ACCOUNT_SOURCE: one address made `pair_block` distinct failures on one
    account; that address, for that account only; this is what bounds a
    familiar source guessing at its own account;
  - ACCOUNT_UNFAMILIAR (smart lockout): `account_lockout` distinct failures from
    unfamiliar sources; refuses unfamiliar sources for that account, while its
    familiar sources keep working. Once over the threshold, every further new
    failure in the window locks again, for longer (Entra);
  - FINGERPRINT: one login-free fingerprint failed on `spray_accounts` accounts
    (a spray: alert, posture); refuses that password from unfamiliar sources
    everywhere, and blocks the sources that tried it, except shared ones.
  An address is NEVER blocked because an account crossed a threshold (Stalwart's
  `block_ip` on a per-login limit bans every NAT neighbour).
* **Familiar**: the caller's trusted device, a configured trusted network, an
  allowlisted source, or the (account, /24 or /64) of a successful login with a
  factor in the last `familiar_ttl` (AD FS ESL learns familiar IPs from
  successes). Familiar and unfamiliar failures have separate counters: the
  (account, source) pair for the first, the account's unfamiliar set for the second.
* **NAT** (many users, one address): limits per address count distinct
  accounts and passwords, and each account that logged in successfully from the
  address in the window raises them (`credit_*`); one account, one credit, so
  an attacker's own valid account buys almost nothing. An address with
  `shared_source_accounts` successful accounts is not blocked for merely taking
  part in a spray: the fingerprint block stops the spray.
* **Posture** (`posture`, shared through `posture_store`): UNDER_ATTACK lowers
  every limit (x attack_threshold_factor), lengthens blocks, and sets
  `Verdict.require_factor` for accounts under attack: no password-only login
  from a trusted device.
* **Log-only** (`enforce = False`): everything is counted, blocks and events are
  recorded, verdicts carry what would happen (`would`, `would_delay`,
  `would_block`) with action ALLOW and no delay.
* The allowlist is never counted per source, delayed or blocked.

Threads: `precheck` runs with the reader store on the event loop, or on a read
thread (it touches no mutable state of the engine); the writes run on the
store's worker thread. The only mutable state is when to purge
next (here) and when to evaluate the posture next (`posture_store`), touched by
the writers alone.

This module is the facade and the read path (the precheck); the write path is
`recording`, with `blocks` and `spray`; an owner's report of an address that
is not theirs is `owner`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from imapguard.config.defense import DefenseConfig
from imapguard.defense.blocks import Blocks
from imapguard.defense.counters import Block, CounterStore, Target, TargetKind
from imapguard.defense.events import DefenseEvent, SprayDetected
from imapguard.defense.fingerprints import Fingerprinter
from imapguard.defense.limits import Limits, Windows, delay
from imapguard.defense.model import Action, Attempt, FailureKind, Verdict
from imapguard.defense.owner import OwnerBlocks, OwnerVerdict
from imapguard.defense.posture import Posture, PostureState
from imapguard.defense.posture_store import POSTURE, UNDER_ATTACK, PostureStore, read_posture
from imapguard.defense.recording import Recorder
from imapguard.defense.sources import SourceClasses, source
from imapguard.secret import Secret

__all__ = [
    "POSTURE",
    "Action",
    "Attempt",
    "Defense",
    "FailureKind",
    "OwnerVerdict",
    "Verdict",
]

# Blocks that stop a source even when it is familiar to the account.
_STOP_FAMILIAR = frozenset({TargetKind.SOURCE, TargetKind.NETWORK, TargetKind.ACCOUNT_SOURCE})

# At most this many purge rounds per maintain() (250,000 rows a minute at the
# default purge_limit), so a huge backlog cannot hold the store thread for long.
MAINTAIN_PURGE_ROUNDS = 50


def _level(text: str | None) -> int:
    try:
        return int(text) if text is not None else 0
    except ValueError:
        return 0


# Seconds a pair's turn is held at most: longer than a login may take (the
# defense's delays reach 25 s, the upstream's login timeout comes on top), so only
# a process that died holding it lets the next one in by expiry.
GATE_HOLD = 120.0


def _gate(attempt: Attempt) -> str:
    return f"gate:{attempt.ip}|{attempt.user}"


class Defense:
    def __init__(
        self,
        settings: DefenseConfig,
        store: CounterStore,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        *,
        fingerprints: Fingerprinter,
        reader: CounterStore | None = None,
    ) -> None:
        self.settings = settings
        self._store = store
        self._reader = reader or store
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._fingerprints = fingerprints
        self._sources = SourceClasses(settings.allowlist, settings.trusted_networks)
        self._classify = self._sources.classify  # bound once: the precheck calls it
        self._windows = Windows(settings)
        self._blocks = Blocks(settings, store, self._windows)
        self._posture = PostureStore(settings, store, self._windows)
        self._owner = OwnerBlocks(settings, store, self._windows, self._sources, self._blocks)
        self._recorder = Recorder(
            settings, store, self._rng, self._windows, self._sources, self._blocks, self._posture
        )
        self._next_purge = -math.inf  # touched by the writers alone

    # -- building an attempt --------------------------------------------------

    def attempt(
        self,
        ip: str,
        user: str | None,
        secret: Secret | None,
        *,
        method: str,
        listener: str,
        trusted_device: bool = False,
        spray: bool = True,
    ) -> Attempt:
        """Fingerprint the presented secret (a password, app password or token;
        None when there is none) and normalize the source. `spray=False` for
        secrets that are no password (bearer tokens): nobody sprays those."""
        src = source(ip)
        credential = None if secret is None else self._fingerprints.account(user or "", secret)
        sprays: tuple[str, ...] = ()
        if spray and secret:
            sprays = self._fingerprints.spray(secret, self._clock())
        return Attempt(
            src.ip, src.network, user, credential, sprays, method, listener, trusted_device
        )

    # -- the precheck (reads only) --------------------------------------------

    def precheck(self, attempt: Attempt) -> Verdict:
        now = self._clock()
        ip, user = attempt.ip, attempt.user
        targets = [Target(TargetKind.SOURCE, ip), Target(TargetKind.NETWORK, attempt.network)]
        names = [POSTURE, f"d:src:{ip}"]
        pair = f"{ip}|{user}"
        if user is not None:
            targets += [
                Target(TargetKind.ACCOUNT_SOURCE, pair),
                Target(TargetKind.ACCOUNT_UNFAMILIAR, user),
            ]
            names += [f"d:pair:{pair}", f"fam:{user}|{attempt.network}", f"atk:{user}"]
        targets += [Target(TargetKind.FINGERPRINT, fp) for fp in attempt.spray_fps]
        blocks, values = self._reader.defense_lookup(targets, names, now)

        allowlisted, trusted = self._classify(ip)
        familiar = (
            allowlisted
            or trusted
            or attempt.trusted_device
            or (user is not None and f"fam:{user}|{attempt.network}" in values)
        )
        posture = Posture.UNDER_ATTACK if values.get(POSTURE) == UNDER_ATTACK else Posture.NORMAL
        applicable = [
            b
            for b in blocks
            if not allowlisted and (not familiar or b.target.kind in _STOP_FAMILIAR)
        ]
        block: Block | None = None
        would, would_delay = Action.ALLOW, 0.0
        if applicable:
            block = max(applicable, key=lambda b: (b.expires, b.target.key))
            would = Action.BLOCKED
        elif not allowlisted:
            level = max(_level(values.get(f"d:src:{ip}")), _level(values.get(f"d:pair:{pair}")))
            if level > 0:
                would, would_delay = Action.DELAY, delay(self.settings, self._rng, level)
        attacked = user is not None and f"atk:{user}" in values
        if self.settings.enforce:
            return Verdict(
                would,
                would_delay,
                block,
                would,
                would_delay,
                familiar,
                posture,
                posture is Posture.UNDER_ATTACK and attacked,
            )
        return Verdict(Action.ALLOW, 0.0, block, would, would_delay, familiar, posture, False)

    # -- one guess at a time per pair (imapguard.auth.gate) ----------------------

    def gate_enter(self, attempt: Attempt, token: str, held: str | None = None) -> bool:
        """Take the pair's turn (source and account) if nobody holds it, or over
        from `held` (a turn this process left, its release still queued): a
        compare-and-set every process and node sees. False: another holds it."""
        now = self._clock()
        return self._store.value_swap(_gate(attempt), held, token, now + GATE_HOLD, now)

    def batch(self) -> AbstractContextManager[None]:
        """Several writes to the counter store as one unit (the gate's releases)."""
        return self._store.batch()

    def gate_leave(self, attempt: Attempt, token: str) -> None:
        """Give the turn back (only if it is still ours: it may have expired)."""
        now = self._clock()
        self._store.value_swap(_gate(attempt), token, "", now, now)

    def in_trusted_network(self, ip: str) -> bool:
        """`ip` is in `trusted_networks` (also what handshake admission asks)."""
        return self._sources.trusted(ip)

    # -- recording outcomes (writes) ------------------------------------------

    def record_failure(
        self, attempt: Attempt, kind: FailureKind, familiar: bool
    ) -> list[DefenseEvent]:
        """A failed login (pass `verdict.familiar` from the precheck)."""
        now = self._clock()
        events: list[DefenseEvent] = []
        with self._store.batch():
            limits = Limits.under(self.settings, read_posture(self._store, now))
            if kind is FailureKind.FACTOR:
                self._recorder.factor_failure(attempt, now)
            else:
                self._recorder.credential_failure(attempt, kind, familiar, now, limits, events)
            sprayed = any(isinstance(e, SprayDetected) for e in events)
            events += self._posture.evaluate(now, force=sprayed)
            self._purge_due(now)
        return events

    def record_success(self, attempt: Attempt, *, proved_factor: bool = True) -> list[DefenseEvent]:
        """A successful login. `proved_factor`: it proved a second factor (so its
        /24 or /64 becomes familiar to the account)."""
        now = self._clock()
        with self._store.batch():
            self._recorder.success(attempt, now, proved_factor=proved_factor)
            events = self._posture.evaluate(now)
            self._purge_due(now)
        return events

    # -- the posture ------------------------------------------------------------

    def posture(self) -> Posture:
        return read_posture(self._reader, self._clock())

    def posture_state(self) -> PostureState | None:
        """The shared posture state (mode, since, baseline), if any was written."""
        return PostureStore.state(self._reader, self._clock())

    # -- administration and housekeeping ------------------------------------------

    def blocks(self) -> list[Block]:
        return self._store.blocks_list(self._clock())

    def block(self, target: Target, reason: str) -> list[DefenseEvent]:
        """Place a block by hand (the owner's "this wasn't me", an admin): an
        offence of `target` like any other, so it escalates and expires the same
        way and `clear` lifts it. Nothing if one is in force already."""
        now = self._clock()
        events: list[DefenseEvent] = []
        limits = Limits.under(self.settings, read_posture(self._store, now))
        with self._store.batch():
            self._blocks.place(target, reason, now, limits, events)
        return events

    def owner_report(self, user: str, ip: str, reason: str) -> OwnerVerdict:
        """The owner of `user` says `ip` is not theirs ("this wasn't me", a
        rejected device): that address for that account, and for everyone only
        if no other account logged in from it (`owner`); at most `OWNER_REPORTS`
        per account and window."""
        now = self._clock()
        with self._store.batch():
            limits = Limits.under(self.settings, read_posture(self._store, now))
            return self._owner.report(user, ip, reason, now, limits)

    def clear(self, target: Target) -> bool:
        """Lift a block and forget what led to it (its counters and offence
        level), so the next failure does not place it again at once."""
        return self._blocks.clear(target, self._clock())

    def unlock(self, user: str) -> list[Target]:
        """Lift the account's lockout and every (address, account) block of it;
        the targets that were blocked."""
        return self._blocks.unlock(user, self._clock())

    def maintain(self) -> list[DefenseEvent]:
        """Purge expired entries and re-evaluate the posture now (the caller runs
        it every minute or so on the store's worker thread, so the posture
        relaxes even when no login arrives)."""
        now = self._clock()
        # Rounds of `purge_limit`, each its own transaction (logins' writes get in
        # between), until the expired backlog is gone: a sustained attack writes up
        # to nine member rows per failure, far more than one round a minute removes.
        for _ in range(MAINTAIN_PURGE_ROUNDS):
            if (
                self._store.defense_purge(now, self.settings.purge_limit)
                < self.settings.purge_limit
            ):
                break
        self._next_purge = now + self.settings.purge_interval
        with self._store.batch():
            return self._posture.evaluate(now, force=True)

    def _purge_due(self, now: float) -> None:
        if now >= self._next_purge:
            self._next_purge = now + self.settings.purge_interval
            self._store.defense_purge(now, self.settings.purge_limit)
