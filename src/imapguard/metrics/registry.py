"""Every metric imapguard exports, defined once.

Labels take values from small fixed sets (methods, results, phases, kinds); no
label ever holds an account name, an address or text a client chose, so the
number of series stays bounded whatever clients send (`Metrics.reason_label` folds
the free-text reasons of failures into a bounded set).

Gauges say how they add up across worker processes (`multiprocess_mode`):
connections are summed over live workers; the posture is the most recent value
any worker saw, and so is whether the upstream answered."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "MAX_REASONS",
    "POSTURES",
    "STORES",
    "STORE_OPERATIONS",
    "UPSTREAM_FAILURES",
    "UPSTREAM_RESULTS",
    "Metrics",
]

# Distinct `reason` label values per process before the rest count as "other".
MAX_REASONS = 64
_REASON = re.compile(r"[a-z][a-zN _-]{0,47}")
_DIGITS = re.compile(r"[0-9]+")

# Seconds: a TLS handshake or a login on a LAN takes milliseconds; a login the
# defense delays waits seconds (its delays reach 25 s).
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SESSION = (1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0)

# The store round trips of a login: a point read on a LAN is well under a
# millisecond (SQLite: about 10 µs); a slow or failing store takes seconds.
_STORE = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)

POSTURES = ("normal", "under_attack")
#: An upstream login's outcome: logged in, refused (NO), or not reached / not trusted.
UPSTREAM_RESULTS = ("ok", "refused", "unavailable")
#: What went wrong with the upstream (`gateway.upstream.failure_kind`); any other
#: value is counted as "other".
UPSTREAM_FAILURES = ("connect", "tls", "timeout", "closed", "protocol", "master-refused")
#: The stores timed (`metrics.stores`), and the kinds of their operations.
STORES = ("accounts", "counters")
STORE_OPERATIONS = ("read", "write", "lookup", "purge")


class Metrics:
    """The metrics, registered in `registry` (a private one by default; in
    multiprocess mode the values go to the shared directory whatever it is)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.connections = Gauge(
            "imapguard_connections",
            "Client connections open now, by phase (preauth: before login; relay: logged in).",
            ["phase"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.connections_total = Counter(
            "imapguard_accepted_connections",
            "Client connections accepted, by TLS mode of the listener.",
            ["tls_mode"],
            registry=reg,
        )
        self.refused_total = Counter(
            "imapguard_refused_connections",
            "Connections closed at accept (per-source or total pre-auth limits, busy).",
            registry=reg,
        )
        self.tls_failures_total = Counter(
            "imapguard_tls_failures", "TLS handshakes that failed or timed out.", registry=reg
        )
        self.logins_total = Counter(
            "imapguard_logins",
            "Authentication decisions, by method, result and reason.",
            ["method", "result", "reason"],
            registry=reg,
        )
        self.blocks_total = Counter(
            "imapguard_blocks",
            "Blocks decided by the defense, by target kind and whether enforced.",
            ["kind", "enforced"],
            registry=reg,
        )
        self.spray_alerts_total = Counter(
            "imapguard_spray_alerts", "Password sprays detected.", registry=reg
        )
        self.compromise_signals_total = Counter(
            "imapguard_compromise_signals",
            "Correct passwords without the second factor (the password is known to someone).",
            registry=reg,
        )
        self.defense_unavailable_total = Counter(
            "imapguard_defense_unavailable",
            "Logins let on without the defense's checks (its store down, defense.fail_open).",
            registry=reg,
        )
        self.revoked_total = Counter(
            "imapguard_revoked_sessions", "Live sessions ended by a revocation.", registry=reg
        )
        self.posture = Gauge(
            "imapguard_posture",
            "The defense's posture: 1 for the current one.",
            ["posture"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.relay_bytes_total = Counter(
            "imapguard_relay_bytes",
            "Bytes relayed after login, by direction (in: from clients).",
            ["direction"],
            registry=reg,
        )
        self.session_seconds = Histogram(
            "imapguard_session_duration_seconds",
            "How long connections lasted.",
            buckets=_SESSION,
            registry=reg,
        )
        self.handshake_seconds = Histogram(
            "imapguard_tls_handshake_duration_seconds",
            "TLS handshakes with clients, from admission to the finished handshake.",
            buckets=_LATENCY,
            registry=reg,
        )
        self.login_seconds = Histogram(
            "imapguard_login_duration_seconds",
            "From a login command to its decision (the upstream login included; the"
            " uniform failure delay after it not), by result.",
            ["result"],
            buckets=_LATENCY,
            registry=reg,
        )
        self.live_dropped_total = Counter(
            "imapguard_live_events_dropped",
            "Auth events not put on the cluster's live stream (Redis down or too slow);"
            " the audit log has them all.",
            registry=reg,
        )
        self.audit_failures_total = Counter(
            "imapguard_audit_write_failures",
            "Audit events that could not be written (disk full, unwritable file).",
            registry=reg,
        )
        self.upstream_login_seconds = Histogram(
            "imapguard_upstream_login_duration_seconds",
            "Logins to the upstream: connect, TLS and the login dialogue, by result"
            " (ok, refused, unavailable).",
            ["result"],
            buckets=_LATENCY,
            registry=reg,
        )
        self.upstream_up = Gauge(
            "imapguard_upstream_up",
            "1 if the last attempt to reach the upstream (a login or the start-up"
            " check) got an answer and its master user was accepted, else 0.",
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.upstream_failures_total = Counter(
            "imapguard_upstream_failures",
            "Upstream logins and checks that failed, by what failed (connect, tls,"
            " timeout, closed, protocol, master-refused).",
            ["kind"],
            registry=reg,
        )
        self.store_seconds = Histogram(
            "imapguard_store_operation_duration_seconds",
            "Calls of the state stores (accounts: the account store; counters: the"
            " defense's), by kind of operation, failed ones included.",
            ["store", "operation"],
            buckets=_STORE,
            registry=reg,
        )
        self.store_errors_total = Counter(
            "imapguard_store_errors",
            "Calls of the state stores that failed because the store was unavailable.",
            ["store", "operation"],
            registry=reg,
        )
        self._reasons: set[str] = set()

    def reason_label(self, reason: str) -> str:
        """`reason` folded into a bounded label: the part before any detail
        (": ...", " (...)"), lower-case, every run of digits (a record's id, as
        in "app password 17 expired") as "N", at most MAX_REASONS distinct values."""
        head = _DIGITS.sub("N", reason.split(":", 1)[0].split(" (", 1)[0].strip().lower())
        if not _REASON.fullmatch(head):
            return "other"
        if head not in self._reasons:
            if len(self._reasons) >= MAX_REASONS:
                return "other"
            self._reasons.add(head)
        return head
