"""The defense engine: how often have you failed, and what follows from it.

Sans-IO: synchronous, deterministic given the injected clock (wall time, shared
by nodes), RNG and store; it never sleeps and never awaits. The caller does the
awaiting, in this fixed order (research §3 "Decision path"):

1. `attempt()` builds the `Attempt` (fingerprints: three HMACs, ~6 µs);
2. `precheck()` READS only (one `defense_lookup` on the reader: two indexed
   point queries), on the event loop, before any expensive check. It answers
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
* **Keys.** Each new failure is added to distinct sets per (account, source),
  account (unfamiliar sources only), source address, source /24 or /64, and
  login-free fingerprint; sets of failing *accounts* per address and network;
  sets of successful accounts per address and network. All are windows of
  fixed buckets (`counters`).
* **Delays** grow per key, not per connection: past `pair_free` distinct
  failures on (account, source), or `source_free` from the source, the next
  attempt waits delay_base x 2^(n-1), at most delay_max, x (1 +- jitter): always
  under 25 s (clients time out near 30 s). The level is written by the failure
  and read by the precheck; a success from the pair clears the pair's level and
  counters (ownCloud, fail2ban #1747), never the account's (Bongo: a login
  forgives no guesses at the password).
* **Blocks** (`Target` kinds), each with a reason and an expiry, escalating
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
  `block_ip` on a per-login limit bans every NAT neighbour; research §1.4).
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
* **Posture** (`posture`): UNDER_ATTACK lowers every limit (x attack_threshold_factor),
  lengthens blocks, and sets `Verdict.require_factor` for accounts under
  attack: no password-only login from a trusted device.
* **Log-only** (`enforce = False`): everything is counted, blocks and events are
  recorded, verdicts carry what would happen (`would`, `would_delay`,
  `would_block`) with action ALLOW and no delay.
* The allowlist is never counted per source, delayed or blocked.

Threads: `precheck` runs on the event loop with the reader store; the writes
run on the store's worker thread. The only state kept in this object is when
to evaluate the posture and purge next, touched by the writers alone.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from imapguard import net
from imapguard.config.defense import MAX_DELAY, DefenseConfig
from imapguard.defense.counters import Block, CounterStore, Target, TargetKind
from imapguard.defense.events import BlockPlaced, DefenseEvent, PostureChanged, SprayDetected
from imapguard.defense.fingerprints import Fingerprinter
from imapguard.defense.posture import (
    Posture,
    PostureState,
    ShortWindow,
    decide,
    fold,
    trigger_ratio,
)
from imapguard.secret import Secret

__all__ = [
    "Action",
    "Attempt",
    "Defense",
    "FailureKind",
    "Verdict",
    "normalize_ip",
    "source_network",
]

# Store names (counters, sets, values). Keys are text; an account-source pair is
# "ADDRESS|USER" (an address holds no "|", so the first one splits it).
POSTURE = "posture"  # the mode, read by every precheck
POSTURE_STATE = "posture-state"  # PostureState JSON, replaced by compare-and-set
G_ATTEMPTS, G_FAILURES, G_SPRAYS = "g:attempts", "g:failures", "g:sprays"
# Posture buckets kept beyond the short window, for the baseline fold.
_POSTURE_SPARE_BUCKETS = 5
# Distinct successful accounts read at most (they only raise limits).
_CREDIT_LIMIT = 100_000
# Blocks that stop a source even when it is familiar to the account.
_STOP_FAMILIAR = frozenset({TargetKind.SOURCE, TargetKind.NETWORK, TargetKind.ACCOUNT_SOURCE})

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Action(enum.Enum):
    ALLOW = "allow"
    DELAY = "delay"
    BLOCKED = "blocked"


class FailureKind(enum.Enum):
    """What failed. Refusals by the precheck or by policy are never recorded."""

    CREDENTIAL = "credential"  # a wrong password, app password or token: a guess
    FACTOR = "factor"  # a correct password without a sufficient second factor
    MALFORMED = "malformed"  # no usable account name (counted per source only)


# At most this many purge rounds per maintain() (250,000 rows a minute at the
# default purge_limit), so a huge backlog cannot hold the store thread for long.
MAINTAIN_PURGE_ROUNDS = 50


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


@dataclass(frozen=True)
class _Limits:
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


@dataclass(frozen=True)
class _Source:
    ip: str
    network: str
    address: Address | None


@functools.lru_cache(maxsize=8192)
def _source(ip: str) -> _Source:
    """An address parsed once: its canonical text, its /24 or /64 (masked as an
    integer: building an ip_network costs more than the whole precheck)."""
    address = net.parse(ip)
    if address is None:
        return _Source(ip, ip, None)  # a test's or a Unix socket's label: its own network
    return _Source(str(address), net.network(ip), address)


def normalize_ip(ip: str) -> str:
    """The canonical text of an address (IPv4-mapped IPv6 as IPv4); anything
    that is no address stays as it is."""
    return _source(ip).ip


def source_network(ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) of an address (the address itself if it is none)."""
    return _source(ip).network


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _level(text: str | None) -> int:
    try:
        return int(text) if text is not None else 0
    except ValueError:
        return 0


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
        self._allowlist = tuple(ipaddress.ip_network(n, strict=False) for n in settings.allowlist)
        self._trusted = tuple(
            ipaddress.ip_network(n, strict=False) for n in settings.trusted_networks
        )
        self._next_posture = -math.inf
        self._next_purge = -math.inf

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
        source = _source(ip)
        credential = None if secret is None else self._fingerprints.account(user or "", secret)
        sprays: tuple[str, ...] = ()
        if spray and secret:
            sprays = self._fingerprints.spray(secret, self._clock())
        return Attempt(
            source.ip, source.network, user, credential, sprays, method, listener, trusted_device
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
        posture = Posture.UNDER_ATTACK if values.get(POSTURE) == "under_attack" else Posture.NORMAL
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
                would, would_delay = Action.DELAY, self._delay(level)
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

    def _delay(self, level: int) -> float:
        s = self.settings
        base = min(s.delay_base * 2.0 ** min(level - 1, 32), s.delay_max)
        jittered = base * (1.0 + self._rng.uniform(-s.delay_jitter, s.delay_jitter))
        return min(max(0.0, jittered), math.nextafter(MAX_DELAY, 0.0))

    def in_trusted_network(self, ip: str) -> bool:
        """`ip` is in `trusted_networks` (also what handshake admission asks)."""
        return self._classify(ip)[1]

    def _classify(self, ip: str) -> tuple[bool, bool]:
        """(allowlisted, in a trusted network)."""
        if not self._allowlist and not self._trusted:
            return False, False
        address = _source(ip).address
        if address is None:
            return False, False
        return (
            any(address in n for n in self._allowlist),
            any(address in n for n in self._trusted),
        )

    # -- recording outcomes (writes) ------------------------------------------

    def record_failure(
        self, attempt: Attempt, kind: FailureKind, familiar: bool
    ) -> list[DefenseEvent]:
        """A failed login (pass `verdict.familiar` from the precheck)."""
        now = self._clock()
        events: list[DefenseEvent] = []
        with self._store.batch():
            limits = self._limits(self._posture(self._store, now))
            if kind is FailureKind.FACTOR:
                self._factor_failure(attempt, now)
            else:
                self._credential_failure(attempt, kind, familiar, now, limits, events)
            sprayed = any(isinstance(e, SprayDetected) for e in events)
            events += self._evaluate_posture(now, force=sprayed)
            self._purge_due(now)
        return events

    def record_success(self, attempt: Attempt, *, proved_factor: bool = True) -> list[DefenseEvent]:
        """A successful login. `proved_factor`: it proved a second factor (so its
        /24 or /64 becomes familiar to the account)."""
        now = self._clock()
        with self._store.batch():
            self._count(now, failure=False)
            user = attempt.user
            if user is not None:
                window = self._window(now)
                expires = self._bucket_expiry(window[-1])
                if not self._classify(attempt.ip)[0]:
                    self._store.members_add(
                        [(f"ok:src:{attempt.ip}", user), (f"ok:net:{attempt.network}", user)],
                        window[-1],
                        expires,
                    )
                pair = f"{attempt.ip}|{user}"
                self._store.buckets_forget([f"f:pair:{pair}"], window)
                self._store.values_delete([f"d:pair:{pair}"])
                if proved_factor:
                    self._store.value_put(
                        f"fam:{user}|{attempt.network}", "1", now + self.settings.familiar_ttl
                    )
            events = self._evaluate_posture(now)
            self._purge_due(now)
        return events

    def _factor_failure(self, attempt: Attempt, now: float) -> None:
        """A correct password without its factor: no guess, so no password
        counter; the posture counts it (credential stuffing succeeds this way),
        once per distinct presented secret."""
        if attempt.user is not None and attempt.credential_fp is not None:
            window = self._window(now)
            key = f"x:acct:{attempt.user}"
            if self._store.member_seen(key, window, attempt.credential_fp, now):
                return
            self._store.member_add(
                key, window[-1], attempt.credential_fp, self._bucket_expiry(window[-1])
            )
        self._count(now, failure=True)

    def _credential_failure(
        self,
        attempt: Attempt,
        kind: FailureKind,
        familiar: bool,
        now: float,
        limits: _Limits,
        events: list[DefenseEvent],
    ) -> None:
        s, store = self.settings, self._store
        window = self._window(now)
        bucket, expires = window[-1], self._bucket_expiry(window[-1])
        ip, user = attempt.ip, attempt.user
        fp = attempt.credential_fp
        if fp is None:  # nothing to tell repeats apart: every failure is new
            fp = f"#{self._rng.getrandbits(64):016x}"
        guess = f"{fp}|{user or ''}"  # a wrong password of an account, from anywhere
        allowlisted = self._classify(ip)[0]

        # Distinct: a secret that already failed for this account in the window
        # (or, without an account, from this source) changes nothing.
        if user is not None:
            if store.member_seen(f"f:acct:{user}", window, fp, now):
                return
        elif allowlisted or store.member_seen(f"f:src:{ip}", window, guess, now):
            return
        self._count(now, failure=True)

        # Every set this failure joins, written at once, then counted at once.
        pair = f"{ip}|{user}"
        adds: list[tuple[str, str]] = []
        if user is not None:
            adds += [(f"f:acct:{user}", fp), (f"f:pair:{pair}", fp)]
            if not familiar:
                adds.append((f"f:acct-u:{user}", fp))
        if not allowlisted:
            for tag, name in (("src", ip), ("net", attempt.network)):
                adds += [(f"f:{tag}:{name}", guess), (f"a:{tag}:{name}", user or "")]
        spray = user is not None and kind is FailureKind.CREDENTIAL and bool(attempt.spray_fps)
        if spray:
            current = attempt.spray_fps[0]
            adds += [(f"s:fp:{current}", user or ""), (f"s:src:{current}", ip)]
        store.members_add(adds, bucket, expires)
        counted = [key for key, _ in adds if not key.startswith(("f:acct:", "s:"))]
        counts = store.distinct_counts(counted, window, now) if counted else {}

        if user is not None and not allowlisted:
            failures = counts[f"f:pair:{pair}"]
            if failures > limits.pair_free:
                level = failures - limits.pair_free
                store.value_put(f"d:pair:{pair}", str(level), now + s.delay_memory)
            if failures >= limits.pair_block:
                self._block(
                    Target(TargetKind.ACCOUNT_SOURCE, pair),
                    f"{failures} distinct wrong passwords for {user} from {ip}"
                    f" in {_span(s.window)} (limit {limits.pair_block})",
                    now,
                    limits,
                    events,
                )
        if user is not None and not familiar:
            unfamiliar = counts[f"f:acct-u:{user}"]
            if unfamiliar >= limits.account_attacked:
                store.value_put(f"atk:{user}", "1", now + s.window)
            if unfamiliar >= limits.account_lockout:
                self._block(
                    Target(TargetKind.ACCOUNT_UNFAMILIAR, user),
                    f"{unfamiliar} distinct wrong passwords from unfamiliar sources"
                    f" in {_span(s.window)} (limit {limits.account_lockout})",
                    now,
                    limits,
                    events,
                )
        if not allowlisted:
            self._source_rules(attempt, counts, now, limits, events)
        if spray:
            self._spray_rule(attempt, now, limits, events)

    def _source_rules(
        self,
        attempt: Attempt,
        counts: dict[str, int],
        now: float,
        limits: _Limits,
        events: list[DefenseEvent],
    ) -> None:
        """An address, then its network, that fails on too many accounts (a
        spray) or passwords: block it. Also the source's delay level."""
        s, store = self.settings, self._store
        window = self._window(now)
        for kind, name, tag, failure_limit, account_limit in (
            (
                TargetKind.SOURCE,
                attempt.ip,
                "src",
                limits.source_failures,
                limits.source_accounts,
            ),
            (
                TargetKind.NETWORK,
                attempt.network,
                "net",
                limits.network_failures,
                limits.network_accounts,
            ),
        ):
            failures, accounts = counts[f"f:{tag}:{name}"], counts[f"a:{tag}:{name}"]
            free = limits.source_free if kind is TargetKind.SOURCE else failure_limit
            if failures <= free and accounts < account_limit and failures < failure_limit:
                continue  # the common case: no credit needed, no successes read
            credit = store.distinct_count([f"ok:{tag}:{name}"], window, now, _CREDIT_LIMIT)
            if kind is TargetKind.SOURCE:
                level = failures - math.floor(limits.source_free + s.credit_failures * credit)
                if level > 0:
                    store.value_put(f"d:src:{name}", str(level), now + s.delay_memory)
            account_limit = math.floor(account_limit + s.credit_accounts * credit)
            failure_limit = math.floor(failure_limit + s.credit_failures * credit)
            target = Target(kind, name)
            if accounts >= account_limit:
                block = self._block(
                    target,
                    f"failed on {accounts} accounts in {_span(s.window)} (limit {account_limit},"
                    f" {credit} accounts logged in from there): password spraying",
                    now,
                    limits,
                    events,
                )
                if block is not None:
                    self._spray_alert(kind, name, accounts, (name,), now, events)
            elif failures >= failure_limit:
                self._block(
                    target,
                    f"{failures} distinct wrong passwords in {_span(s.window)}"
                    f" (limit {failure_limit}, {credit} accounts logged in from there)",
                    now,
                    limits,
                    events,
                )

    def _spray_rule(
        self, attempt: Attempt, now: float, limits: _Limits, events: list[DefenseEvent]
    ) -> None:
        """One login-free fingerprint failing on many accounts, from anywhere
        (counted under this epoch's and the previous epoch's key)."""
        s, store = self.settings, self._store
        window = self._window(now)
        current = attempt.spray_fps[0]
        accounts = store.distinct_count([f"s:fp:{fp}" for fp in attempt.spray_fps], window, now)
        if accounts < limits.spray_accounts:
            return
        fingerprints = [Target(TargetKind.FINGERPRINT, fp) for fp in attempt.spray_fps]
        if store.blocks_get(fingerprints, now):
            return  # already detected (a familiar source failing with it again)
        block = self._block(
            fingerprints[0],
            f"one password failed on {accounts} accounts in {_span(s.window)}"
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
            if self._classify(ip)[0]:
                continue
            shared = store.distinct_count(
                [f"ok:src:{ip}"], window, now, limit=s.shared_source_accounts
            )
            if shared >= s.shared_source_accounts:
                continue  # a NAT: the fingerprint block stops the spray
            placed = self._block(
                Target(TargetKind.SOURCE, ip),
                f"tried a sprayed password (fingerprint {current}, {accounts} accounts)",
                now,
                limits,
                events,
            )
            if placed is not None:
                blocked.append(ip)
        self._spray_alert(TargetKind.FINGERPRINT, current, accounts, tuple(blocked), now, events)

    def _spray_alert(
        self,
        by: TargetKind,
        key: str,
        accounts: int,
        sources: tuple[str, ...],
        now: float,
        events: list[DefenseEvent],
    ) -> None:
        bucket = self._posture_bucket(now)
        self._store.bucket_incr(G_SPRAYS, bucket, 1, self._posture_expiry(bucket), now)
        events.append(SprayDetected(by, key, accounts, sources, self.settings.enforce))

    def _block(
        self,
        target: Target,
        reason: str,
        now: float,
        limits: _Limits,
        events: list[DefenseEvent],
    ) -> Block | None:
        """Place an escalating block unless one is in force already."""
        s, store = self.settings, self._store
        if store.blocks_get([target], now):
            return None
        level = store.bucket_incr(
            f"o:{target.key}", 0, 1, now + s.block_max + s.offence_memory, now
        )
        duration = s.block_base * s.block_factor ** min(level - 1, 64)
        duration = min(duration * limits.duration_factor, s.block_max)
        block = Block(target, reason, level, now, now + duration)
        store.block_put(block)
        events.append(BlockPlaced(block, s.enforce))
        return block

    # -- windows, limits, global counters --------------------------------------

    def _window(self, now: float) -> range:
        last = math.floor(now / self.settings.bucket_seconds)
        return range(last - self.settings.window_buckets + 1, last + 1)

    def _bucket_expiry(self, bucket: int) -> float:
        """When a bucket leaves the window (its entries are then dead)."""
        return (bucket + self.settings.window_buckets) * self.settings.bucket_seconds

    def _posture_bucket(self, now: float) -> int:
        return math.floor(now / self.settings.posture_bucket)

    def _posture_expiry(self, bucket: int) -> float:
        kept = self.settings.posture_buckets + _POSTURE_SPARE_BUCKETS
        return (bucket + kept) * self.settings.posture_bucket

    def _count(self, now: float, *, failure: bool) -> None:
        bucket = self._posture_bucket(now)
        expires = self._posture_expiry(bucket)
        self._store.bucket_incr(G_ATTEMPTS, bucket, 1, expires, now)
        if failure:
            self._store.bucket_incr(G_FAILURES, bucket, 1, expires, now)

    def _limits(self, posture: Posture) -> _Limits:
        s = self.settings
        if posture is Posture.NORMAL:
            factor, duration = 1.0, 1.0
        else:
            factor, duration = s.attack_threshold_factor, s.attack_duration_factor

        def scaled(n: int, least: int = 1) -> int:
            return max(least, math.ceil(n * factor))

        return _Limits(
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

    # -- the posture ------------------------------------------------------------

    @staticmethod
    def _posture(store: CounterStore, now: float) -> Posture:
        value = store.values_get([POSTURE], now).get(POSTURE)
        return Posture.UNDER_ATTACK if value == "under_attack" else Posture.NORMAL

    def posture(self) -> Posture:
        return self._posture(self._reader, self._clock())

    def posture_state(self) -> PostureState | None:
        """The shared posture state (mode, since, baseline), if any was written."""
        raw = self._reader.values_get([POSTURE_STATE], self._clock()).get(POSTURE_STATE)
        return None if raw is None else PostureState.loads(raw)

    def _evaluate_posture(self, now: float, *, force: bool = False) -> list[DefenseEvent]:
        s, store = self.settings, self._store
        if not force and now < self._next_posture:
            return []
        self._next_posture = now + s.posture_interval
        current = self._posture_bucket(now)
        kept = s.posture_buckets + _POSTURE_SPARE_BUCKETS
        buckets = range(current - kept + 1, current + 1)
        failures = store.bucket_counts(G_FAILURES, buckets, now)
        attempts = store.bucket_counts(G_ATTEMPTS, buckets, now)
        short = range(current - s.posture_buckets + 1, current + 1)
        sprays = sum(store.bucket_counts(G_SPRAYS, short, now))
        raw = store.values_get([POSTURE_STATE], now).get(POSTURE_STATE)
        state = (PostureState.loads(raw) if raw is not None else None) or PostureState.start(
            s, now, current
        )
        counts = dict(zip(buckets, zip(failures, attempts, strict=True), strict=True))
        folded = fold(state, s, current, counts)
        window = ShortWindow(
            sum(failures[-s.posture_buckets :]), sum(attempts[-s.posture_buckets :]), sprays
        )
        mode = decide(folded, window, s, now)
        new = folded if mode is state.mode else replace(folded, mode=mode, since=now)
        if raw is not None and new == state:
            return []
        if not store.value_swap(POSTURE_STATE, raw, new.dumps(), None, now):
            return []  # another node moved it first; it reports what it saw
        if mode is state.mode:
            return []
        store.value_put(POSTURE, mode.value, None)
        return [
            PostureChanged(
                state.mode,
                mode,
                window.ratio,
                folded.baseline,
                trigger_ratio(s, folded.baseline),
                window.failures,
                window.attempts,
                window.sprays,
            )
        ]

    # -- administration and housekeeping ------------------------------------------

    def blocks(self) -> list[Block]:
        return self._store.blocks_list(self._clock())

    def clear(self, target: Target) -> bool:
        """Lift a block and forget what led to it (its counters and offence
        level), so the next failure does not place it again at once."""
        now = self._clock()
        value = target.value
        counters: dict[TargetKind, list[str]] = {
            TargetKind.SOURCE: [f"f:src:{value}", f"a:src:{value}"],
            TargetKind.NETWORK: [f"f:net:{value}", f"a:net:{value}"],
            TargetKind.ACCOUNT_UNFAMILIAR: [f"f:acct-u:{value}", f"f:acct:{value}"],
            TargetKind.ACCOUNT_SOURCE: [f"f:pair:{value}"],
            TargetKind.FINGERPRINT: [f"s:fp:{value}", f"s:src:{value}"],
        }
        values: dict[TargetKind, list[str]] = {
            TargetKind.SOURCE: [f"d:src:{value}"],
            TargetKind.NETWORK: [],
            TargetKind.ACCOUNT_UNFAMILIAR: [f"atk:{value}"],
            TargetKind.ACCOUNT_SOURCE: [f"d:pair:{value}"],
            TargetKind.FINGERPRINT: [],
        }
        with self._store.batch():
            removed = self._store.block_delete(target)
            self._store.buckets_forget(counters[target.kind], self._window(now))
            self._store.buckets_forget([f"o:{target.key}"], range(0, 1))
            if values[target.kind]:
                self._store.values_delete(values[target.kind])
        return removed

    def unlock(self, user: str) -> list[Target]:
        """Lift the account's lockout and every (address, account) block of it;
        the targets that were blocked."""
        now = self._clock()
        targets = [Target(TargetKind.ACCOUNT_UNFAMILIAR, user)] + [
            b.target
            for b in self._store.blocks_list(now)
            if b.target.kind is TargetKind.ACCOUNT_SOURCE
            and b.target.value.partition("|")[2] == user
        ]
        with self._store.batch():
            return [t for t in targets if self.clear(t)]

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
            return self._evaluate_posture(now, force=True)

    def _purge_due(self, now: float) -> None:
        if now >= self._next_purge:
            self._next_purge = now + self.settings.purge_interval
            self._store.defense_purge(now, self.settings.purge_limit)
