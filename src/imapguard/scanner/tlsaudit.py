"""TLS and certificate checks of every TLS endpoint (implicit, or after STARTTLS).

The engine is sslyze 6.3.1 (it speaks IMAP, POP3 and SMTP STARTTLS and carries a legacy
OpenSSL 1.0.2 to detect SSLv2/SSLv3/TLS 1.0/1.1); this module decides what its results
mean, as the catalog IDs TLS-01..TLS-11 and CERT-01..CERT-09. `evaluate` is the pure
core (sslyze results in, findings out); `audit_tls` is the thin threaded shell around
sslyze's `Scanner`.

Rules:
- Scan commands run: the six cipher-suite versions, certificate_info, compression,
  renegotiation, Heartbleed, CCS injection, ROBOT, fallback SCSV, Extended Master Secret
  and elliptic curves. Never TLS_1_3_EARLY_DATA nor HTTP_HEADERS: both send an HTTP
  request, which breaks a mail session (Internet.nl #2055). Not SESSION_RESUMPTION
  either: it feeds no check and costs ten connections.
- A scan command that errored makes every ID it feeds ``not_tested`` (with sslyze's
  reason), never a pass; a problem another command proved is still reported. A server
  sslyze cannot reach is retried once, and so is each scan command that errored (alone:
  a loaded server or machine times out or resets spuriously, and two scans of one server
  must agree); then every ID is ``not_tested``.
- Bounded: at most `per_host` connections to one address (sslyze's per-server limit, and
  the ports of one address are scanned one after another: sslyze counts per host:port)
  and at most `concurrency` connections overall.
- Trust (CERT-01) is decided here, not by sslyze: sslyze 6 validates with cryptography's
  web-PKI (CA/B Forum) policy, which also fails a chain for a wrong name or an expired
  leaf (those are CERT-02 / CERT-03) and rejects what mail clients accept from a private
  CA, e.g. a critical subjectAltName next to a non-empty subject (trustme's certificates;
  RFC 5280 §4.2.1.6 says only SHOULD). So the received chain is path-validated (RFC 5280:
  signatures, CA basic constraints, validity) against Mozilla's root store as bundled in
  sslyze plus the `--ca-file` certificates, without any name or extended-key-usage rule,
  at the current time -- or, when the leaf itself is outside its validity period, at a
  moment inside it, so an expired leaf is CERT-03 and not also CERT-01.
- Identity (CERT-02) is `identity.check_identity` against the name the user gave
  (`TlsTarget.server_name`), else the address.
- Port 25 (server-to-server SMTP): a chain that does not validate or name the host is
  only info (senders rarely validate; DANE is the fix there), as Internet.nl grades it.
- CERT-07 (lifetime above 398 days) is a CA/B Forum rule for public CAs: a chain that
  anchors only in `--ca-file` is exempt.
- TLS-06 is IMAP's rule (RFC 9051 §11.1), checked for IMAP only.
- TLS-07: sslyze 6 does not report cipher order, so two extra TLS 1.2 handshakes offer one
  strong suite (forward secrecy and AEAD) and one weak suite the server accepts, in both
  orders. A server that follows the client's order, or prefers the weak suite, while it
  accepts weak suites is reported (info); with only strong suites the order does not
  matter (Mozilla's profiles set no server preference).
- Evidence lists at most `_LIST_LIMIT` suites or names and says how many more there are.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import functools
import itertools
import math
import re
import socket
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from nassl.ephemeral_key_info import DhEphemeralKeyInfo, EcDhEphemeralKeyInfo
from sslyze.connection_helpers.opportunistic_tls_helpers import ProtocolWithOpportunisticTlsEnum
from sslyze.plugins.certificate_info.trust_stores.trust_store_repository import (
    TrustStoresRepository,
)
from sslyze.plugins.openssl_cipher_suites._test_cipher_suite import CipherSuiteAcceptedByServer
from sslyze.plugins.openssl_cipher_suites._tls12_workaround import (
    WorkaroundForTls12ForCipherSuites,
)
from sslyze.plugins.openssl_cipher_suites.cipher_suites import CipherSuite
from sslyze.plugins.robot._robot_tester import RobotScanResultEnum
from sslyze.plugins.scan_commands import ScanCommand
from sslyze.scanner.models import (
    AllScanCommandsAttempts,
    ServerScanRequest,
    ServerScanResult,
    ServerScanStatusEnum,
)
from sslyze.scanner.scan_command_attempt import ScanCommandAttempt, ScanCommandAttemptStatusEnum
from sslyze.scanner.scanner import Scanner
from sslyze.server_connectivity import ServerConnectivityInfo, TlsVersionEnum
from sslyze.server_setting import ServerNetworkConfiguration, ServerNetworkLocation

from imapguard.scanner.catalog import finding, not_tested
from imapguard.scanner.identity import IdentityResult, NameMatch, check_identity, normalise_dns
from imapguard.scanner.model import Finding, Protocol, Severity, TlsMode

__all__ = [
    "ChainVerdict",
    "OrderProbe",
    "TlsResult",
    "TlsTarget",
    "TrustAnchors",
    "audit_tls",
    "evaluate",
    "load_anchors",
    "load_ca_file",
    "order_probe_pair",
    "twin_findings",
    "unreachable",
]

#: Evidence lists stop after this many items ("+N more").
_LIST_LIMIT = 10
#: CERT-03 warns this many days before expiry (testssl's DAYS2WARN2).
_EXPIRY_WARN_DAYS = 30
#: CERT-07: CA/B Forum Baseline Requirements §6.3.2 maximum (since 2020-09-01).
_MAX_LIFETIME_DAYS = 398
#: TLS-08 / CERT-06 minimums (Mozilla Server Side TLS, Logjam).
_MIN_DH_BITS = 2048
_MIN_EC_BITS = 256
_MIN_RSA_BITS = 2048
#: RFC 9051 §11.1: "IMAP ... MUST implement" this suite when using TLS 1.2.
_IMAP_MANDATORY_SUITE = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"

_COMMANDS: tuple[ScanCommand, ...] = (
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
_VERSIONS: tuple[tuple[ScanCommand, str], ...] = (
    (ScanCommand.SSL_2_0_CIPHER_SUITES, "SSLv2"),
    (ScanCommand.SSL_3_0_CIPHER_SUITES, "SSLv3"),
    (ScanCommand.TLS_1_0_CIPHER_SUITES, "TLSv1.0"),
    (ScanCommand.TLS_1_1_CIPHER_SUITES, "TLSv1.1"),
    (ScanCommand.TLS_1_2_CIPHER_SUITES, "TLSv1.2"),
    (ScanCommand.TLS_1_3_CIPHER_SUITES, "TLSv1.3"),
)

_CERT_IDS = tuple(f"CERT-0{i}" for i in range(1, 9))
_TLS_IDS = tuple(f"TLS-{i:02d}" for i in range(1, 12))

#: Which IDs each scan command feeds: an error there makes them not_tested.
_FEEDS: dict[ScanCommand, tuple[str, ...]] = {
    ScanCommand.CERTIFICATE_INFO: _CERT_IDS,
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

_STARTTLS: dict[Protocol, ProtocolWithOpportunisticTlsEnum] = {
    Protocol.IMAP: ProtocolWithOpportunisticTlsEnum.IMAP,
    Protocol.POP3: ProtocolWithOpportunisticTlsEnum.POP3,
    Protocol.SMTP: ProtocolWithOpportunisticTlsEnum.SMTP,
}


# -- the public data ------------------------------------------------------------


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
    certificate: dict[str, Any]  # the leaf, see `_certificate_summary`; {} if not seen
    policy: dict[str, Any]  # what CERT-09 compares: versions, suites, certificates


@dataclasses.dataclass(frozen=True, slots=True)
class OrderProbe:
    """Two TLS 1.2 handshakes offering `strong` and `weak` in both orders."""

    strong: str  # IANA names
    weak: str
    chosen_strong_first: str  # what the server picked when offered strong, weak
    chosen_weak_first: str  # ... and when offered weak, strong


@dataclasses.dataclass(frozen=True, slots=True)
class ChainVerdict:
    trusted: bool
    anchor: str = ""  # "Mozilla" or "--ca-file" when trusted
    error: str = ""
    validated_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TrustAnchors:
    """Mozilla's root store (as bundled with sslyze) plus the --ca-file certificates."""

    public: tuple[x509.Certificate, ...]
    private: tuple[x509.Certificate, ...] = ()
    private_name: str = "--ca-file"

    def describe(self) -> str:
        stores = []
        if self.public:
            stores.append(f"Mozilla's root store ({len(self.public)} roots)")
        if self.private:
            stores.append(f"{self.private_name} ({len(self.private)} certificates)")
        return " and ".join(stores) or "no trust anchors"

    def validate(self, chain: Sequence[x509.Certificate], now: dt.datetime) -> ChainVerdict:
        """RFC 5280 path validation of the received chain, without name or EKU rules
        (see the module docstring), at `now` or inside the leaf's validity period."""
        anchors = list(self.public) + list(self.private)
        if not chain or not anchors:
            return ChainVerdict(False, error="no certificate or no trust anchor")
        leaf = chain[0]
        at = now
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            at = (
                leaf.not_valid_before_utc
                + (leaf.not_valid_after_utc - leaf.not_valid_before_utc) / 2
            )
        builder = (
            PolicyBuilder()
            .store(Store(anchors))
            .time(at)
            .extension_policies(
                # The verifier insists that a CA certificate carries basicConstraints;
                # everything else (key usage, EKU, SAN criticality) is left to clients.
                ca_policy=ExtensionPolicy.permit_all().require_present(
                    x509.BasicConstraints, Criticality.AGNOSTIC, None
                ),
                ee_policy=ExtensionPolicy.permit_all(),
            )
        )
        try:
            # The client verifier: the one that checks no server name.
            verified = builder.build_client_verifier().verify(leaf, list(chain[1:]))
        except VerificationError as exc:
            return ChainVerdict(False, error=str(exc), validated_at=at)
        root = verified.chain[-1]
        anchor = "Mozilla" if root in self.public else self.private_name
        return ChainVerdict(True, anchor=anchor, validated_at=at)


# -- trust anchors ----------------------------------------------------------------


@functools.cache
def _mozilla_roots() -> tuple[x509.Certificate, ...]:
    with warnings.catch_warnings():
        # A few roots in the bundled stores have a negative serial number, which
        # cryptography still parses but warns about (CryptographyDeprecationWarning).
        # Loading sslyze's repository here, once, also keeps that warning out of
        # sslyze's worker threads, which load the same singleton.
        warnings.simplefilter("ignore")
        store = TrustStoresRepository.get_default().get_main_store()
        return tuple(x509.load_pem_x509_certificates(store.path.read_bytes()))


def load_ca_file(path: Path) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM file (--ca-file). Raises ValueError, with the file
    name, when the file cannot be read or holds no certificate."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--ca-file {path}: {exc.strerror or exc}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            certs = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise ValueError(f"--ca-file {path}: no PEM certificate found ({exc})") from exc
    return certs


def load_anchors(ca_file: Path | None) -> TrustAnchors:
    private = load_ca_file(ca_file) if ca_file is not None else ()
    return TrustAnchors(public=_mozilla_roots(), private=private)


# -- small helpers ----------------------------------------------------------------


def _listing(items: Sequence[str], limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    more = len(items) - limit
    return f"{shown} (+{more} more)" if more > 0 else shown


def _worst(severities: Iterable[Severity]) -> Severity:
    return min(severities, key=lambda s: s.rank)


def _graded(check_id: str, issues: Sequence[tuple[Severity, str]]) -> list[Finding]:
    """One finding with a line per issue, at the worst issue's severity; none
    without issues."""
    if not issues:
        return []
    return [finding(check_id, [text for _, text in issues], severity=_worst(s for s, _ in issues))]


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _name(name: x509.Name) -> str:
    try:
        return name.rfc4514_string() or "(empty)"
    except ValueError:
        return "(unparsable name)"


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _key_description(cert: x509.Certificate) -> tuple[str, int | None]:
    """("RSA", 2048), ("EC", 256), ("Ed25519", None) ..."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "unknown", None
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", None
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", None
    return type(key).__name__, None


def _signature_hash(cert: x509.Certificate) -> str:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return cert.signature_algorithm_oid.dotted_string
    if algorithm is not None:
        return algorithm.name
    # EdDSA signs without a separate hash.
    return {
        "1.3.101.112": "ed25519",
        "1.3.101.113": "ed448",
    }.get(cert.signature_algorithm_oid.dotted_string, cert.signature_algorithm_oid.dotted_string)


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> Any:
    try:
        return cert.extensions.get_extension_for_oid(oid).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def _aia(cert: x509.Certificate, method: x509.ObjectIdentifier) -> list[str]:
    aia = _extension(cert, ExtensionOID.AUTHORITY_INFORMATION_ACCESS)
    if aia is None:
        return []
    return [str(d.access_location.value) for d in aia if d.access_method == method]


# -- cipher suites ----------------------------------------------------------------


def _broken(suite: CipherSuite) -> tuple[Severity, str] | None:
    """TLS-04: the suite's cipher is broken (critical) or a 64-bit block cipher (high)."""
    name = suite.name.upper()
    if suite.is_anonymous or "_ANON_" in name:
        return Severity.CRITICAL, "anonymous"
    if "EXPORT" in name:
        return Severity.CRITICAL, "export"
    if re.search(r"_NULL(_|$)", name):
        return Severity.CRITICAL, "NULL cipher"
    if "RC4" in name:
        return Severity.CRITICAL, "RC4"
    if "3DES" in name or "DES_192_EDE3" in name:
        return Severity.HIGH, "3DES"
    if "DES" in name:
        return Severity.HIGH, "DES"
    if "IDEA" in name:
        return Severity.HIGH, "IDEA"
    if "RC2" in name:
        return Severity.HIGH, "RC2"
    return None


def _forward_secret(version: str, suite: CipherSuite) -> bool:
    if version == "TLSv1.3":
        return True  # every TLS 1.3 key exchange is ephemeral
    # Anonymous (EC)DH is ephemeral too; that it authenticates nobody is TLS-04's.
    return re.match(r"TLS_(EC)?DHE_|TLS_(EC)?DH_anon_", suite.name) is not None


def _aead(version: str, suite: CipherSuite) -> bool:
    if version == "TLSv1.3":
        return True
    return any(mode in suite.name for mode in ("_GCM_", "_CCM", "CHACHA20_POLY1305"))


def _curve_bits(curve_name: str) -> int | None:
    """Strength class of a named curve, from its name (secp224r1 -> 224)."""
    if curve_name in ("X25519", "X448"):
        return 256 if curve_name == "X25519" else 448
    match = re.search(r"(\d{3})", curve_name)
    return int(match.group(1)) if match else None


def _completed(attempts: AllScanCommandsAttempts, command: ScanCommand) -> Any:
    """The result of `command`, or None when it did not complete."""
    attempt: ScanCommandAttempt[Any] = getattr(attempts, command.value)
    if attempt.status is ScanCommandAttemptStatusEnum.COMPLETED:
        return attempt.result
    return None


def _accepted(
    attempts: AllScanCommandsAttempts,
) -> dict[str, list[CipherSuiteAcceptedByServer]]:
    """Accepted suites per version label, for the versions whose scan completed."""
    out: dict[str, list[CipherSuiteAcceptedByServer]] = {}
    for command, label in _VERSIONS:
        result = _completed(attempts, command)
        if result is not None:
            out[label] = list(result.accepted_cipher_suites)
    return out


def _weakness_rank(version: str, suite: CipherSuite) -> int | None:
    """How weak a TLS 1.2 suite is (0 worst) for the order probe; None when strong."""
    broken = _broken(suite)
    if broken is not None:
        return 0 if broken[0] is Severity.CRITICAL else 1
    if not _forward_secret(version, suite):
        return 2
    if not _aead(version, suite):
        return 3
    return None


def order_probe_pair(
    accepted: Sequence[CipherSuiteAcceptedByServer],
    needs_legacy: Callable[[str], bool],
) -> tuple[CipherSuite, CipherSuite] | None:
    """The (strong, weak) TLS 1.2 pair to probe the cipher order with, or None when the
    server accepts no strong or no weak suite. Both must be usable by the same nassl
    client (`needs_legacy(openssl_name)`: OpenSSL 1.0.2 or 1.1.1)."""
    strong = sorted(
        (a.cipher_suite for a in accepted if _weakness_rank("TLSv1.2", a.cipher_suite) is None),
        key=lambda s: s.name,
    )
    weak = sorted(
        (a.cipher_suite for a in accepted if _weakness_rank("TLSv1.2", a.cipher_suite) is not None),
        key=lambda s: (_weakness_rank("TLSv1.2", s), s.name),
    )
    for w, s in itertools.product(weak, strong):
        if needs_legacy(w.openssl_name) == needs_legacy(s.openssl_name):
            return s, w
    return None


# -- the pure core ------------------------------------------------------------------


def evaluate(
    target: TlsTarget,
    attempts: AllScanCommandsAttempts,
    *,
    anchors: TrustAnchors,
    now: dt.datetime,
    order: OrderProbe | str | None = None,
) -> TlsResult:
    """Map one completed sslyze scan onto findings. `order` is the TLS-07 probe, a
    reason it could not run, or None when there was nothing to probe."""
    found: dict[str, Finding] = {}
    errors: dict[str, list[str]] = {}

    for command in _COMMANDS:
        if _completed(attempts, command) is not None:
            continue
        reason = _attempt_error(command, getattr(attempts, command.value))
        for check_id in _FEEDS[command]:
            errors.setdefault(check_id, []).append(reason)

    accepted = _accepted(attempts)
    for f in _protocol_findings(target, accepted):
        found[f.id] = f
    for f in _handshake_findings(attempts, accepted, errors):
        found[f.id] = f
    if isinstance(order, str):
        errors.setdefault("TLS-07", []).append(order)
    elif order is not None:
        f07 = _order_finding(order)
        if f07 is not None:
            found[f07.id] = f07

    certificate: dict[str, Any] = {}
    fingerprints: list[str] = []
    cert_info = _completed(attempts, ScanCommand.CERTIFICATE_INFO)
    if cert_info is not None:
        deployments = [
            (d.received_certificate_chain, d.ocsp_response is not None)
            for d in cert_info.certificate_deployments
            if d.received_certificate_chain
        ]
        chains = [chain for chain, _ in deployments]
        if chains:
            per_chain = [
                _certificate_findings(target, chain, anchors, now, stapled)
                for chain, stapled in deployments
            ]
            for f in _merge_deployments(per_chain, [c[0] for c in chains]):
                found[f.id] = f
            certificate = _certificate_summary(
                chains[0][0],
                trusted=anchors.validate(chains[0], now).trusted,
                identity=check_identity(chains[0][0], _reference(target)),
                now=now,
            )
            fingerprints = [c[0].fingerprint(hashes.SHA256()).hex() for c in chains]
        else:
            for check_id in _CERT_IDS:
                errors.setdefault(check_id, []).append("the server sent no certificate")

    findings: list[Finding] = []
    for check_id in _TLS_IDS + _CERT_IDS:
        if check_id in found:
            findings.append(found[check_id])
        elif check_id in errors:
            findings.append(not_tested(check_id, "; ".join(dict.fromkeys(errors[check_id]))))
    versions = tuple(label for _, label in _VERSIONS if accepted.get(label))
    policy = {
        "versions": list(versions),
        "suites": {
            label: sorted(a.cipher_suite.name for a in suites)
            for label, suites in accepted.items()
            if suites
        },
        "certificates": fingerprints,
    }
    return TlsResult(tuple(findings), versions, certificate, policy)


def unreachable(target: TlsTarget, reason: str) -> TlsResult:
    """Every TLS and certificate check not tested, for `reason`."""
    findings = tuple(not_tested(check_id, reason) for check_id in _TLS_IDS + _CERT_IDS)
    return TlsResult(findings, (), {}, {})


def _exception_line(trace: traceback.TracebackException | None) -> str:
    """The last line of the exception sslyze caught ("" if none), for a reason."""
    if trace is None:
        return ""
    lines = [line.strip() for line in trace.format_exception_only()]
    return lines[-1][:200] if lines else ""


def _attempt_error(command: ScanCommand, attempt: ScanCommandAttempt[Any]) -> str:
    if attempt.status is ScanCommandAttemptStatusEnum.NOT_SCHEDULED:
        return f"sslyze {command.value} did not run"
    why = attempt.error_reason.value if attempt.error_reason else "error"
    detail = _exception_line(attempt.error_trace)
    return f"sslyze {command.value} failed: {why}{f' ({detail})' if detail else ''}"


def _reference(target: TlsTarget) -> str:
    return target.server_name or target.address


def _protocol_findings(
    target: TlsTarget, accepted: dict[str, list[CipherSuiteAcceptedByServer]]
) -> list[Finding]:
    out: list[Finding] = []

    def names(label: str) -> list[str]:
        return [a.cipher_suite.name for a in accepted.get(label, [])]

    for check_id, old in (("TLS-01", ("SSLv2", "SSLv3")), ("TLS-02", ("TLSv1.0", "TLSv1.1"))):
        evidence = [
            f"{v} accepted with {len(names(v))} suite(s): {_listing(names(v))}"
            for v in old
            if accepted.get(v)
        ]
        if evidence:
            out.append(finding(check_id, evidence))

    missing: list[tuple[Severity, str]] = []
    if "TLSv1.2" in accepted and not accepted["TLSv1.2"]:
        missing.append((Severity.MEDIUM, "TLS 1.2 is not offered (RFC 9051 §11.1: MUST)"))
    if "TLSv1.3" in accepted and not accepted["TLSv1.3"]:
        missing.append(
            (Severity.LOW, "TLS 1.3 is not offered (RFC 9051 §11.1: RECOMMENDED; low on its own)")
        )
    out += _graded("TLS-03", missing)

    # TLS-04 / TLS-05 over every version (TLS 1.3 suites are all AEAD with ephemeral keys).
    # Evidence names each suite once, with the versions that accept it.
    broken: dict[str, tuple[Severity, str, list[str]]] = {}
    no_fs: dict[str, list[str]] = {}
    no_aead: dict[str, list[str]] = {}
    any_fs = any_aead = False
    for _, label in _VERSIONS:
        for a in accepted.get(label, []):
            suite = a.cipher_suite
            verdict = _broken(suite)
            if verdict is not None:
                broken.setdefault(suite.name, (*verdict, []))[2].append(label)
            fs, aead = _forward_secret(label, suite), _aead(label, suite)
            any_fs, any_aead = any_fs or fs, any_aead or aead
            if not fs:
                no_fs.setdefault(suite.name, []).append(label)
            if not aead:
                no_aead.setdefault(suite.name, []).append(label)

    def per_suite(suites: dict[str, list[str]]) -> str:
        return _listing([f"{name} ({', '.join(labels)})" for name, labels in suites.items()])

    if broken:
        entries = [f"{n} ({why}; {', '.join(labels)})" for n, (_, why, labels) in broken.items()]
        out.append(
            finding(
                "TLS-04",
                [f"{len(broken)} suite(s): {_listing(entries)}"],
                severity=_worst(severity for severity, _, _ in broken.values()),
            )
        )
    if no_fs or no_aead:
        evidence = []
        if no_fs:
            evidence.append(f"without forward secrecy, {len(no_fs)} suite(s): {per_suite(no_fs)}")
        if no_aead:
            evidence.append(
                f"not AEAD (CBC or stream), {len(no_aead)} suite(s): {per_suite(no_aead)}"
            )
        if not any_fs:
            evidence.append("no accepted suite has forward secrecy")
        if not any_aead:
            evidence.append("no accepted suite is AEAD")
        out.append(finding("TLS-05", evidence))

    tls12 = names("TLSv1.2")
    if target.protocol is Protocol.IMAP and tls12 and _IMAP_MANDATORY_SUITE not in tls12:
        out.append(
            finding(
                "TLS-06",
                [f"TLS 1.2 accepted without {_IMAP_MANDATORY_SUITE}; accepted: {_listing(tls12)}"],
            )
        )
    return out


def _handshake_findings(
    attempts: AllScanCommandsAttempts,
    accepted: dict[str, list[CipherSuiteAcceptedByServer]],
    errors: dict[str, list[str]],
) -> list[Finding]:
    """TLS-08..TLS-11. An inconclusive ROBOT result is added to `errors` (not tested)."""
    out: list[Finding] = []

    # TLS-08: the ephemeral keys negotiated per suite, and the curves accepted.
    weak_kex: list[str] = []
    for _, label in _VERSIONS:
        for a in accepted.get(label, []):
            key = a.ephemeral_key
            if isinstance(key, DhEphemeralKeyInfo) and key.size < _MIN_DH_BITS:
                weak_kex.append(f"DH {key.size} bits with {label} {a.cipher_suite.name}")
            elif isinstance(key, EcDhEphemeralKeyInfo):
                bits = _curve_bits(key.curve_name)
                if bits is not None and bits < _MIN_EC_BITS:
                    weak_kex.append(f"{key.curve_name} with {label} {a.cipher_suite.name}")
    curves = attempts.elliptic_curves.result
    if curves is not None and curves.supported_curves:
        small = [
            c.name
            for c in curves.supported_curves
            if (bits := _curve_bits(c.name)) is not None and bits < _MIN_EC_BITS
        ]
        if small:
            weak_kex.append(f"curves below {_MIN_EC_BITS} bits accepted: {_listing(small)}")
    if weak_kex:
        more = len(weak_kex) - _LIST_LIMIT
        out.append(
            finding("TLS-08", weak_kex[:_LIST_LIMIT] + ([f"(+{more} more)"] if more > 0 else []))
        )

    # TLS-09: compression, renegotiation.
    issues: list[tuple[Severity, str]] = []
    compression = attempts.tls_compression.result
    if compression is not None and compression.supports_compression:
        issues.append((Severity.HIGH, "TLS compression is supported (CRIME)"))
    reneg = attempts.session_renegotiation.result
    if reneg is not None:
        if not reneg.supports_secure_renegotiation:
            issues.append((Severity.HIGH, "secure renegotiation (RFC 5746) is not supported"))
        if reneg.is_vulnerable_to_client_renegotiation_dos:
            issues.append(
                (
                    Severity.MEDIUM,
                    "client-initiated renegotiation is accepted "
                    f"({reneg.client_renegotiations_success_count} in a row): a DoS lever",
                )
            )
    out += _graded("TLS-09", issues)

    # TLS-10: Heartbleed, CCS injection, ROBOT.
    vulns: list[tuple[Severity, str]] = []
    heartbleed = attempts.heartbleed.result
    if heartbleed is not None and heartbleed.is_vulnerable_to_heartbleed:
        vulns.append((Severity.CRITICAL, "vulnerable to Heartbleed (CVE-2014-0160)"))
    ccs = attempts.openssl_ccs_injection.result
    if ccs is not None and ccs.is_vulnerable_to_ccs_injection:
        vulns.append((Severity.CRITICAL, "vulnerable to OpenSSL CCS injection (CVE-2014-0224)"))
    robot = attempts.robot.result
    if robot is not None:
        if robot.robot_result is RobotScanResultEnum.VULNERABLE_STRONG_ORACLE:
            vulns.append((Severity.CRITICAL, "ROBOT: strong Bleichenbacher oracle"))
        elif robot.robot_result is RobotScanResultEnum.VULNERABLE_WEAK_ORACLE:
            vulns.append(
                (Severity.HIGH, "ROBOT: weak Bleichenbacher oracle (high: slow to exploit)")
            )
        elif robot.robot_result is RobotScanResultEnum.UNKNOWN_INCONSISTENT_RESULTS:
            errors.setdefault("TLS-10", []).append("ROBOT: the server's answers were inconsistent")
    out += _graded("TLS-10", vulns)

    # TLS-11: fallback SCSV, Extended Master Secret.
    missing: list[str] = []
    fallback = attempts.tls_fallback_scsv.result
    if fallback is not None and not fallback.supports_fallback_scsv:
        missing.append("a downgraded handshake with TLS_FALLBACK_SCSV is accepted (RFC 7507)")
    ems = attempts.tls_extended_master_secret.result
    if ems is not None and not ems.supports_ems_extension:
        missing.append("no Extended Master Secret in TLS 1.2 (RFC 7627)")
    if missing:
        out.append(finding("TLS-11", missing))
    return out


def _order_finding(order: OrderProbe) -> Finding | None:
    offered = f"offered {order.weak} and {order.strong}"
    if order.chosen_weak_first == order.strong:
        return None  # the server enforces its own order, strong first
    if order.chosen_strong_first == order.weak:
        return finding(
            "TLS-07",
            [
                f"TLSv1.2: {offered} in either order, the server chose {order.weak} both "
                "times: its own order prefers the weaker suite"
            ],
        )
    return finding(
        "TLS-07",
        [
            f"TLSv1.2: {offered}; it chose the client's first choice each time "
            f"({order.chosen_weak_first}, then {order.chosen_strong_first}): no server "
            "preference while suites without forward secrecy or AEAD are accepted"
        ],
    )


def _certificate_findings(
    target: TlsTarget,
    chain: Sequence[x509.Certificate],
    anchors: TrustAnchors,
    now: dt.datetime,
    stapled_ocsp: bool,
) -> list[Finding]:
    out: list[Finding] = []
    leaf = chain[0]
    mx = target.protocol is Protocol.SMTP and target.port == 25
    mx_note = (
        "info on port 25: sending servers rarely validate certificates (DANE, RFC 7672, "
        "is the fix there)"
    )
    verdict = anchors.validate(chain, now)

    # CERT-01
    if not verdict.trusted:
        evidence = [
            f"the server sent {len(chain)} certificate(s); leaf issuer {_name(leaf.issuer)}"
        ]
        if len(chain) == 1 and _self_issued(leaf):
            evidence.append("the leaf is self-signed")
        top = chain[-1].issuer
        if all(anchor.subject != top for anchor in anchors.public + anchors.private):
            evidence.append(f"{_name(top)} is not among the trust anchors, {anchors.describe()}")
        else:
            # A known issuer and still no path: say what the verifier objected to.
            evidence.append(f"not valid against {anchors.describe()}: {verdict.error}")
        if mx:
            evidence.append(mx_note)
        out.append(finding("CERT-01", evidence, severity=Severity.INFO if mx else None))

    # CERT-02
    identity = check_identity(leaf, _reference(target))
    if not identity.ok:
        out.append(_identity_finding(target, identity, mx, mx_note))

    # CERT-03
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    validity: list[tuple[Severity, str]] = []
    if now > not_after:
        days = (now - not_after).days
        validity.append((Severity.CRITICAL, f"expired on {_iso(not_after)} ({days} day(s) ago)"))
    elif now < not_before:
        validity.append(
            (Severity.HIGH, f"not valid before {_iso(not_before)} (the server's clock or the CA's)")
        )
    elif (not_after - now) <= dt.timedelta(days=_EXPIRY_WARN_DAYS):
        days = (not_after - now).days
        validity.append(
            (
                Severity.MEDIUM,
                f"expires on {_iso(not_after)}, in {days} day(s) (within {_EXPIRY_WARN_DAYS})",
            )
        )
    out += _graded("CERT-03", validity)

    # CERT-04
    chain_problems = _chain_problems(chain, verdict)
    if chain_problems:
        out.append(finding("CERT-04", chain_problems))

    # CERT-05 / CERT-06: leaf and intermediates; a root's own signature and key are the
    # trust store's business (roots are self-issued; their self-signature is never checked).
    weak_sigs: list[str] = []
    weak_keys: list[str] = []
    for cert in chain:
        role = "leaf" if cert is leaf else f"CA {_name(cert.subject)}"
        if cert is not leaf and _self_issued(cert):
            continue
        algorithm = _signature_hash(cert)
        if algorithm in ("sha1", "md5"):
            weak_sigs.append(f"{role} signed with {algorithm.upper()}")
        kind, bits = _key_description(cert)
        too_small = (
            (kind == "RSA" and bits is not None and bits < _MIN_RSA_BITS)
            or (kind == "EC" and bits is not None and bits < _MIN_EC_BITS)
            or (kind == "DSA" and bits is not None and bits < _MIN_RSA_BITS)
        )
        if too_small:
            weak_keys.append(f"{role}: {kind} {bits} bits")
    if weak_sigs:
        out.append(finding("CERT-05", weak_sigs))
    if weak_keys:
        out.append(finding("CERT-06", weak_keys))

    # CERT-07
    lifetime = (not_after - not_before).days
    if lifetime > _MAX_LIFETIME_DAYS and not (verdict.trusted and verdict.anchor != "Mozilla"):
        out.append(
            finding(
                "CERT-07",
                [
                    f"valid for {lifetime} days ({_iso(not_before)} to {_iso(not_after)}), "
                    f"more than {_MAX_LIFETIME_DAYS}"
                ],
            )
        )

    # CERT-08
    ocsp = _aia(leaf, AuthorityInformationAccessOID.OCSP)
    crl = _extension(leaf, ExtensionOID.CRL_DISTRIBUTION_POINTS)
    if not ocsp and crl is None and not stapled_ocsp:
        out.append(
            finding(
                "CERT-08",
                [
                    "the leaf names no OCSP responder (authorityInfoAccess) and no CRL "
                    "distribution point, and no OCSP response was stapled"
                ],
            )
        )
    return out


def _identity_finding(
    target: TlsTarget, identity: IdentityResult, mx: bool, mx_note: str
) -> Finding:
    evidence = [identity.describe()]
    if target.server_name is None:
        evidence.append("no host name given: checked against the address (use --server-name)")
    severity: Severity | None = None
    if identity.match is NameMatch.MATCHED_BY_CN_ONLY:
        severity = Severity.LOW
        evidence.append(
            f"matches only the subject CN {identity.matched_by!r}; the certificate has no "
            "subjectAltName DNS entry, and RFC 6125 §6.4.4 clients ignore the CN (low: "
            "older clients still accept it)"
        )
    elif identity.match is NameMatch.REFUSED_WILDCARD:
        evidence.append(
            f"only the wildcard pattern(s) {', '.join(identity.refused)} would cover it; "
            "a '*' is valid only as the whole left-most label (RFC 7817 §3)"
        )
    elif identity.common_names and any(
        cn.lower().rstrip(".") == identity.reference for cn in identity.common_names
    ):
        evidence.append(
            "the subject CN matches, but a certificate with DNS names is judged by them"
        )
    if mx:
        severity = Severity.INFO
        evidence.append(mx_note)
    return finding("CERT-02", evidence, severity=severity)


def _chain_problems(chain: Sequence[x509.Certificate], verdict: ChainVerdict) -> list[str]:
    problems: list[str] = []
    for index in range(1, len(chain)):
        if chain[index].subject != chain[index - 1].issuer:
            problems.append(
                f"out of order: certificate {index + 1} ({_name(chain[index].subject)}) did "
                f"not issue certificate {index} (issuer {_name(chain[index - 1].issuer)})"
            )
            break
    last = chain[-1]
    ca_issuers = _aia(chain[0], AuthorityInformationAccessOID.CA_ISSUERS)
    if not verdict.trusted and not _self_issued(last) and ca_issuers:
        # Mail clients do not fetch missing intermediates (browsers do, from this URL).
        problems.append(
            f"probably incomplete: the last certificate sent was issued by "
            f"{_name(last.issuer)}, which was not sent and is not a known root; the leaf "
            f"points to its issuer at {ca_issuers[0]}"
        )
    return problems


def _merge_deployments(
    per_chain: list[list[Finding]], leaves: list[x509.Certificate]
) -> list[Finding]:
    """One finding per ID over every certificate the server sent (most send one; some
    send an RSA and an ECDSA one): the worst severity, every evidence line."""
    if len(per_chain) == 1:
        return per_chain[0]
    merged: dict[str, Finding] = {}
    for number, (findings, leaf) in enumerate(zip(per_chain, leaves, strict=True), start=1):
        kind, bits = _key_description(leaf)
        label = f"certificate {number} ({kind}{f' {bits}' if bits else ''})"
        for f in findings:
            lines = tuple(f"{label}: {line}" for line in f.evidence)
            if f.id not in merged:
                merged[f.id] = dataclasses.replace(f, evidence=lines)
            else:
                old = merged[f.id]
                merged[f.id] = dataclasses.replace(
                    old,
                    severity=_worst((old.severity, f.severity)),
                    evidence=old.evidence + lines,
                )
    return list(merged.values())


def _certificate_summary(
    leaf: x509.Certificate, *, trusted: bool, identity: IdentityResult, now: dt.datetime
) -> dict[str, Any]:
    kind, bits = _key_description(leaf)
    return {
        "subject": _name(leaf.subject),
        "issuer": _name(leaf.issuer),
        "san": list(identity.dns_names) + list(identity.ip_addresses),
        "not_before": _iso(leaf.not_valid_before_utc),
        "not_after": _iso(leaf.not_valid_after_utc),
        "days_left": math.floor((leaf.not_valid_after_utc - now).total_seconds() / 86400),
        "key": f"{kind} {bits}" if bits else kind,
        "signature": _signature_hash(leaf),
        "sha256": leaf.fingerprint(hashes.SHA256()).hex(),
        "trusted": trusted,
        "name_match": identity.match.value,
    }


# -- twins ------------------------------------------------------------------------


def twin_findings(a_name: str, a: TlsResult, b_name: str, b: TlsResult) -> list[Finding]:
    """CERT-09: the cleartext port (after STARTTLS) and its implicit-TLS twin should
    present the same certificate and the same TLS policy."""
    for name, result in ((a_name, a), (b_name, b)):
        if not result.policy:
            return [not_tested("CERT-09", f"the TLS of {name} was not audited")]
    diffs: list[str] = []
    if a.policy["versions"] != b.policy["versions"]:
        diffs.append(
            f"TLS versions: {a_name} {', '.join(a.policy['versions']) or 'none'}; "
            f"{b_name} {', '.join(b.policy['versions']) or 'none'}"
        )
    suites_a: dict[str, list[str]] = a.policy["suites"]
    suites_b: dict[str, list[str]] = b.policy["suites"]
    for _, label in _VERSIONS:
        only_a = sorted(set(suites_a.get(label, [])) - set(suites_b.get(label, [])))
        only_b = sorted(set(suites_b.get(label, [])) - set(suites_a.get(label, [])))
        for name, only in ((a_name, only_a), (b_name, only_b)):
            if only:
                diffs.append(f"{label} suites only on {name}: {_listing(only)}")
    certs_a, certs_b = a.policy["certificates"], b.policy["certificates"]
    if certs_a and certs_b and sorted(certs_a) != sorted(certs_b):
        diffs.append(
            f"certificate: {a_name} sha256 {', '.join(certs_a)}; "
            f"{b_name} sha256 {', '.join(certs_b)}"
        )
    return [finding("CERT-09", diffs)] if diffs else []


# -- the threaded shell --------------------------------------------------------------


def _ehlo_name() -> str:
    """What sslyze says in EHLO before STARTTLS: this host's FQDN (RFC 5321 §4.1.1.1)."""
    fqdn = socket.getfqdn()
    return fqdn if "." in fqdn and not fqdn.endswith(".") else "imapguard.localdomain"


def _request(
    target: TlsTarget, timeout: float, commands: Iterable[ScanCommand] = _COMMANDS
) -> ServerScanRequest:
    """Raises ValueError (UnicodeError) for a name IDNA cannot encode."""
    name = normalise_dns(target.server_name) if target.server_name else target.address
    starttls = None
    if target.tls_mode is TlsMode.CLEARTEXT:
        starttls = _STARTTLS[target.protocol]
    config = ServerNetworkConfiguration(
        tls_server_name_indication=name,
        tls_opportunistic_encryption=starttls,
        smtp_ehlo_hostname=_ehlo_name()
        if starttls is ProtocolWithOpportunisticTlsEnum.SMTP
        else None,
        network_timeout=max(1, math.ceil(timeout)),
    )
    return ServerScanRequest(
        server_location=ServerNetworkLocation(name, target.port, ip_address=target.address),
        network_configuration=config,
        scan_commands=set(commands),
    )


def _waves(targets: Sequence[TlsTarget]) -> list[list[TlsTarget]]:
    """Wave n holds the n-th port of every address: one port per address at a time."""
    by_address: dict[str, list[TlsTarget]] = {}
    for t in targets:
        by_address.setdefault(t.address, []).append(t)
    columns = itertools.zip_longest(*by_address.values())
    return [[t for t in column if t is not None] for column in columns]


def _scan(
    targets: Sequence[TlsTarget],
    *,
    timeout: float,
    concurrency: int,
    per_host: int,
    commands: Mapping[str, Iterable[ScanCommand]] | None = None,
) -> dict[str, ServerScanResult]:
    """sslyze on every target, wave by wave; `commands`: only these, per target key."""
    per_server = max(1, min(per_host, concurrency))
    results: dict[str, ServerScanResult] = {}
    for wave in _waves(targets):
        requests = {
            t.key: _request(t, timeout, (commands or {}).get(t.key, _COMMANDS)) for t in wave
        }
        if not requests:
            continue
        by_uuid = {r.uuid: key for key, r in requests.items()}
        scanner = Scanner(
            per_server_concurrent_connections_limit=per_server,
            concurrent_server_scans_limit=max(1, min(len(wave), concurrency // per_server)),
        )
        scanner.queue_scans(list(requests.values()))
        for result in scanner.get_results():
            results[by_uuid[result.uuid]] = result
    return results


def _probe_order(scan: ServerScanResult) -> OrderProbe | str | None:
    """TLS-07's two handshakes (see the module docstring), or why they failed."""
    attempts = scan.scan_result
    if attempts is None or scan.connectivity_result is None:
        return None
    tls12 = _accepted(attempts).get("TLSv1.2", [])
    pair = order_probe_pair(tls12, WorkaroundForTls12ForCipherSuites.requires_legacy_openssl)
    if pair is None:
        return None
    strong, weak = pair
    legacy = WorkaroundForTls12ForCipherSuites.requires_legacy_openssl(strong.openssl_name)
    info = ServerConnectivityInfo(
        server_location=scan.server_location,
        network_configuration=scan.network_configuration,
        tls_probing_result=scan.connectivity_result,
    )
    by_openssl = {strong.openssl_name: strong.name, weak.openssl_name: weak.name}

    def chosen(first: CipherSuite, second: CipherSuite) -> str:
        connection = info.get_preconfigured_tls_connection(
            override_tls_version=TlsVersionEnum.TLS_1_2, should_use_legacy_openssl=legacy
        )
        try:
            connection.ssl_client.set_cipher_list(f"{first.openssl_name}:{second.openssl_name}")
            connection.connect()
            name = connection.ssl_client.get_current_cipher_name()
        finally:
            connection.close()
        return by_openssl.get(name, name)

    try:
        return OrderProbe(
            strong=strong.name,
            weak=weak.name,
            chosen_strong_first=chosen(strong, weak),
            chosen_weak_first=chosen(weak, strong),
        )
    except Exception as exc:  # sslyze and nassl raise many types; any means "not tested"
        return f"cipher order probe failed: {type(exc).__name__}: {exc}"[:300]


def _probe_orders(
    scans: dict[str, ServerScanResult], targets: Sequence[TlsTarget], concurrency: int
) -> dict[str, OrderProbe | str | None]:
    """Run the order probes, one address at a time per worker (two connections each)."""
    by_address: dict[str, list[TlsTarget]] = {}
    for t in targets:
        if scans[t.key].scan_status is ServerScanStatusEnum.COMPLETED:
            by_address.setdefault(t.address, []).append(t)

    def run(group: list[TlsTarget]) -> dict[str, OrderProbe | str | None]:
        return {t.key: _probe_order(scans[t.key]) for t in group}

    out: dict[str, OrderProbe | str | None] = {}
    if not by_address:
        return out
    workers = max(1, min(concurrency, len(by_address)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(run, by_address.values()):
            out.update(part)
    return out


def _errored(scan: ServerScanResult) -> set[ScanCommand]:
    """The scan commands of a completed scan that ended in an error."""
    attempts = scan.scan_result
    if scan.scan_status is not ServerScanStatusEnum.COMPLETED or attempts is None:
        return set()
    return {
        command
        for command in _COMMANDS
        if getattr(attempts, command.value).status is ScanCommandAttemptStatusEnum.ERROR
    }


def _merge(
    scan: ServerScanResult, again: ServerScanResult, commands: Iterable[ScanCommand]
) -> ServerScanResult:
    """`scan` with the attempts of `commands` that completed in `again`."""
    if scan.scan_result is None or again.scan_result is None:
        return scan
    redone = {
        command.value: attempt
        for command in commands
        if (attempt := getattr(again.scan_result, command.value)).status
        is ScanCommandAttemptStatusEnum.COMPLETED
    }
    return dataclasses.replace(scan, scan_result=dataclasses.replace(scan.scan_result, **redone))


def _no_connectivity_reason(scan: ServerScanResult) -> str:
    detail = _exception_line(scan.connectivity_error_trace)
    return f"no TLS connection (tried twice){f': {detail}' if detail else ''}"


def audit_tls(
    targets: Sequence[TlsTarget],
    *,
    ca_file: Path | None,
    timeout: float,
    concurrency: int,
    per_host: int,
) -> dict[str, TlsResult]:
    """Audit every target; the result is keyed by `TlsTarget.key`. Synchronous (sslyze
    runs its own threads): call it through asyncio.to_thread. Raises ValueError when
    `ca_file` holds no certificate."""
    if not targets:
        return {}
    anchors = load_anchors(ca_file)
    concurrency = max(1, concurrency)
    per_host = max(1, per_host)
    unsupported: dict[str, TlsResult] = {}
    for t in targets:
        if t.tls_mode is TlsMode.CLEARTEXT and t.protocol not in _STARTTLS:
            reason = f"STARTTLS for {t.protocol.value} is not supported by the TLS engine (sslyze)"
            unsupported[t.key] = unreachable(t, reason)
            continue
        try:
            _request(t, timeout)
        except ValueError as exc:  # UnicodeError included: a name IDNA cannot encode
            unsupported[t.key] = unreachable(t, f"cannot scan {t.server_name!r}: {exc}")
    scannable = [t for t in targets if t.key not in unsupported]

    scans: dict[str, ServerScanResult] = {}
    pending = scannable
    for _ in range(2):  # one retry: spurious timeouts happen on a loaded server or machine
        if not pending:
            break
        scans.update(_scan(pending, timeout=timeout, concurrency=concurrency, per_host=per_host))
        pending = [
            t for t in pending if scans[t.key].scan_status is not ServerScanStatusEnum.COMPLETED
        ]
    errored = {t.key: found for t in scannable if (found := _errored(scans[t.key]))}
    if errored:
        again = _scan(
            [t for t in scannable if t.key in errored],
            timeout=timeout,
            concurrency=concurrency,
            per_host=per_host,
            commands=errored,
        )
        for key, rescan in again.items():
            scans[key] = _merge(scans[key], rescan, errored[key])

    orders = _probe_orders(scans, scannable, concurrency)
    now = dt.datetime.now(dt.UTC)
    results = dict(unsupported)
    for t in scannable:
        scan = scans[t.key]
        if scan.scan_status is ServerScanStatusEnum.COMPLETED and scan.scan_result is not None:
            results[t.key] = evaluate(
                t, scan.scan_result, anchors=anchors, now=now, order=orders.get(t.key)
            )
        else:
            results[t.key] = unreachable(t, _no_connectivity_reason(scan))
    return results
