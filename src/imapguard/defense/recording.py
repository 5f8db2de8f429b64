"""Recording a login's outcome: the distinct sets a failure joins, the delay
levels and blocks that follow per account, (address, account) pair and source;
what a success forgives and makes familiar.

A failure counts only if its per-account fingerprint is new for the account in
the window (a phone retrying its old password is one failure). Each new failure
joins distinct sets per (account, source), account (unfamiliar sources apart),
address, network and login-free fingerprint; the sources' sets also hold the
*accounts* that failed there. Store names: "f:" failures, "a:" failing
accounts, "ok:" successful accounts, "s:" spray fingerprints and their sources,
"d:" delay levels, "fam:" familiar networks, "atk:" accounts under attack; an
(address, account) pair is "ADDRESS|USER" (an address holds no "|").
"""

from __future__ import annotations

import math
import random

from imapguard.config.defense import DefenseConfig
from imapguard.defense.blocks import Blocks
from imapguard.defense.counters import CounterStore, Target, TargetKind
from imapguard.defense.events import DefenseEvent
from imapguard.defense.limits import Limits, Windows, span
from imapguard.defense.model import Attempt, FailureKind
from imapguard.defense.posture_store import PostureStore
from imapguard.defense.sources import SourceClasses
from imapguard.defense.spray import SprayRule

__all__ = ["Recorder"]

# Distinct successful accounts read at most (they only raise limits).
_CREDIT_LIMIT = 100_000


class Recorder:
    """The write path; the caller holds the store's batch and evaluates the
    posture afterwards."""

    def __init__(
        self,
        settings: DefenseConfig,
        store: CounterStore,
        rng: random.Random,
        windows: Windows,
        sources: SourceClasses,
        blocks: Blocks,
        posture: PostureStore,
    ) -> None:
        self._settings = settings
        self._store = store
        self._rng = rng
        self._windows = windows
        self._sources = sources
        self._blocks = blocks
        self._posture = posture
        self._spray = SprayRule(settings, store, windows, sources, blocks, posture)

    def success(self, attempt: Attempt, now: float, *, proved_factor: bool) -> None:
        """The account counts as a success of its address and network (a NAT
        credit); the pair's failures and delay are forgiven (never the
        account's: a login forgives no guesses at its password); with a factor,
        the network becomes familiar to the account."""
        self._posture.count(now, failure=False)
        user = attempt.user
        if user is None:
            return
        store = self._store
        window = self._windows.window(now)
        expires = self._windows.expiry(window[-1])
        if not self._sources.allowlisted(attempt.ip):
            store.members_add(
                [(f"ok:src:{attempt.ip}", user), (f"ok:net:{attempt.network}", user)],
                window[-1],
                expires,
            )
        pair = f"{attempt.ip}|{user}"
        store.buckets_forget([f"f:pair:{pair}"], window)
        store.values_delete([f"d:pair:{pair}"])
        if proved_factor:
            store.value_put(f"fam:{user}|{attempt.network}", "1", now + self._settings.familiar_ttl)

    def factor_failure(self, attempt: Attempt, now: float) -> None:
        """A correct password without its factor: no guess, so no password
        counter; the posture counts it (credential stuffing succeeds this way),
        once per distinct presented secret."""
        if attempt.user is not None and attempt.credential_fp is not None:
            window = self._windows.window(now)
            key = f"x:acct:{attempt.user}"
            if self._store.member_seen(key, window, attempt.credential_fp, now):
                return
            self._store.member_add(
                key, window[-1], attempt.credential_fp, self._windows.expiry(window[-1])
            )
        self._posture.count(now, failure=True)

    def credential_failure(
        self,
        attempt: Attempt,
        kind: FailureKind,
        familiar: bool,
        now: float,
        limits: Limits,
        events: list[DefenseEvent],
    ) -> None:
        """A guess (or a malformed login): join the sets, then apply the
        pair, account, source and spray rules to the new counts."""
        s, store = self._settings, self._store
        window = self._windows.window(now)
        bucket, expires = window[-1], self._windows.expiry(window[-1])
        ip, user = attempt.ip, attempt.user
        fp = attempt.credential_fp
        if fp is None:  # nothing to tell repeats apart: every failure is new
            fp = f"#{self._rng.getrandbits(64):016x}"
        guess = f"{fp}|{user or ''}"  # a wrong password of an account, from anywhere
        allowlisted = self._sources.allowlisted(ip)

        # Distinct: a secret that already failed for this account in the window
        # (or, without an account, from this source) changes nothing.
        if user is not None:
            if store.member_seen(f"f:acct:{user}", window, fp, now):
                return
        elif allowlisted or store.member_seen(f"f:src:{ip}", window, guess, now):
            return
        self._posture.count(now, failure=True)

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
                self._blocks.place(
                    Target(TargetKind.ACCOUNT_SOURCE, pair),
                    f"{failures} distinct wrong passwords for {user} from {ip}"
                    f" in {span(s.window)} (limit {limits.pair_block})",
                    now,
                    limits,
                    events,
                )
        if user is not None and not familiar:
            unfamiliar = counts[f"f:acct-u:{user}"]
            if unfamiliar >= limits.account_attacked:
                store.value_put(f"atk:{user}", "1", now + s.window)
            if unfamiliar >= limits.account_lockout:
                self._blocks.place(
                    Target(TargetKind.ACCOUNT_UNFAMILIAR, user),
                    f"{unfamiliar} distinct wrong passwords from unfamiliar sources"
                    f" in {span(s.window)} (limit {limits.account_lockout})",
                    now,
                    limits,
                    events,
                )
        if not allowlisted:
            self._source_rules(attempt, counts, now, limits, events)
        if spray:
            self._spray.check(attempt, now, limits, events)

    def _source_rules(
        self,
        attempt: Attempt,
        counts: dict[str, int],
        now: float,
        limits: Limits,
        events: list[DefenseEvent],
    ) -> None:
        """An address, then its network, that fails on too many accounts (a
        spray) or passwords: block it. Also the source's delay level. Each
        account that logged in from there in the window raises its limits
        (`credit_*`: a NAT's many users), one credit per account."""
        s, store = self._settings, self._store
        window = self._windows.window(now)
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
                block = self._blocks.place(
                    target,
                    f"failed on {accounts} accounts in {span(s.window)} (limit {account_limit},"
                    f" {credit} accounts logged in from there): password spraying",
                    now,
                    limits,
                    events,
                )
                if block is not None:
                    self._posture.spray(kind, name, accounts, (name,), now, events)
            elif failures >= failure_limit:
                self._blocks.place(
                    target,
                    f"{failures} distinct wrong passwords in {span(s.window)}"
                    f" (limit {failure_limit}, {credit} accounts logged in from there)",
                    now,
                    limits,
                    events,
                )
