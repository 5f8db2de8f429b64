"""The certificate checks CERT-01..CERT-08 of one TLS endpoint: pure functions of
the chains sslyze received, the trust anchors and the time.

- Identity (CERT-02) is `identity.check_identity` against the name the user gave
  (`TlsTarget.server_name`), else the address.
- Port 25 (server-to-server SMTP): a chain that does not validate or name the
  host is only info (senders rarely validate; DANE is the fix there), as
  Internet.nl grades it.
- CERT-07 (lifetime above 398 days) is a CA/B Forum rule for public CAs: a chain
  that anchors only in `--ca-file` is exempt.
- A server with several certificate deployments (RSA and ECDSA) gets one finding
  per ID, merged at the worst severity.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from imapguard.scanner.catalog import finding
from imapguard.scanner.identity import IdentityResult, NameMatch, check_identity
from imapguard.scanner.model import Finding, Protocol, Severity
from imapguard.scanner.tlsmodel import (
    MIN_EC_BITS,
    TlsTarget,
    graded,
    reference,
    worst,
)
from imapguard.scanner.trust import ChainVerdict, TrustAnchors

__all__ = [
    "certificate_findings",
    "certificate_summary",
    "iso_time",
    "key_description",
    "merge_deployments",
    "x509_name",
]

#: CERT-03 warns this many days before expiry (testssl's DAYS2WARN2).
_EXPIRY_WARN_DAYS = 30

#: CERT-07: CA/B Forum Baseline Requirements §6.3.2 maximum (since 2020-09-01).
_MAX_LIFETIME_DAYS = 398

_MIN_RSA_BITS = 2048


def iso_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def x509_name(name: x509.Name) -> str:
    try:
        return name.rfc4514_string() or "(empty)"
    except ValueError:
        return "(unparsable name)"


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def key_description(cert: x509.Certificate) -> tuple[str, int | None]:
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


def certificate_findings(
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
            f"the server sent {len(chain)} certificate(s); leaf issuer {x509_name(leaf.issuer)}"
        ]
        if len(chain) == 1 and _self_issued(leaf):
            evidence.append("the leaf is self-signed")
        top = chain[-1].issuer
        if all(anchor.subject != top for anchor in anchors.public + anchors.private):
            evidence.append(
                f"{x509_name(top)} is not among the trust anchors, {anchors.describe()}"
            )
        else:
            # A known issuer and still no path: say what the verifier objected to.
            evidence.append(f"not valid against {anchors.describe()}: {verdict.error}")
        if mx:
            evidence.append(mx_note)
        out.append(finding("CERT-01", evidence, severity=Severity.INFO if mx else None))

    # CERT-02
    identity = check_identity(leaf, reference(target))
    if not identity.ok:
        out.append(_identity_finding(target, identity, mx, mx_note))

    # CERT-03
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    validity: list[tuple[Severity, str]] = []
    if now > not_after:
        days = (now - not_after).days
        validity.append(
            (Severity.CRITICAL, f"expired on {iso_time(not_after)} ({days} day(s) ago)")
        )
    elif now < not_before:
        validity.append(
            (
                Severity.HIGH,
                f"not valid before {iso_time(not_before)} (the server's clock or the CA's)",
            )
        )
    elif (not_after - now) <= dt.timedelta(days=_EXPIRY_WARN_DAYS):
        days = (not_after - now).days
        validity.append(
            (
                Severity.MEDIUM,
                f"expires on {iso_time(not_after)}, in {days} day(s) (within {_EXPIRY_WARN_DAYS})",
            )
        )
    out += graded("CERT-03", validity)

    # CERT-04
    chain_problems = _chain_problems(chain, verdict)
    if chain_problems:
        out.append(finding("CERT-04", chain_problems))

    # CERT-05 / CERT-06: leaf and intermediates; a root's own signature and key are the
    # trust store's business (roots are self-issued; their self-signature is never checked).
    weak_sigs: list[str] = []
    weak_keys: list[str] = []
    for cert in chain:
        role = "leaf" if cert is leaf else f"CA {x509_name(cert.subject)}"
        if cert is not leaf and _self_issued(cert):
            continue
        algorithm = _signature_hash(cert)
        if algorithm in ("sha1", "md5"):
            weak_sigs.append(f"{role} signed with {algorithm.upper()}")
        kind, bits = key_description(cert)
        too_small = (
            (kind == "RSA" and bits is not None and bits < _MIN_RSA_BITS)
            or (kind == "EC" and bits is not None and bits < MIN_EC_BITS)
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
                    f"valid for {lifetime} days ({iso_time(not_before)} to {iso_time(not_after)}), "
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
                f"out of order: certificate {index + 1} ({x509_name(chain[index].subject)}) did "
                f"not issue certificate {index} (issuer {x509_name(chain[index - 1].issuer)})"
            )
            break
    last = chain[-1]
    ca_issuers = _aia(chain[0], AuthorityInformationAccessOID.CA_ISSUERS)
    if not verdict.trusted and not _self_issued(last) and ca_issuers:
        # Mail clients do not fetch missing intermediates (browsers do, from this URL).
        problems.append(
            f"probably incomplete: the last certificate sent was issued by "
            f"{x509_name(last.issuer)}, which was not sent and is not a known root; the leaf "
            f"points to its issuer at {ca_issuers[0]}"
        )
    return problems


def merge_deployments(
    per_chain: list[list[Finding]], leaves: list[x509.Certificate]
) -> list[Finding]:
    """One finding per ID over every certificate the server sent (most send one; some
    send an RSA and an ECDSA one): the worst severity, every evidence line."""
    if len(per_chain) == 1:
        return per_chain[0]
    merged: dict[str, Finding] = {}
    for number, (findings, leaf) in enumerate(zip(per_chain, leaves, strict=True), start=1):
        kind, bits = key_description(leaf)
        label = f"certificate {number} ({kind}{f' {bits}' if bits else ''})"
        for f in findings:
            lines = tuple(f"{label}: {line}" for line in f.evidence)
            if f.id not in merged:
                merged[f.id] = dataclasses.replace(f, evidence=lines)
            else:
                old = merged[f.id]
                merged[f.id] = dataclasses.replace(
                    old,
                    severity=worst((old.severity, f.severity)),
                    evidence=old.evidence + lines,
                )
    return list(merged.values())


def certificate_summary(
    leaf: x509.Certificate, *, trusted: bool, identity: IdentityResult, now: dt.datetime
) -> dict[str, Any]:
    kind, bits = key_description(leaf)
    return {
        "subject": x509_name(leaf.subject),
        "issuer": x509_name(leaf.issuer),
        "san": list(identity.dns_names) + list(identity.ip_addresses),
        "not_before": iso_time(leaf.not_valid_before_utc),
        "not_after": iso_time(leaf.not_valid_after_utc),
        "days_left": math.floor((leaf.not_valid_after_utc - now).total_seconds() / 86400),
        "key": f"{kind} {bits}" if bits else kind,
        "signature": _signature_hash(leaf),
        "sha256": leaf.fingerprint(hashes.SHA256()).hex(),
        "trusted": trusted,
        "name_match": identity.match.value,
    }
