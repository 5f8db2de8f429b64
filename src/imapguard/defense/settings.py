"""Defense thresholds, windows and escalation, with where each number comes from.

"research" is ../shared/research/gateway.md (§ numbers are its sections);
"inference" marks a number no anchor ships, with the reasoning beside it.
Counts are *distinct* (wrong passwords, accounts) within `window` unless said.
`[defense]` in the configuration maps onto these fields one to one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields

__all__ = ["MAX_DELAY", "DefenseSettings", "SettingsError"]

# No single delay may reach this: mail clients give up near 30 s (Nextcloud cut
# its 30 s cap to 25 s for that reason, nextcloud/server #9864; research §1.7).
MAX_DELAY = 25.0


class SettingsError(ValueError):
    """Invalid settings; `.problems` is [(key, message)] for `check-config`."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"defense.{key}: {msg}" for key, msg in problems))


@dataclass(frozen=True)
class DefenseSettings:
    # False: log-only (Dovecot auth_policy_log_only, AD FS ESL audit mode): counters,
    # blocks and events are recorded, verdicts say what would happen, nothing is enforced.
    enforce: bool = True

    # -- windows ---------------------------------------------------------------
    # One hour in six 10-minute buckets: wforce's "OneHourDB" (6 windows x 600 s).
    window: float = 3600.0
    window_buckets: int = 6

    # -- progressive delays (before the credential check) ----------------------
    # Free distinct failures per (account, source): wforce default policy tarpits
    # IP+login above 3.
    pair_free: int = 3
    # Free distinct failures per source address (across accounts) [inference: a
    # household or small office mistyping stays under it; credits below raise it].
    source_free: int = 10
    # First delay, doubling per further failure: Dovecot AUTH_PENALTY_INIT_SECS = 2
    # (2 -> 4 -> 8 -> 15 s there).
    delay_base: float = 2.0
    # Cap before jitter; with jitter the delay stays below MAX_DELAY (25 s).
    delay_max: float = 20.0
    # +-20 % so timing tells nothing and parallel guesses do not line up
    # [inference; Stalwart sleeps a random 50-500 ms on every failure].
    delay_jitter: float = 0.2
    # How long a delay level is remembered: Dovecot PENALTY_DEFAULT_EXPIRE_SECS = 3600.
    delay_memory: float = 3600.0

    # -- blocks ------------------------------------------------------------------
    # Smart lockout: distinct failures from unfamiliar sources that lock the account
    # for unfamiliar sources: Entra smart lockout's default threshold of 10.
    account_lockout: int = 10
    # Distinct unfamiliar failures that mark an account "under attack" (what the
    # UNDER_ATTACK posture tightens) [inference: half the lockout].
    account_attacked: int = 5
    # Distinct failures of one address on one account that block that pair (the one
    # block a familiar source can get): Entra's 10, applied per address.
    pair_block: int = 10
    # Distinct wrong passwords from one address: wforce default policy rejects above
    # 50 per IP per hour.
    source_failures: int = 50
    # Distinct accounts failing from one address (spraying from one place)
    # [inference: wforce's per-IP twin for logins, research §2.2; 20 is more
    # accounts than a family or small office mistypes in an hour].
    source_accounts: int = 20
    # The same for a /24 or /64: research §2.2 "as for IP, higher limit"
    # [inference: three times the address limits].
    network_failures: int = 150
    network_accounts: int = 60
    # NAT tolerance: each distinct account that logged in successfully from the
    # address (or network) within the window raises its limits by this much
    # [inference; fail2ban #4199 asks for it, and counting distinct *accounts*
    # answers the maintainer's objection: one valid account buys one credit, not a
    # reset]. 3,000 students behind one address: 2,000 successes -> limits far away.
    credit_failures: float = 2.0
    credit_accounts: float = 1.0
    # An address with this many successful accounts in the window is shared (NAT):
    # taking part in a password spray blocks the fingerprint, not the address
    # [inference].
    shared_source_accounts: int = 3
    # Accounts one login-free fingerprint may fail on before it is a spray: research
    # §3 "spray fingerprint: 5 accounts per hour".
    spray_accounts: int = 5
    # At most this many sources blocked for one spray (bounded write) [inference].
    spray_block_sources: int = 256

    # -- escalation ----------------------------------------------------------------
    # First block 10 min, doubling per repeat offence: fail2ban bantime = 10m and
    # bantime.increment (ban.Time * 2^n).
    block_base: float = 600.0
    block_factor: float = 2.0
    # Cap: 24 h (research §3 allows a week; a fingerprint block must not outlive the
    # next fingerprint epoch, so it is at most `fingerprint_epoch`).
    block_max: float = 86400.0
    # How long an offence counts for escalation after the longest block could
    # end: fail2ban dbpurgeage default 1 day.
    offence_memory: float = 86400.0

    # -- familiar sources ----------------------------------------------------------
    # A successful login with a factor makes its /24 or /64 familiar to the account
    # for this long: the trusted-device period (auth.device_trust, 30 days).
    familiar_ttl: float = 30 * 86400.0
    # Networks familiar to every account (e.g. the office LAN). Still counted per
    # address, so a compromised office machine is still limited.
    trusted_networks: tuple[str, ...] = ()
    # Sources never counted, delayed or blocked (monitoring, a webmail that
    # forwards no client address): Dovecot login_trusted_networks, Stalwart allow-list.
    allowlist: tuple[str, ...] = ()

    # -- under-attack posture ------------------------------------------------------
    # Failure ratio over 5 one-minute buckets against a long baseline: research §2.2
    # "over 5 min against a 7-day baseline".
    posture_bucket: float = 60.0
    posture_buckets: int = 5
    # EWMA time constant of the baseline (research: 7 days); frozen under attack.
    posture_baseline: float = 7 * 86400.0
    # Baseline before any traffic was seen [inference: stale passwords on phones
    # make a few failures in a hundred normal].
    posture_initial_baseline: float = 0.1
    # UNDER_ATTACK when the ratio reaches factor x baseline, clamped to
    # [min_ratio, max_ratio], with at least `posture_min_failures` new distinct
    # failures in the short window (a quiet night with 3 failures of 4 attempts
    # is not an attack) [inference].
    posture_factor: float = 3.0
    posture_min_ratio: float = 0.3
    posture_max_ratio: float = 0.9
    posture_min_failures: int = 50
    # Spray detections in the short window that raise the posture by themselves:
    # research §3 "deny that fingerprint and raise the posture".
    posture_spray_alerts: int = 1
    # Hysteresis: back to NORMAL only after `posture_min_duration` and once the
    # ratio is below exit_fraction x the trigger, or the failures below
    # exit_fraction x min_failures, with no spray in the short window [inference].
    posture_exit_fraction: float = 0.5
    posture_min_duration: float = 900.0
    # A node re-evaluates the shared posture at most this often (on writes).
    posture_interval: float = 5.0
    # Under attack: limits x 0.5 and blocks x 2 ("lower the per-IP limits,
    # lengthen ban escalation", research §2.2) [inference for the factors].
    attack_threshold_factor: float = 0.5
    attack_duration_factor: float = 2.0

    # -- fingerprints and housekeeping ---------------------------------------------
    # Login-free fingerprint key rotation: daily (research §2.2).
    fingerprint_epoch: float = 86400.0
    # Expired counters, blocks and values are purged this often, at most
    # `purge_limit` rows of each kind per run (short write transactions).
    purge_interval: float = 60.0
    purge_limit: int = 5000

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise SettingsError(problems)

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every invalid setting."""
        out: list[tuple[str, str]] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or f.name in ("trusted_networks", "allowlist"):
                continue
            if isinstance(value, int | float) and value < 0:
                out.append((f.name, "must not be negative"))
        for name in (
            "window",
            "window_buckets",
            "delay_base",
            "posture_bucket",
            "posture_buckets",
            "posture_baseline",
            "fingerprint_epoch",
            "block_base",
            "account_lockout",
            "pair_block",
            "source_failures",
            "source_accounts",
            "network_failures",
            "network_accounts",
            "spray_accounts",
            "purge_limit",
        ):
            if getattr(self, name) <= 0:
                out.append((name, "must be positive"))
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
        for name in ("trusted_networks", "allowlist"):
            for text in getattr(self, name):
                try:
                    ipaddress.ip_network(text, strict=False)
                except ValueError:
                    out.append((name, f"{text!r} is not an address or network"))
        return out

    @property
    def bucket_seconds(self) -> float:
        return self.window / self.window_buckets
