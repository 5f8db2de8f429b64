"""The TLS checks TLS-01..TLS-11 of one endpoint, and `evaluate`, the pure core of
the TLS audit: one completed sslyze scan in, the endpoint's findings out.

- A scan command that errored makes every ID it feeds (`tlsmodel.FEEDS`)
  ``not_tested`` with sslyze's reason, never a pass; a problem another command
  proved is still reported.
- TLS-06 is IMAP's rule (RFC 9051 §11.1), checked for IMAP only.
- TLS-07: sslyze 6 does not report cipher order, so two extra TLS 1.2 handshakes
  (`tlsaudit`) offer one strong suite (forward secrecy and AEAD) and one weak
  suite the server accepts, in both orders (`order_probe_pair` picks them). A
  server that follows the client's order, or prefers the weak suite, while it
  accepts weak suites is reported (info); with only strong suites the order does
  not matter (Mozilla's profiles set no server preference).
- CERT-09 compares the twins of one service (`twin_findings`).
- Evidence lists at most `tlsmodel.LIST_LIMIT` suites or names and says how many
  more there are.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes
from sslyze.plugins.openssl_cipher_suites.cipher_suites import CipherSuite
from sslyze.plugins.scan_commands import ScanCommand
from sslyze.scanner.models import AllScanCommandsAttempts
from sslyze.scanner.scan_command_attempt import ScanCommandAttempt, ScanCommandAttemptStatusEnum

from imapguard.scanner import sslyze_adapter
from imapguard.scanner.catalog import finding, not_tested
from imapguard.scanner.certrules import (
    certificate_findings,
    certificate_summary,
    merge_deployments,
)
from imapguard.scanner.identity import check_identity
from imapguard.scanner.model import Finding, Protocol, Severity
from imapguard.scanner.tlsmodel import (
    CERT_IDS,
    COMMANDS,
    FEEDS,
    LIST_LIMIT,
    MIN_EC_BITS,
    TLS_IDS,
    VERSIONS,
    OrderProbe,
    TlsResult,
    TlsTarget,
    graded,
    listing,
    reference,
    worst,
)
from imapguard.scanner.trust import TrustAnchors

__all__ = [
    "accepted_by_version",
    "attempt_error",
    "completed",
    "evaluate",
    "exception_line",
    "order_probe_pair",
    "twin_findings",
    "unreachable",
]

#: TLS-08 / CERT-06 minimums (Mozilla Server Side TLS, Logjam).
_MIN_DH_BITS = 2048

#: RFC 9051 §11.1: "IMAP ... MUST implement" this suite when using TLS 1.2.
_IMAP_MANDATORY_SUITE = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"


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


def completed(attempts: AllScanCommandsAttempts, command: ScanCommand) -> Any:
    """The result of `command`, or None when it did not complete."""
    attempt: ScanCommandAttempt[Any] = getattr(attempts, command.value)
    if attempt.status is ScanCommandAttemptStatusEnum.COMPLETED:
        return attempt.result
    return None


def accepted_by_version(
    attempts: AllScanCommandsAttempts,
) -> dict[str, list[sslyze_adapter.CipherSuiteAcceptedByServer]]:
    """Accepted suites per version label, for the versions whose scan completed."""
    out: dict[str, list[sslyze_adapter.CipherSuiteAcceptedByServer]] = {}
    for command, label in VERSIONS:
        result = completed(attempts, command)
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
    accepted: Sequence[sslyze_adapter.CipherSuiteAcceptedByServer],
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

    for command in COMMANDS:
        if completed(attempts, command) is not None:
            continue
        reason = attempt_error(command, getattr(attempts, command.value))
        for check_id in FEEDS[command]:
            errors.setdefault(check_id, []).append(reason)

    accepted = accepted_by_version(attempts)
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
    cert_info = completed(attempts, ScanCommand.CERTIFICATE_INFO)
    if cert_info is not None:
        deployments = [
            (d.received_certificate_chain, d.ocsp_response is not None)
            for d in cert_info.certificate_deployments
            if d.received_certificate_chain
        ]
        chains = [chain for chain, _ in deployments]
        if chains:
            per_chain = [
                certificate_findings(target, chain, anchors, now, stapled)
                for chain, stapled in deployments
            ]
            for f in merge_deployments(per_chain, [c[0] for c in chains]):
                found[f.id] = f
            certificate = certificate_summary(
                chains[0][0],
                trusted=anchors.validate(chains[0], now).trusted,
                identity=check_identity(chains[0][0], reference(target)),
                now=now,
            )
            fingerprints = [c[0].fingerprint(hashes.SHA256()).hex() for c in chains]
        else:
            for check_id in CERT_IDS:
                errors.setdefault(check_id, []).append("the server sent no certificate")

    findings: list[Finding] = []
    for check_id in TLS_IDS + CERT_IDS:
        if check_id in found:
            findings.append(found[check_id])
        elif check_id in errors:
            findings.append(not_tested(check_id, "; ".join(dict.fromkeys(errors[check_id]))))
    versions = tuple(label for _, label in VERSIONS if accepted.get(label))
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
    findings = tuple(not_tested(check_id, reason) for check_id in TLS_IDS + CERT_IDS)
    return TlsResult(findings, (), {}, {})


def exception_line(trace: traceback.TracebackException | None) -> str:
    """The last line of the exception sslyze caught ("" if none), for a reason."""
    if trace is None:
        return ""
    lines = [line.strip() for line in trace.format_exception_only()]
    return lines[-1][:200] if lines else ""


def attempt_error(command: ScanCommand, attempt: ScanCommandAttempt[Any]) -> str:
    if attempt.status is ScanCommandAttemptStatusEnum.NOT_SCHEDULED:
        return f"sslyze {command.value} did not run"
    why = attempt.error_reason.value if attempt.error_reason else "error"
    detail = exception_line(attempt.error_trace)
    return f"sslyze {command.value} failed: {why}{f' ({detail})' if detail else ''}"


def _protocol_findings(
    target: TlsTarget, accepted: dict[str, list[sslyze_adapter.CipherSuiteAcceptedByServer]]
) -> list[Finding]:
    out: list[Finding] = []

    def names(label: str) -> list[str]:
        return [a.cipher_suite.name for a in accepted.get(label, [])]

    for check_id, old in (("TLS-01", ("SSLv2", "SSLv3")), ("TLS-02", ("TLSv1.0", "TLSv1.1"))):
        evidence = [
            f"{v} accepted with {len(names(v))} suite(s): {listing(names(v))}"
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
    out += graded("TLS-03", missing)

    # TLS-04 / TLS-05 over every version (TLS 1.3 suites are all AEAD with ephemeral keys).
    # Evidence names each suite once, with the versions that accept it.
    broken: dict[str, tuple[Severity, str, list[str]]] = {}
    no_fs: dict[str, list[str]] = {}
    no_aead: dict[str, list[str]] = {}
    any_fs = any_aead = False
    for _, label in VERSIONS:
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
        return listing([f"{name} ({', '.join(labels)})" for name, labels in suites.items()])

    if broken:
        entries = [f"{n} ({why}; {', '.join(labels)})" for n, (_, why, labels) in broken.items()]
        out.append(
            finding(
                "TLS-04",
                [f"{len(broken)} suite(s): {listing(entries)}"],
                severity=worst(severity for severity, _, _ in broken.values()),
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
                [f"TLS 1.2 accepted without {_IMAP_MANDATORY_SUITE}; accepted: {listing(tls12)}"],
            )
        )
    return out


def _handshake_findings(
    attempts: AllScanCommandsAttempts,
    accepted: dict[str, list[sslyze_adapter.CipherSuiteAcceptedByServer]],
    errors: dict[str, list[str]],
) -> list[Finding]:
    """TLS-08..TLS-11. An inconclusive ROBOT result is added to `errors` (not tested)."""
    out: list[Finding] = []

    # TLS-08: the ephemeral keys negotiated per suite, and the curves accepted.
    weak_kex: list[str] = []
    for _, label in VERSIONS:
        for a in accepted.get(label, []):
            key = a.ephemeral_key
            if isinstance(key, sslyze_adapter.DhEphemeralKeyInfo) and key.size < _MIN_DH_BITS:
                weak_kex.append(f"DH {key.size} bits with {label} {a.cipher_suite.name}")
            elif isinstance(key, sslyze_adapter.EcDhEphemeralKeyInfo):
                bits = _curve_bits(key.curve_name)
                if bits is not None and bits < MIN_EC_BITS:
                    weak_kex.append(f"{key.curve_name} with {label} {a.cipher_suite.name}")
    curves = attempts.elliptic_curves.result
    if curves is not None and curves.supported_curves:
        small = [
            c.name
            for c in curves.supported_curves
            if (bits := _curve_bits(c.name)) is not None and bits < MIN_EC_BITS
        ]
        if small:
            weak_kex.append(f"curves below {MIN_EC_BITS} bits accepted: {listing(small)}")
    if weak_kex:
        more = len(weak_kex) - LIST_LIMIT
        out.append(
            finding("TLS-08", weak_kex[:LIST_LIMIT] + ([f"(+{more} more)"] if more > 0 else []))
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
    out += graded("TLS-09", issues)

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
        if robot.robot_result is sslyze_adapter.RobotScanResultEnum.VULNERABLE_STRONG_ORACLE:
            vulns.append((Severity.CRITICAL, "ROBOT: strong Bleichenbacher oracle"))
        elif robot.robot_result is sslyze_adapter.RobotScanResultEnum.VULNERABLE_WEAK_ORACLE:
            vulns.append(
                (Severity.HIGH, "ROBOT: weak Bleichenbacher oracle (high: slow to exploit)")
            )
        elif robot.robot_result is sslyze_adapter.RobotScanResultEnum.UNKNOWN_INCONSISTENT_RESULTS:
            errors.setdefault("TLS-10", []).append("ROBOT: the server's answers were inconsistent")
    out += graded("TLS-10", vulns)

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
    for _, label in VERSIONS:
        only_a = sorted(set(suites_a.get(label, [])) - set(suites_b.get(label, [])))
        only_b = sorted(set(suites_b.get(label, [])) - set(suites_a.get(label, [])))
        for name, only in ((a_name, only_a), (b_name, only_b)):
            if only:
                diffs.append(f"{label} suites only on {name}: {listing(only)}")
    certs_a, certs_b = a.policy["certificates"], b.policy["certificates"]
    if certs_a and certs_b and sorted(certs_a) != sorted(certs_b):
        diffs.append(
            f"certificate: {a_name} sha256 {', '.join(certs_a)}; "
            f"{b_name} sha256 {', '.join(certs_b)}"
        )
    return [finding("CERT-09", diffs)] if diffs else []
