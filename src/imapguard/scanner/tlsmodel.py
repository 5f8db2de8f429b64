"""What the TLS audit works on and hands back: the targets and results, the sslyze
scan commands it runs and the catalog IDs each one feeds, and the evidence
helpers its TLS and certificate rules share.

Scan commands run: the six cipher-suite versions, certificate_info, compression,
renegotiation, Heartbleed, CCS injection, ROBOT, fallback SCSV, Extended Master
Secret and elliptic curves. Never TLS_1_3_EARLY_DATA nor HTTP_HEADERS: both send
an HTTP request, which breaks a mail session (Internet.nl #2055). Not
SESSION_RESUMPTION either: it feeds no check and costs ten connections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from sslyze.plugins.scan_commands import ScanCommand

from imapguard.scanner.catalog import finding
from imapguard.scanner.model import Finding, Protocol, Severity, TlsMode

__all__ = [
    "CERT_IDS",
    "COMMANDS",
    "FEEDS",
    "LIST_LIMIT",
    "MIN_EC_BITS",
    "TLS_IDS",
    "VERSIONS",
    "OrderProbe",
    "TlsResult",
    "TlsTarget",
    "graded",
    "listing",
    "reference",
    "worst",
]


@dataclasses.dataclass(frozen=True, slots=True)
class TlsTarget:
    """One TLS endpoint. `server_name` is the reference identifier (the host name the
    user gave, or --server-name for an address); None means "check the address"."""

    key: str
    address: str
    port: int
    protocol: Protocol
    tls_mode: TlsMode
    server_name: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class TlsResult:
    findings: tuple[Finding, ...]
    tls_versions: tuple[str, ...]  # accepted, oldest first: ("TLSv1.2", "TLSv1.3")
    certificate: dict[str, Any]  # the leaf, see `certrules.certificate_summary`; {} if not seen
    policy: dict[str, Any]  # what CERT-09 compares: versions, suites, certificates


@dataclasses.dataclass(frozen=True, slots=True)
class OrderProbe:
    """Two TLS 1.2 handshakes offering `strong` and `weak` in both orders."""

    strong: str  # IANA names
    weak: str
    chosen_strong_first: str  # what the server picked when offered strong, weak
    chosen_weak_first: str  # ... and when offered weak, strong


#: Evidence lists stop after this many items ("+N more").
LIST_LIMIT = 10

MIN_EC_BITS = 256

COMMANDS: tuple[ScanCommand, ...] = (
    ScanCommand.CERTIFICATE_INFO,
    ScanCommand.SSL_2_0_CIPHER_SUITES,
    ScanCommand.SSL_3_0_CIPHER_SUITES,
    ScanCommand.TLS_1_0_CIPHER_SUITES,
    ScanCommand.TLS_1_1_CIPHER_SUITES,
    ScanCommand.TLS_1_2_CIPHER_SUITES,
    ScanCommand.TLS_1_3_CIPHER_SUITES,
    ScanCommand.TLS_COMPRESSION,
    ScanCommand.SESSION_RENEGOTIATION,
    ScanCommand.HEARTBLEED,
    ScanCommand.OPENSSL_CCS_INJECTION,
    ScanCommand.ROBOT,
    ScanCommand.TLS_FALLBACK_SCSV,
    ScanCommand.TLS_EXTENDED_MASTER_SECRET,
    ScanCommand.ELLIPTIC_CURVES,
)

#: (scan command, version label) for each protocol version, oldest first.
VERSIONS: tuple[tuple[ScanCommand, str], ...] = (
    (ScanCommand.SSL_2_0_CIPHER_SUITES, "SSLv2"),
    (ScanCommand.SSL_3_0_CIPHER_SUITES, "SSLv3"),
    (ScanCommand.TLS_1_0_CIPHER_SUITES, "TLSv1.0"),
    (ScanCommand.TLS_1_1_CIPHER_SUITES, "TLSv1.1"),
    (ScanCommand.TLS_1_2_CIPHER_SUITES, "TLSv1.2"),
    (ScanCommand.TLS_1_3_CIPHER_SUITES, "TLSv1.3"),
)

CERT_IDS = tuple(f"CERT-0{i}" for i in range(1, 9))

TLS_IDS = tuple(f"TLS-{i:02d}" for i in range(1, 12))

#: Which IDs each scan command feeds: an error there makes them not_tested.
FEEDS: dict[ScanCommand, tuple[str, ...]] = {
    ScanCommand.CERTIFICATE_INFO: CERT_IDS,
    ScanCommand.SSL_2_0_CIPHER_SUITES: ("TLS-01", "TLS-04", "TLS-05", "TLS-08"),
    ScanCommand.SSL_3_0_CIPHER_SUITES: ("TLS-01", "TLS-04", "TLS-05", "TLS-08"),
    ScanCommand.TLS_1_0_CIPHER_SUITES: ("TLS-02", "TLS-04", "TLS-05", "TLS-08"),
    ScanCommand.TLS_1_1_CIPHER_SUITES: ("TLS-02", "TLS-04", "TLS-05", "TLS-08"),
    ScanCommand.TLS_1_2_CIPHER_SUITES: ("TLS-03", "TLS-04", "TLS-05", "TLS-06", "TLS-07", "TLS-08"),
    ScanCommand.TLS_1_3_CIPHER_SUITES: ("TLS-03",),
    ScanCommand.TLS_COMPRESSION: ("TLS-09",),
    ScanCommand.SESSION_RENEGOTIATION: ("TLS-09",),
    ScanCommand.HEARTBLEED: ("TLS-10",),
    ScanCommand.OPENSSL_CCS_INJECTION: ("TLS-10",),
    ScanCommand.ROBOT: ("TLS-10",),
    ScanCommand.TLS_FALLBACK_SCSV: ("TLS-11",),
    ScanCommand.TLS_EXTENDED_MASTER_SECRET: ("TLS-11",),
    ScanCommand.ELLIPTIC_CURVES: ("TLS-08",),
}


def listing(items: Sequence[str], limit: int = LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    more = len(items) - limit
    return f"{shown} (+{more} more)" if more > 0 else shown


def worst(severities: Iterable[Severity]) -> Severity:
    return min(severities, key=lambda s: s.rank)


def graded(check_id: str, issues: Sequence[tuple[Severity, str]]) -> list[Finding]:
    """One finding with a line per issue, at the worst issue's severity; none
    without issues."""
    if not issues:
        return []
    return [finding(check_id, [text for _, text in issues], severity=worst(s for s, _ in issues))]


def reference(target: TlsTarget) -> str:
    return target.server_name or target.address
