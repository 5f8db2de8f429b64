"""`[defense]`: thresholds, windows and escalation, with where each number comes from.

"inference" marks a number no anchor ships, with the reasoning beside it. Counts
are *distinct* (wrong passwords, accounts) within `window` unless said. The
section's keys are the fields below, one to one; absent keys keep their default.
Values are typed as TOML writes them: a count is a whole number, a duration or
factor any number, a switch true or false.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, model_validator

from imapguard.config.base import Section, raise_problems

__all__ = ["MAX_DELAY", "DefenseConfig"]

# No single delay may reach this: mail clients give up near 30 s (Nextcloud cut
# its 30 s cap to 25 s for that reason, nextcloud/server #9864).
MAX_DELAY = 25.0


def _flag(value: object) -> object:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


def _whole(value: object) -> object:
    if not isinstance(_number(value), int):
        raise ValueError("must be a whole number")
    return value


def _not_negative(value: float) -> float:
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _network_list(value: object) -> object:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of networks")
    return tuple(value)


def _networks(value: tuple[str, ...]) -> tuple[str, ...]:
    bad = []
    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            bad.append(f"{text!r} is not an address or network")
    if bad:
        raise ValueError("; ".join(bad))
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]
Number = Annotated[float, BeforeValidator(_number), AfterValidator(_not_negative)]
Count = Annotated[int, BeforeValidator(_whole), AfterValidator(_not_negative)]
PositiveNumber = Annotated[Number, AfterValidator(_positive)]
PositiveCount = Annotated[Count, AfterValidator(_positive)]
Networks = Annotated[tuple[str, ...], BeforeValidator(_network_list), AfterValidator(_networks)]


class DefenseConfig(Section):
    """The defense engine's settings, as `[defense]` in the file sets them."""

    section_key = "defense"

    # False: log-only (Dovecot auth_policy_log_only, AD FS ESL audit mode): counters,
    # blocks and events are recorded, verdicts say what would happen, nothing is enforced.
    enforce: Flag = True
    # What a login meets when the counter store (the Redis of state.counters_url, or
    # the state file) cannot be reached: false refuses it with NO [UNAVAILABLE] (fail
    # closed); true lets the login go on without the defense's checks, each such login
    # logged as a warning and audited as `defense_unavailable` (fail open: brute force
    # and sprays are not counted meanwhile). The factors are always checked.
    fail_open: Flag = False

    # -- windows ---------------------------------------------------------------
    # One hour in six 10-minute buckets: wforce's "OneHourDB" (6 windows x 600 s).
    window: PositiveNumber = 3600.0
    # Buckets the window is cut into (a window slides by one bucket).
    window_buckets: PositiveCount = 6

    # -- progressive delays (before the credential check) ----------------------
    # Free distinct failures per (account, source): wforce default policy tarpits
    # IP+login above 3.
    pair_free: Count = 3
    # Free distinct failures per source address (across accounts) [inference: a
    # household or small office mistyping stays under it; credits below raise it].
    source_free: Count = 10
    # First delay, doubling per further failure: Dovecot AUTH_PENALTY_INIT_SECS = 2
    # (2 -> 4 -> 8 -> 15 s there).
    delay_base: PositiveNumber = 2.0
    # Cap before jitter; with jitter the delay stays below MAX_DELAY (25 s).
    delay_max: Number = 20.0
    # +-20 % so timing tells nothing and parallel guesses do not line up
    # [inference; Stalwart sleeps a random 50-500 ms on every failure].
    delay_jitter: Number = 0.2
    # How long a delay level is remembered: Dovecot PENALTY_DEFAULT_EXPIRE_SECS = 3600.
    delay_memory: Number = 3600.0

    # -- blocks ------------------------------------------------------------------
    # Smart lockout: distinct failures from unfamiliar sources that lock the account
    # for unfamiliar sources: Entra smart lockout's default threshold of 10.
    account_lockout: PositiveCount = 10
    # Distinct unfamiliar failures that mark an account "under attack" (what the
    # UNDER_ATTACK posture tightens) [inference: half the lockout].
    account_attacked: Count = 5
    # Distinct failures of one address on one account that block that pair (the one
    # block a familiar source can get): Entra's 10, applied per address.
    pair_block: PositiveCount = 10
    # Distinct wrong passwords from one address: wforce default policy rejects above
    # 50 per IP per hour.
    source_failures: PositiveCount = 50
    # Distinct accounts failing from one address (spraying from one place)
    # [inference: wforce's per-IP limit applied to accounts; 20 is more accounts
    # than a family or small office mistypes in an hour].
    source_accounts: PositiveCount = 20
    # The same for a /24 or /64: as for one address, with a higher limit
    # [inference: three times the address limits].
    network_failures: PositiveCount = 150
    # Distinct accounts failing from one /24 or /64 (see network_failures).
    network_accounts: PositiveCount = 60
    # NAT tolerance: each distinct account that logged in successfully from the
    # address (or network) within the window raises its limits by this much
    # [inference; fail2ban #4199 asks for it, and counting distinct *accounts*
    # answers the maintainer's objection: one valid account buys one credit, not a
    # reset]. 3,000 students behind one address: 2,000 successes -> limits far away.
    credit_failures: Number = 2.0
    # The same credit for `source_accounts` / `network_accounts`.
    credit_accounts: Number = 1.0
    # An address with this many successful accounts in the window is shared (NAT):
    # taking part in a password spray blocks the fingerprint, not the address
    # [inference].
    shared_source_accounts: Count = 3
    # Accounts one login-free fingerprint may fail on in the window before it is
    # a spray [inference: five accounts an hour is no one's typing mistake].
    spray_accounts: PositiveCount = 5
    # At most this many sources blocked for one spray (bounded write) [inference].
    spray_block_sources: Count = 256

    # -- escalation ----------------------------------------------------------------
    # First block 10 min, doubling per repeat offence: fail2ban bantime = 10m and
    # bantime.increment (ban.Time * 2^n).
    block_base: PositiveNumber = 600.0
    # Each repeat offence multiplies the block by this.
    block_factor: Number = 2.0
    # Cap: 24 h (a week would also be defensible, but a fingerprint block must not
    # outlive the next fingerprint epoch, so it is at most `fingerprint_epoch`).
    block_max: Number = 86400.0
    # How long an offence counts for escalation after the longest block could
    # end: fail2ban dbpurgeage default 1 day.
    offence_memory: Number = 86400.0

    # -- familiar sources ----------------------------------------------------------
    # A successful login with a factor makes its /24 or /64 familiar to the account
    # for this long: the trusted-device period (auth.device_trust_days, 30 days).
    familiar_ttl: Number = 30 * 86400.0
    # Networks familiar to every account (e.g. the office LAN). Still counted per
    # address, so a compromised office machine is still limited.
    trusted_networks: Networks = ()
    # Sources never counted, delayed or blocked (monitoring, a webmail that
    # forwards no client address): Dovecot login_trusted_networks, Stalwart allow-list.
    allowlist: Networks = ()

    # -- under-attack posture ------------------------------------------------------
    # The failure ratio over 5 one-minute buckets, against a baseline of about a
    # week [inference: long enough that a weekly rhythm is normal].
    posture_bucket: PositiveNumber = 60.0
    # Buckets of the short window (see posture_bucket).
    posture_buckets: PositiveCount = 5
    # EWMA time constant of the baseline (7 days); frozen under attack.
    posture_baseline: PositiveNumber = 7 * 86400.0
    # Baseline before any traffic was seen [inference: stale passwords on phones
    # make a few failures in a hundred normal].
    posture_initial_baseline: Number = 0.1
    # UNDER_ATTACK when the ratio reaches factor x baseline, clamped to
    # [min_ratio, max_ratio], with at least `posture_min_failures` new distinct
    # failures in the short window (a quiet night with 3 failures of 4 attempts
    # is not an attack) [inference].
    posture_factor: Number = 3.0
    # Lower clamp of the trigger ratio (see posture_factor).
    posture_min_ratio: Number = 0.3
    # Upper clamp of the trigger ratio (see posture_factor).
    posture_max_ratio: Number = 0.9
    # New distinct failures the short window needs before it can trigger.
    posture_min_failures: Count = 50
    # Spray detections in the short window that raise the posture by themselves:
    # a spray denies its fingerprint and raises the posture.
    posture_spray_alerts: Count = 1
    # Hysteresis: back to NORMAL only after `posture_min_duration` and once the
    # ratio is below exit_fraction x the trigger, or the failures below
    # exit_fraction x min_failures, with no spray in the short window [inference].
    posture_exit_fraction: Number = 0.5
    # Seconds UNDER_ATTACK lasts at least (see posture_exit_fraction).
    posture_min_duration: Number = 900.0
    # A node re-evaluates the shared posture at most this often (on writes).
    posture_interval: Number = 5.0
    # Under attack: lower the per-address limits (x 0.5) and lengthen the blocks
    # (x 2) [inference for the factors].
    attack_threshold_factor: Number = 0.5
    # Under attack, blocks last this much longer.
    attack_duration_factor: Number = 2.0

    # -- fingerprints and housekeeping ---------------------------------------------
    # Login-free fingerprint key rotation: daily.
    fingerprint_epoch: PositiveNumber = 86400.0
    # Expired counters, blocks and values are purged this often, at most
    # `purge_limit` rows of each kind per run (short write transactions).
    purge_interval: Number = 60.0
    # Rows of each kind purged per run at most.
    purge_limit: PositiveCount = 5000

    @model_validator(mode="after")
    def _consistent(self) -> DefenseConfig:
        out: list[tuple[str, str]] = []
        if self.delay_max * (1 + self.delay_jitter) >= MAX_DELAY:
            out.append(("delay_max", f"with delay_jitter, a delay must stay below {MAX_DELAY:g} s"))
        if self.delay_jitter >= 1:
            out.append(("delay_jitter", "must be below 1"))
        if self.block_factor < 1:
            out.append(("block_factor", "must be at least 1"))
        if self.block_max < self.block_base:
            out.append(("block_max", "must be at least block_base"))
        if self.block_max > self.fingerprint_epoch:
            out.append(("block_max", "must not exceed fingerprint_epoch"))
        if not 0 < self.posture_min_ratio <= self.posture_max_ratio <= 1:
            out.append(("posture_min_ratio", "need 0 < min_ratio <= max_ratio <= 1"))
        if not 0 < self.posture_exit_fraction < 1:
            out.append(("posture_exit_fraction", "must be between 0 and 1"))
        if not 0 < self.attack_threshold_factor <= 1:
            out.append(("attack_threshold_factor", "must be in (0, 1]"))
        if self.attack_duration_factor < 1:
            out.append(("attack_duration_factor", "must be at least 1"))
        if not 0 <= self.posture_initial_baseline <= 1:
            out.append(("posture_initial_baseline", "must be a ratio (0 to 1)"))
        raise_problems(out)
        return self

    @property
    def bucket_seconds(self) -> float:
        return self.window / self.window_buckets
