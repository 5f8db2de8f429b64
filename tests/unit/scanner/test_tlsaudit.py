"""The mapping of sslyze results onto TLS-xx / CERT-xx findings (`tlsaudit.evaluate`).

The sslyze results are sslyze's own frozen dataclasses, built by hand; the certificates
are real ones made with `cryptography`. No network: the real servers are in
tests/integration/scanner/test_tls_audit.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from nassl.ephemeral_key_info import (
    DhEphemeralKeyInfo,
    EcDhEphemeralKeyInfo,
    OpenSslEcNidEnum,
    OpenSslEvpPkeyEnum,
)
from sslyze.errors import ConnectionToServerTimedOut
from sslyze.plugins.certificate_info._cert_chain_analyzer import (
    CertificateDeploymentAnalysisResult,
)
from sslyze.plugins.certificate_info.implementation import CertificateInfoScanResult
from sslyze.plugins.compression_plugin import CompressionScanResult
from sslyze.plugins.elliptic_curves_plugin import EllipticCurve, SupportedEllipticCurvesScanResult
from sslyze.plugins.ems_extension_plugin import EmsExtensionScanResult
from sslyze.plugins.fallback_scsv_plugin import FallbackScsvScanResult
from sslyze.plugins.heartbleed_plugin import HeartbleedScanResult
from sslyze.plugins.openssl_ccs_injection_plugin import OpenSslCcsInjectionScanResult
from sslyze.plugins.openssl_cipher_suites._test_cipher_suite import CipherSuiteAcceptedByServer
from sslyze.plugins.openssl_cipher_suites.cipher_suites import CipherSuite
from sslyze.plugins.openssl_cipher_suites.implementation import CipherSuitesScanResult
from sslyze.plugins.robot._robot_tester import RobotScanResultEnum
from sslyze.plugins.robot.implementation import RobotScanResult
from sslyze.plugins.scan_commands import ScanCommand
from sslyze.plugins.session_renegotiation_plugin import SessionRenegotiationScanResult
from sslyze.scanner.models import (
    AllScanCommandsAttempts,
    ServerConnectivityStatusEnum,
    ServerScanResult,
    ServerScanStatusEnum,
)
from sslyze.scanner.scan_command_attempt import (
    ScanCommandAttempt,
    ScanCommandAttemptStatusEnum,
    ScanCommandErrorReasonEnum,
)
from sslyze.server_connectivity import TlsVersionEnum
from sslyze.server_setting import ServerNetworkConfiguration, ServerNetworkLocation

from imapguard.scanner import tlsaudit
from imapguard.scanner.model import Finding, Protocol, Severity, Status, TlsMode
from imapguard.scanner.tlsaudit import (
    OrderProbe,
    TlsResult,
    TlsTarget,
    TrustAnchors,
    audit_tls,
    evaluate,
    load_ca_file,
    order_probe_pair,
    twin_findings,
    unreachable,
)

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
NAME = "mail.example.test"
TARGET = TlsTarget("k", "192.0.2.10", 993, Protocol.IMAP, TlsMode.IMPLICIT, NAME)
ALL_IDS = {f"TLS-{i:02d}" for i in range(1, 12)} | {f"CERT-0{i}" for i in range(1, 9)}

# -- certificates ----------------------------------------------------------------------

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_SMALL = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (on purpose)
_EC = ec.generate_private_key(ec.SECP256R1())
_EC_SMALL = ec.generate_private_key(ec.SECP192R1())
_OCSP_URL = "http://ocsp.example.test/"
_CA_ISSUERS_URL = "http://ca.example.test/intermediate.crt"

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(
    cn: str, key: Key = _EC, issuer: tuple[x509.Name, Key] | None = None, algorithm: Any = None
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (_name(cn), key)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=3650))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer_key, algorithm if algorithm is not None else hashes.SHA256())
    )


ROOT = make_ca("Test Root")
OTHER_ROOT = make_ca("Unknown Root", _RSA)
INTERMEDIATE = make_ca("Test Intermediate", _RSA, issuer=(ROOT.subject, _EC))


def make_leaf(
    *,
    names: Sequence[str] = (NAME,),
    cn: str | None = None,
    key: Key = _RSA,
    issuer: tuple[x509.Certificate, Key] = (ROOT, _EC),
    not_before: dt.datetime = NOW - dt.timedelta(days=10),
    days: int = 90,
    algorithm: Any = None,
    ocsp: bool = True,
    crl: bool = False,
    ca_issuers: bool = False,
    self_signed: bool = False,
) -> x509.Certificate:
    subject = _name(cn) if cn else x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "t")])
    issuer_cert, issuer_key = issuer
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if self_signed else issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    access = []
    if ocsp:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(_OCSP_URL)
            )
        )
    if ca_issuers:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(_CA_ISSUERS_URL),
            )
        )
    if access:
        builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
    if crl:
        point = x509.DistributionPoint(
            [x509.UniformResourceIdentifier("http://crl.example.test/ca.crl")], None, None, None
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return builder.sign(
        key if self_signed else issuer_key,
        algorithm if algorithm is not None else hashes.SHA256(),
    )


ANCHORS = TrustAnchors(public=(), private=(ROOT,))

# -- sslyze results ----------------------------------------------------------------------


def done(result: Any) -> ScanCommandAttempt[Any]:
    return ScanCommandAttempt(
        status=ScanCommandAttemptStatusEnum.COMPLETED,
        error_reason=None,
        error_trace=None,
        result=result,
    )


def failed(message: str = "Connection reset") -> ScanCommandAttempt[Any]:
    try:
        raise ConnectionResetError(message)
    except ConnectionResetError as exc:
        trace = traceback.TracebackException.from_exception(exc)
    return ScanCommandAttempt(
        status=ScanCommandAttemptStatusEnum.ERROR,
        error_reason=ScanCommandErrorReasonEnum.CONNECTIVITY_ISSUE,
        error_trace=trace,
        result=None,
    )


SKIPPED: ScanCommandAttempt[Any] = ScanCommandAttempt(
    status=ScanCommandAttemptStatusEnum.NOT_SCHEDULED,
    error_reason=None,
    error_trace=None,
    result=None,
)

P256 = EcDhEphemeralKeyInfo(
    type=OpenSslEvpPkeyEnum.EC, size=256, public_bytes=bytearray(), curve=OpenSslEcNidEnum.SECP256R1
)
X25519 = EcDhEphemeralKeyInfo(
    type=OpenSslEvpPkeyEnum.X25519,
    size=253,
    public_bytes=bytearray(),
    curve=OpenSslEcNidEnum.X25519,
)


def dh(bits: int) -> DhEphemeralKeyInfo:
    return DhEphemeralKeyInfo(
        type=OpenSslEvpPkeyEnum.DH,
        size=bits,
        public_bytes=bytearray(),
        prime=bytearray(),
        generator=bytearray(),
    )


def suite(name: str, key: Any = None, anonymous: bool = False) -> CipherSuiteAcceptedByServer:
    return CipherSuiteAcceptedByServer(
        cipher_suite=CipherSuite(
            name=name, is_anonymous=anonymous, key_size=128, openssl_name=name
        ),
        ephemeral_key=key,
    )


def suites(version: TlsVersionEnum, *accepted: CipherSuiteAcceptedByServer) -> Any:
    return done(CipherSuitesScanResult(version, list(accepted), []))


GOOD_TLS12 = (
    suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", P256),
    suite("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", P256),
    suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", X25519),
)
GOOD_TLS13 = (
    suite("TLS_AES_128_GCM_SHA256", X25519),
    suite("TLS_AES_256_GCM_SHA384", X25519),
)


def deployment(
    chain: Sequence[x509.Certificate], stapled: bool = False
) -> CertificateDeploymentAnalysisResult:
    return CertificateDeploymentAnalysisResult(
        received_certificate_chain=list(chain),
        leaf_certificate_has_must_staple_extension=False,
        leaf_certificate_is_ev=False,
        leaf_certificate_signed_certificate_timestamps_count=0,
        received_chain_contains_anchor_certificate=None,
        received_chain_has_valid_order=True,
        path_validation_results=[],
        verified_chain_has_sha1_signature=None,
        verified_chain_has_legacy_symantec_anchor=None,
        # Only its presence matters to the mapping.
        ocsp_response=object() if stapled else None,  # type: ignore[arg-type]
        ocsp_response_is_trusted=None,
    )


def scan(*chains: Sequence[x509.Certificate], **overrides: Any) -> AllScanCommandsAttempts:
    """A clean server (TLS 1.2 ECDHE+AEAD and TLS 1.3, nothing vulnerable) unless
    `overrides` (attempt field name -> attempt) says otherwise."""
    if not chains:
        chains = ((make_leaf(),),)
    fields: dict[str, Any] = {
        "certificate_info": done(
            CertificateInfoScanResult(NAME, [deployment(c) for c in chains], None)
        ),
        "ssl_2_0_cipher_suites": suites(TlsVersionEnum.SSL_2_0),
        "ssl_3_0_cipher_suites": suites(TlsVersionEnum.SSL_3_0),
        "tls_1_0_cipher_suites": suites(TlsVersionEnum.TLS_1_0),
        "tls_1_1_cipher_suites": suites(TlsVersionEnum.TLS_1_1),
        "tls_1_2_cipher_suites": suites(TlsVersionEnum.TLS_1_2, *GOOD_TLS12),
        "tls_1_3_cipher_suites": suites(TlsVersionEnum.TLS_1_3, *GOOD_TLS13),
        "tls_compression": done(CompressionScanResult(supports_compression=False)),
        "tls_1_3_early_data": SKIPPED,
        "openssl_ccs_injection": done(
            OpenSslCcsInjectionScanResult(is_vulnerable_to_ccs_injection=False)
        ),
        "tls_fallback_scsv": done(FallbackScsvScanResult(supports_fallback_scsv=True)),
        "heartbleed": done(HeartbleedScanResult(is_vulnerable_to_heartbleed=False)),
        "robot": done(RobotScanResult(RobotScanResultEnum.NOT_VULNERABLE_RSA_NOT_SUPPORTED)),
        "session_renegotiation": done(SessionRenegotiationScanResult(True, False, 0)),
        "session_resumption": SKIPPED,
        "elliptic_curves": done(
            SupportedEllipticCurvesScanResult(
                True, [EllipticCurve("X25519", 1034), EllipticCurve("secp256r1", 415)], []
            )
        ),
        "http_headers": SKIPPED,
        "tls_extended_master_secret": done(EmsExtensionScanResult(supports_ems_extension=True)),
    }
    fields.update(overrides)
    return AllScanCommandsAttempts(**fields)


def run(
    attempts: AllScanCommandsAttempts | None = None,
    target: TlsTarget = TARGET,
    anchors: TrustAnchors = ANCHORS,
    order: OrderProbe | str | None = None,
) -> TlsResult:
    return evaluate(target, attempts or scan(), anchors=anchors, now=NOW, order=order)


def by_id(result: TlsResult) -> dict[str, Finding]:
    out = {f.id: f for f in result.findings}
    assert len(out) == len(result.findings), "one finding per ID"
    return out


def failures(result: TlsResult) -> set[str]:
    return {f.id for f in result.findings if f.status is Status.FAIL}


def text(f: Finding) -> str:
    return " | ".join(f.evidence)


# -- a clean server ------------------------------------------------------------------


def test_clean_server_has_no_finding_and_a_full_summary() -> None:
    leaf = make_leaf()
    result = run(scan((leaf,)))
    assert result.findings == ()
    assert result.tls_versions == ("TLSv1.2", "TLSv1.3")
    cert = result.certificate
    assert set(cert) == {
        "subject",
        "issuer",
        "san",
        "not_before",
        "not_after",
        "days_left",
        "key",
        "signature",
        "sha256",
        "trusted",
        "name_match",
    }
    assert cert["subject"] == "O=t"
    assert cert["issuer"] == "CN=Test Root"
    assert cert["san"] == [NAME]
    assert cert["not_before"] == "2026-05-22T12:00:00Z"
    assert cert["not_after"] == "2026-08-20T12:00:00Z"
    assert cert["days_left"] == 80
    assert cert["key"] == "RSA 2048"
    assert cert["signature"] == "sha256"
    assert cert["sha256"] == leaf.fingerprint(hashes.SHA256()).hex()
    assert cert["trusted"] is True
    assert cert["name_match"] == "matched"
    assert result.policy == {
        "versions": ["TLSv1.2", "TLSv1.3"],
        "suites": {
            "TLSv1.2": sorted(s.cipher_suite.name for s in GOOD_TLS12),
            "TLSv1.3": sorted(s.cipher_suite.name for s in GOOD_TLS13),
        },
        "certificates": [leaf.fingerprint(hashes.SHA256()).hex()],
    }


# -- protocol versions ---------------------------------------------------------------


def test_sslv3_and_tls10_accepted() -> None:
    result = run(
        scan(
            ssl_3_0_cipher_suites=suites(
                TlsVersionEnum.SSL_3_0, suite("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", P256)
            ),
            tls_1_0_cipher_suites=suites(
                TlsVersionEnum.TLS_1_0, suite("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", P256)
            ),
        )
    )
    found = by_id(result)
    assert failures(result) == {"TLS-01", "TLS-02", "TLS-05"}
    assert found["TLS-01"].severity is Severity.CRITICAL
    assert "SSLv3 accepted with 1 suite(s)" in text(found["TLS-01"])
    assert found["TLS-02"].severity is Severity.HIGH
    assert "TLSv1.0 accepted" in text(found["TLS-02"])
    assert result.tls_versions == ("SSLv3", "TLSv1.0", "TLSv1.2", "TLSv1.3")


def test_tls13_missing_is_low_and_tls12_missing_is_medium() -> None:
    no13 = by_id(run(scan(tls_1_3_cipher_suites=suites(TlsVersionEnum.TLS_1_3))))
    assert set(no13) == {"TLS-03"}
    assert no13["TLS-03"].severity is Severity.LOW
    assert "TLS 1.3 is not offered" in text(no13["TLS-03"])

    only13 = by_id(run(scan(tls_1_2_cipher_suites=suites(TlsVersionEnum.TLS_1_2))))
    assert set(only13) == {"TLS-03"}
    assert only13["TLS-03"].severity is Severity.MEDIUM
    assert "TLS 1.2 is not offered" in text(only13["TLS-03"])
    assert "TLS 1.3" not in text(only13["TLS-03"])


# -- cipher suites ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "anonymous", "severity", "reason"),
    [
        ("TLS_RSA_WITH_RC4_128_SHA", False, Severity.CRITICAL, "RC4"),
        ("TLS_RSA_EXPORT_WITH_DES40_CBC_SHA", False, Severity.CRITICAL, "export"),
        ("TLS_RSA_WITH_NULL_SHA256", False, Severity.CRITICAL, "NULL cipher"),
        ("TLS_DH_anon_WITH_AES_128_GCM_SHA256", True, Severity.CRITICAL, "anonymous"),
        ("TLS_RSA_WITH_3DES_EDE_CBC_SHA", False, Severity.HIGH, "3DES"),
        ("TLS_RSA_WITH_DES_CBC_SHA", False, Severity.HIGH, "DES"),
        ("TLS_RSA_WITH_IDEA_CBC_SHA", False, Severity.HIGH, "IDEA"),
        ("SSL_CK_DES_192_EDE3_CBC_WITH_MD5", False, Severity.HIGH, "3DES"),
    ],
)
def test_broken_ciphers(name: str, anonymous: bool, severity: Severity, reason: str) -> None:
    accepted = (*GOOD_TLS12, suite(name, anonymous=anonymous))
    found = by_id(run(scan(tls_1_2_cipher_suites=suites(TlsVersionEnum.TLS_1_2, *accepted))))
    assert found["TLS-04"].severity is severity
    assert f"{name} ({reason}; TLSv1.2)" in text(found["TLS-04"])


def test_broken_takes_the_worst_severity() -> None:
    accepted = (
        suite("TLS_RSA_WITH_3DES_EDE_CBC_SHA"),
        suite("TLS_RSA_WITH_RC4_128_MD5"),
    )
    found = by_id(run(scan(tls_1_0_cipher_suites=suites(TlsVersionEnum.TLS_1_0, *accepted))))
    assert found["TLS-04"].severity is Severity.CRITICAL
    assert text(found["TLS-04"]).startswith("2 suite(s):")


def test_no_forward_secrecy_and_cbc() -> None:
    accepted = (
        *GOOD_TLS12,
        suite("TLS_RSA_WITH_AES_128_GCM_SHA256"),
        suite("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", P256),
    )
    found = by_id(run(scan(tls_1_2_cipher_suites=suites(TlsVersionEnum.TLS_1_2, *accepted))))
    assert set(found) == {"TLS-05"}
    lines = found["TLS-05"].evidence
    assert lines[0] == (
        "without forward secrecy, 1 suite(s): TLS_RSA_WITH_AES_128_GCM_SHA256 (TLSv1.2)"
    )
    assert lines[1] == (
        "not AEAD (CBC or stream), 1 suite(s): TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256 (TLSv1.2)"
    )
    assert len(lines) == 2  # some suites have forward secrecy and AEAD


def test_a_suite_is_named_once_with_its_versions() -> None:
    cbc = suite("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", P256)
    rc4 = suite("TLS_RSA_WITH_RC4_128_SHA")
    found = by_id(
        run(
            scan(
                tls_1_0_cipher_suites=suites(TlsVersionEnum.TLS_1_0, cbc, rc4),
                tls_1_2_cipher_suites=suites(TlsVersionEnum.TLS_1_2, *GOOD_TLS12, cbc, rc4),
            )
        )
    )
    assert found["TLS-04"].evidence == (
        "1 suite(s): TLS_RSA_WITH_RC4_128_SHA (RC4; TLSv1.0, TLSv1.2)",
    )
    assert found["TLS-05"].evidence == (
        "without forward secrecy, 1 suite(s): TLS_RSA_WITH_RC4_128_SHA (TLSv1.0, TLSv1.2)",
        "not AEAD (CBC or stream), 2 suite(s): TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA (TLSv1.0, "
        "TLSv1.2), TLS_RSA_WITH_RC4_128_SHA (TLSv1.0, TLSv1.2)",
    )


def test_nothing_with_forward_secrecy_is_said() -> None:
    only_rsa = scan(
        tls_1_2_cipher_suites=suites(TlsVersionEnum.TLS_1_2, suite("TLS_RSA_WITH_AES_128_CBC_SHA")),
        tls_1_3_cipher_suites=suites(TlsVersionEnum.TLS_1_3),
    )
    evidence = by_id(run(only_rsa))["TLS-05"].evidence
    assert "no accepted suite has forward secrecy" in evidence
    assert "no accepted suite is AEAD" in evidence


def test_evidence_lists_ten_and_counts_the_rest() -> None:
    accepted = [suite(f"TLS_RSA_WITH_AES_{i:03d}_CBC_SHA") for i in range(12)]
    found = by_id(run(scan(tls_1_0_cipher_suites=suites(TlsVersionEnum.TLS_1_0, *accepted))))
    line = found["TLS-02"].evidence[0]
    assert line.startswith("TLSv1.0 accepted with 12 suite(s): TLS_RSA_WITH_AES_000_CBC_SHA, ")
    assert line.endswith("TLS_RSA_WITH_AES_009_CBC_SHA (+2 more)")


def test_imap_mandatory_suite_is_imap_only() -> None:
    accepted = suites(TlsVersionEnum.TLS_1_2, *GOOD_TLS12[1:])  # without ..._AES_128_GCM_SHA256
    imap = by_id(run(scan(tls_1_2_cipher_suites=accepted)))
    assert set(imap) == {"TLS-06"}
    assert imap["TLS-06"].severity is Severity.INFO
    assert "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" in text(imap["TLS-06"])
    pop3 = dataclasses.replace(TARGET, protocol=Protocol.POP3, port=995)
    assert run(scan(tls_1_2_cipher_suites=accepted), target=pop3).findings == ()


def test_weak_key_exchange() -> None:
    accepted = (*GOOD_TLS12, suite("TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", dh(1024)))
    curves = done(
        SupportedEllipticCurvesScanResult(
            True, [EllipticCurve("X25519", 1034), EllipticCurve("secp224r1", 713)], []
        )
    )
    found = by_id(
        run(
            scan(
                tls_1_2_cipher_suites=suites(TlsVersionEnum.TLS_1_2, *accepted),
                elliptic_curves=curves,
            )
        )
    )
    assert set(found) == {"TLS-08"}
    evidence = text(found["TLS-08"])
    assert "DH 1024 bits with TLSv1.2 TLS_DHE_RSA_WITH_AES_128_GCM_SHA256" in evidence
    assert "curves below 256 bits accepted: secp224r1" in evidence
    assert "X25519" not in evidence  # 253-bit X25519 is the 128-bit class, fine


def test_strong_dh_is_fine() -> None:
    accepted = (*GOOD_TLS12, suite("TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", dh(2048)))
    assert run(scan(tls_1_2_cipher_suites=suites(TlsVersionEnum.TLS_1_2, *accepted))).findings == ()


# -- compression, renegotiation, vulnerabilities, TLS-11 ------------------------------------


_WEAK_ROBOT = done(RobotScanResult(RobotScanResultEnum.VULNERABLE_WEAK_ORACLE))


@pytest.mark.parametrize(
    ("overrides", "check_id", "severity", "lines"),
    [
        pytest.param(
            {"session_renegotiation": done(SessionRenegotiationScanResult(True, True, 10))},
            "TLS-09",
            Severity.MEDIUM,
            ("client-initiated renegotiation is accepted (10 in a row)",),
            id="client-renegotiation-alone-is-medium",
        ),
        pytest.param(
            {
                "tls_compression": done(CompressionScanResult(supports_compression=True)),
                "session_renegotiation": done(SessionRenegotiationScanResult(False, True, 10)),
            },
            "TLS-09",
            Severity.HIGH,
            ("TLS compression", "secure renegotiation", "client-initiated renegotiation"),
            id="compression-and-insecure-renegotiation-are-high",
        ),
        pytest.param(
            {"robot": _WEAK_ROBOT},
            "TLS-10",
            Severity.HIGH,
            ("ROBOT: weak Bleichenbacher oracle",),
            id="weak-robot-is-high",
        ),
        pytest.param(
            {
                "robot": _WEAK_ROBOT,
                "heartbleed": done(HeartbleedScanResult(is_vulnerable_to_heartbleed=True)),
            },
            "TLS-10",
            Severity.CRITICAL,
            ("Heartbleed", "ROBOT: weak"),
            id="heartbleed-makes-it-critical",
        ),
        pytest.param(
            {
                "openssl_ccs_injection": done(
                    OpenSslCcsInjectionScanResult(is_vulnerable_to_ccs_injection=True)
                )
            },
            "TLS-10",
            Severity.CRITICAL,
            ("CCS injection",),
            id="ccs-injection-is-critical",
        ),
        pytest.param(
            {"robot": done(RobotScanResult(RobotScanResultEnum.VULNERABLE_STRONG_ORACLE))},
            "TLS-10",
            Severity.CRITICAL,
            ("ROBOT: strong Bleichenbacher oracle",),
            id="strong-robot-is-critical",
        ),
        pytest.param(
            {
                "tls_fallback_scsv": done(FallbackScsvScanResult(supports_fallback_scsv=False)),
                "tls_extended_master_secret": done(
                    EmsExtensionScanResult(supports_ems_extension=False)
                ),
            },
            "TLS-11",
            Severity.LOW,
            ("TLS_FALLBACK_SCSV", "Extended Master Secret"),
            id="no-fallback-scsv-no-ems",
        ),
    ],
)
def test_handshake_problems(
    overrides: dict[str, Any], check_id: str, severity: Severity, lines: tuple[str, ...]
) -> None:
    """Compression, renegotiation, vulnerabilities and TLS-11: one finding at the
    worst severity, one evidence line per problem (`lines`: words of each)."""
    found = by_id(run(scan(**overrides)))
    assert set(found) == {check_id}
    assert found[check_id].severity is severity
    evidence = found[check_id].evidence
    assert len(evidence) == len(lines), evidence
    for line, words in zip(evidence, lines, strict=True):
        assert words in line


def test_inconclusive_robot_is_not_tested_not_a_pass() -> None:
    found = by_id(
        run(scan(robot=done(RobotScanResult(RobotScanResultEnum.UNKNOWN_INCONSISTENT_RESULTS))))
    )
    assert set(found) == {"TLS-10"}
    assert found["TLS-10"].status is Status.NOT_TESTED
    assert "inconsistent" in text(found["TLS-10"])


# -- errors --------------------------------------------------------------------------------


def test_errored_command_makes_its_ids_not_tested_but_keeps_proven_problems() -> None:
    result = run(
        scan(
            tls_1_2_cipher_suites=failed("reset by peer"),
            tls_1_0_cipher_suites=suites(TlsVersionEnum.TLS_1_0, suite("TLS_RSA_WITH_RC4_128_SHA")),
        )
    )
    found = by_id(result)
    # Fed by TLS 1.2 only, or by nothing that proved a problem: not tested.
    for check_id in ("TLS-03", "TLS-06", "TLS-07", "TLS-08"):
        assert found[check_id].status is Status.NOT_TESTED, check_id
        assert "tls_1_2_cipher_suites failed: CONNECTIVITY_ISSUE" in text(found[check_id])
        assert "reset by peer" in text(found[check_id])
    # Proven by the TLS 1.0 scan: still failures.
    assert found["TLS-02"].status is Status.FAIL
    assert found["TLS-04"].status is Status.FAIL
    assert found["TLS-05"].status is Status.FAIL
    assert "TLSv1.2" not in result.tls_versions


def test_certificate_info_error_makes_every_cert_check_not_tested() -> None:
    result = run(scan(certificate_info=failed()))
    assert {f.id for f in result.findings} == {f"CERT-0{i}" for i in range(1, 9)}
    assert all(f.status is Status.NOT_TESTED for f in result.findings)
    assert result.certificate == {}
    assert result.policy["certificates"] == []


def test_unreachable_is_all_not_tested() -> None:
    result = unreachable(TARGET, "no TLS connection")
    assert {f.id for f in result.findings} == ALL_IDS
    assert {f.status for f in result.findings} == {Status.NOT_TESTED}
    assert result.findings[0].evidence == ("not tested: no TLS connection",)
    assert (result.tls_versions, result.certificate, result.policy) == ((), {}, {})


# -- certificates --------------------------------------------------------------------------


def test_unknown_ca() -> None:
    leaf = make_leaf(issuer=(OTHER_ROOT, _RSA))
    result = run(scan((leaf,)))
    found = by_id(result)
    assert set(found) == {"CERT-01"}
    assert found["CERT-01"].severity is Severity.HIGH
    assert "leaf issuer CN=Unknown Root" in text(found["CERT-01"])
    assert "CN=Unknown Root is not among the trust anchors, --ca-file (1 certificates)" in text(
        found["CERT-01"]
    )
    assert result.certificate["trusted"] is False


def test_self_signed_says_so_and_is_info_on_port_25() -> None:
    # (A caIssuers pointer does not make a lone self-signed certificate "incomplete".)
    leaf = make_leaf(self_signed=True, key=_EC, ca_issuers=True)
    found = by_id(run(scan((leaf,))))
    assert set(found) == {"CERT-01"}
    assert "the leaf is self-signed" in found["CERT-01"].evidence
    mx = dataclasses.replace(TARGET, protocol=Protocol.SMTP, port=25)
    on_mx = by_id(run(scan((leaf,)), target=mx))
    assert on_mx["CERT-01"].severity is Severity.INFO
    assert "port 25" in text(on_mx["CERT-01"])


def test_public_and_private_anchors() -> None:
    leaf = make_leaf()
    public = TrustAnchors(public=(ROOT,))
    assert "CERT-01" not in failures(run(scan((leaf,)), anchors=public))
    nothing = TrustAnchors(public=(OTHER_ROOT,))
    assert "CERT-01" in failures(run(scan((leaf,)), anchors=nothing))


def test_known_issuer_but_no_valid_path_says_why() -> None:
    # The leaf names the test root as its issuer but was signed by another key.
    forged = make_leaf(issuer=(ROOT, _RSA))
    found = by_id(run(scan((forged,))))
    assert set(found) == {"CERT-01"}
    assert "not valid against --ca-file (1 certificates): validation failed" in text(
        found["CERT-01"]
    )


def test_intermediate_chain_validates() -> None:
    leaf = make_leaf(issuer=(INTERMEDIATE, _RSA))
    assert run(scan((leaf, INTERMEDIATE))).findings == ()


def test_name_mismatch_and_cn_only() -> None:
    wrong = by_id(run(scan((make_leaf(names=("other.example.test",)),))))
    assert set(wrong) == {"CERT-02"}
    assert wrong["CERT-02"].severity is Severity.HIGH
    assert "DNS:other.example.test" in text(wrong["CERT-02"])

    cn_only = run(scan((make_leaf(names=(), cn=NAME),)))
    found = by_id(cn_only)
    assert set(found) == {"CERT-02"}
    assert found["CERT-02"].severity is Severity.LOW
    assert "matches only the subject CN" in text(found["CERT-02"])
    assert cn_only.certificate["name_match"] == "matched_by_cn_only"


def test_address_target_without_name_is_checked_against_the_address() -> None:
    target = dataclasses.replace(TARGET, server_name=None)
    found = by_id(run(target=target))
    assert set(found) == {"CERT-02"}
    assert "'192.0.2.10'" in text(found["CERT-02"])
    assert "--server-name" in text(found["CERT-02"])


def test_partial_wildcard_is_refused() -> None:
    found = by_id(run(scan((make_leaf(names=("m*l.example.test",)),))))
    assert found["CERT-02"].severity is Severity.HIGH
    assert "m*l.example.test" in text(found["CERT-02"])
    assert "whole left-most label" in text(found["CERT-02"])


@pytest.mark.parametrize(
    ("not_before", "days", "severity", "words"),
    [
        (NOW - dt.timedelta(days=100), 90, Severity.CRITICAL, "expired on 2026-05-22"),
        (NOW + dt.timedelta(days=2), 90, Severity.HIGH, "not valid before 2026-06-03"),
        (NOW - dt.timedelta(days=80), 90, Severity.MEDIUM, "in 10 day(s)"),
    ],
)
def test_validity(not_before: dt.datetime, days: int, severity: Severity, words: str) -> None:
    result = run(scan((make_leaf(not_before=not_before, days=days),)))
    found = by_id(result)
    # The chain is judged inside the leaf's own validity period: no CERT-01 as well.
    assert set(found) == {"CERT-03"}
    assert found["CERT-03"].severity is severity
    assert words in text(found["CERT-03"])
    assert result.certificate["trusted"] is True


def test_31_days_left_is_fine() -> None:
    leaf = make_leaf(not_before=NOW - dt.timedelta(days=59), days=90)
    result = run(scan((leaf,)))
    assert result.findings == ()
    assert result.certificate["days_left"] == 31


def test_chain_out_of_order() -> None:
    leaf = make_leaf(issuer=(INTERMEDIATE, _RSA))
    found = by_id(run(scan((leaf, ROOT, INTERMEDIATE))))
    assert set(found) == {"CERT-04"}
    assert "out of order: certificate 2 (CN=Test Root)" in text(found["CERT-04"])


def test_chain_probably_incomplete() -> None:
    leaf = make_leaf(issuer=(INTERMEDIATE, _RSA), ca_issuers=True)
    found = by_id(run(scan((leaf,))))
    assert set(found) == {"CERT-01", "CERT-04"}
    assert "probably incomplete" in text(found["CERT-04"])
    assert _CA_ISSUERS_URL in text(found["CERT-04"])
    # The same chain complete: nothing.
    assert run(scan((leaf, INTERMEDIATE))).findings == ()


_SHA256_RSA = bytes.fromhex("2a864886f70d01010b")  # sha256WithRSAEncryption
_SHA1_RSA = bytes.fromhex("2a864886f70d010105")  # sha1WithRSAEncryption, same length


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + body


def sha1_signed(cert: x509.Certificate, issuer_key: rsa.RSAPrivateKey) -> x509.Certificate:
    """`cert` (signed with RSA and SHA-256) signed again with SHA-1, which cryptography's
    builder no longer does: the TBS gets the SHA-1 OID and a real PKCS#1 v1.5 signature."""
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(_SHA256_RSA) == 1
    tbs = tbs.replace(_SHA256_RSA, _SHA1_RSA)
    signature = issuer_key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 (on purpose)
    algorithm = _der(0x30, _der(0x06, _SHA1_RSA) + b"\x05\x00")
    return x509.load_der_x509_certificate(
        _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))
    )


def test_sha1_signatures_on_leaf_and_intermediate_but_not_the_root() -> None:
    root = sha1_signed(make_ca("SHA1 Root", _RSA), _RSA)
    intermediate = sha1_signed(
        make_ca("SHA1 Intermediate", _RSA_SMALL, issuer=(root.subject, _RSA)), _RSA
    )
    leaf = sha1_signed(make_leaf(issuer=(intermediate, _RSA_SMALL)), _RSA_SMALL)
    assert isinstance(root.signature_hash_algorithm, hashes.SHA1)
    anchors = TrustAnchors(public=(), private=(root,))
    found = by_id(run(scan((leaf, intermediate, root)), anchors=anchors))
    assert found["CERT-05"].severity is Severity.HIGH
    assert found["CERT-05"].evidence == (
        "leaf signed with SHA1",
        "CA CN=SHA1 Intermediate signed with SHA1",
    )
    clean_leaf = make_leaf(issuer=(intermediate, _RSA_SMALL))
    found = by_id(run(scan((clean_leaf, intermediate, root)), anchors=anchors))
    assert found["CERT-05"].evidence == ("CA CN=SHA1 Intermediate signed with SHA1",)
    # The 1024-bit intermediate key is CERT-06's (the root's own key is not judged).
    assert found["CERT-06"].evidence == ("CA CN=SHA1 Intermediate: RSA 1024 bits",)


@pytest.mark.parametrize(
    ("key", "expected"),
    [(_RSA_SMALL, "leaf: RSA 1024 bits"), (_EC_SMALL, "leaf: EC 192 bits")],
)
def test_small_keys(key: Key, expected: str) -> None:
    result = run(scan((make_leaf(key=key),)))
    found = by_id(result)
    assert set(found) == {"CERT-06"}
    assert found["CERT-06"].evidence == (expected,)


def test_ec_256_key_is_fine() -> None:
    result = run(scan((make_leaf(key=_EC),)))
    assert result.findings == ()
    assert result.certificate["key"] == "EC 256"


def test_long_lifetime_only_outside_a_private_ca() -> None:
    leaf = make_leaf(days=500)
    private = by_id(run(scan((leaf,))))
    assert "CERT-07" not in private
    public = by_id(run(scan((leaf,)), anchors=TrustAnchors(public=(ROOT,))))
    assert public["CERT-07"].severity is Severity.LOW
    assert "valid for 500 days" in text(public["CERT-07"])
    untrusted = by_id(run(scan((leaf,)), anchors=TrustAnchors(public=(OTHER_ROOT,))))
    assert "CERT-07" in untrusted


def test_revocation_information() -> None:
    none = by_id(run(scan((make_leaf(ocsp=False),))))
    assert set(none) == {"CERT-08"}
    assert none["CERT-08"].severity is Severity.INFO
    assert run(scan((make_leaf(ocsp=False, crl=True),))).findings == ()
    stapled = scan(
        certificate_info=done(
            CertificateInfoScanResult(NAME, [deployment((make_leaf(ocsp=False),), True)], None)
        )
    )
    assert run(stapled).findings == ()


def test_two_certificates_are_merged_per_id() -> None:
    rsa_leaf = make_leaf()
    ec_leaf = make_leaf(key=_EC, names=("other.example.test",), ocsp=False)
    result = run(scan((rsa_leaf,), (ec_leaf,)))
    found = by_id(result)
    assert set(found) == {"CERT-02", "CERT-08"}
    assert all(line.startswith("certificate 2 (EC 256): ") for line in found["CERT-02"].evidence)
    assert result.certificate["sha256"] == rsa_leaf.fingerprint(hashes.SHA256()).hex()
    assert len(result.policy["certificates"]) == 2


# -- TLS-07, the cipher order -------------------------------------------------------------

STRONG, WEAK = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_128_CBC_SHA"


def test_server_order_strong_first_is_fine() -> None:
    assert run(order=OrderProbe(STRONG, WEAK, STRONG, STRONG)).findings == ()


def test_client_order_with_weak_suites_is_noted() -> None:
    found = by_id(run(order=OrderProbe(STRONG, WEAK, STRONG, WEAK)))
    assert set(found) == {"TLS-07"}
    assert found["TLS-07"].severity is Severity.INFO
    assert "client's first choice" in text(found["TLS-07"])


def test_server_order_preferring_the_weak_suite_is_noted() -> None:
    found = by_id(run(order=OrderProbe(STRONG, WEAK, WEAK, WEAK)))
    assert "prefers the weaker suite" in text(found["TLS-07"])


def test_failed_order_probe_is_not_tested() -> None:
    found = by_id(run(order="cipher order probe failed: timeout"))
    assert found["TLS-07"].status is Status.NOT_TESTED
    assert "timeout" in text(found["TLS-07"])


def test_order_probe_pair_picks_the_worst_suite_a_client_can_offer_with_a_strong_one() -> None:
    accepted = [
        suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", P256),
        suite("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", P256),
        suite("TLS_RSA_WITH_AES_128_GCM_SHA256"),
        suite("TLS_RSA_WITH_RC4_128_SHA"),
    ]
    pair = order_probe_pair(accepted, lambda name: False)
    assert pair is not None
    assert (pair[0].name, pair[1].name) == (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_RSA_WITH_RC4_128_SHA",
    )
    # RC4 needs the legacy client, the strong suite the modern one: next weakest.
    pair = order_probe_pair(accepted, lambda name: "RC4" in name)
    assert pair is not None
    assert pair[1].name == "TLS_RSA_WITH_AES_128_GCM_SHA256"
    assert order_probe_pair(list(GOOD_TLS12), lambda name: False) is None
    assert order_probe_pair([suite(WEAK)], lambda name: False) is None


# -- twins ---------------------------------------------------------------------------------


def test_twins_with_the_same_policy() -> None:
    same = scan()
    a, b = run(same), run(same)
    assert twin_findings("h:143", a, "h:993", b) == []


def test_twins_that_differ() -> None:
    a = run()
    b = run(
        scan(
            (make_leaf(key=_EC),),
            tls_1_0_cipher_suites=suites(
                TlsVersionEnum.TLS_1_0, suite("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", P256)
            ),
            tls_1_3_cipher_suites=suites(TlsVersionEnum.TLS_1_3, GOOD_TLS13[0]),
        )
    )
    [f] = twin_findings("h:143", a, "h:993", b)
    assert (f.id, f.severity, f.status) == ("CERT-09", Severity.LOW, Status.FAIL)
    lines = f.evidence
    assert lines[0] == "TLS versions: h:143 TLSv1.2, TLSv1.3; h:993 TLSv1.0, TLSv1.2, TLSv1.3"
    assert "TLSv1.0 suites only on h:993: TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA" in lines
    assert "TLSv1.3 suites only on h:143: TLS_AES_256_GCM_SHA384" in lines
    assert lines[-1].startswith("certificate: h:143 sha256 ")
    assert a.policy["certificates"][0] in lines[-1]


def test_twin_not_audited() -> None:
    [f] = twin_findings("h:143", run(), "h:993", unreachable(TARGET, "down"))
    assert f.status is Status.NOT_TESTED
    assert "h:993" in text(f)


# -- the shell, without a network --------------------------------------------------------


def test_waves_scan_one_port_per_address_at_a_time() -> None:
    def t(address: str, port: int) -> TlsTarget:
        return TlsTarget(f"{address}|{port}", address, port, Protocol.IMAP, TlsMode.IMPLICIT, None)

    targets = [t("a", 1), t("a", 2), t("b", 1), t("a", 3)]
    waves = tlsaudit._waves(targets)
    assert [[x.key for x in wave] for wave in waves] == [["a|1", "b|1"], ["a|2"], ["a|3"]]


def test_starttls_the_engine_cannot_speak_is_not_tested() -> None:
    sieve = TlsTarget("s", "192.0.2.1", 4190, Protocol.SIEVE, TlsMode.CLEARTEXT, None)
    results = audit_tls([sieve], ca_file=None, timeout=1, concurrency=1, per_host=1)
    assert set(results) == {"s"}
    assert {f.id for f in results["s"].findings} == ALL_IDS
    assert "STARTTLS for sieve is not supported" in text(results["s"].findings[0])
    assert audit_tls([], ca_file=None, timeout=1, concurrency=1, per_host=1) == {}


def test_bad_ca_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        load_ca_file(empty)
    with pytest.raises(ValueError, match=r"missing\.pem"):
        load_ca_file(tmp_path / "missing.pem")


def _server_result(target: TlsTarget, attempts: AllScanCommandsAttempts | None) -> Any:
    location = ServerNetworkLocation(NAME, target.port, ip_address=target.address)
    if attempts is None:
        try:
            raise ConnectionToServerTimedOut(
                location, ServerNetworkConfiguration(NAME), "Connection to the server timed out"
            )
        except ConnectionToServerTimedOut as exc:
            trace = traceback.TracebackException.from_exception(exc)
    return ServerScanResult(
        uuid=uuid.uuid4(),
        server_location=location,
        network_configuration=ServerNetworkConfiguration(NAME),
        connectivity_status=(
            ServerConnectivityStatusEnum.ERROR
            if attempts is None
            else ServerConnectivityStatusEnum.COMPLETED
        ),
        connectivity_error_trace=trace if attempts is None else None,
        connectivity_result=None,  # no order probe: it would need a real server
        scan_status=(
            ServerScanStatusEnum.ERROR_NO_CONNECTIVITY
            if attempts is None
            else ServerScanStatusEnum.COMPLETED
        ),
        scan_result=attempts,
    )


def test_unreachable_once_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    # audit_tls judges with the real clock: a leaf valid now.
    leaf = make_leaf(not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))

    def fake_scan(targets: Sequence[TlsTarget], **_: Any) -> dict[str, Any]:
        calls.append([t.key for t in targets])
        first = len(calls) == 1
        return {t.key: _server_result(t, None if first else scan((leaf,))) for t in targets}

    monkeypatch.setattr(tlsaudit, "_scan", fake_scan)
    results = audit_tls([TARGET], ca_file=None, timeout=1, concurrency=1, per_host=1)
    assert calls == [["k"], ["k"]]
    # Judged on the second scan: the Mozilla store does not hold the test root.
    assert {f.id for f in results["k"].findings} == {"CERT-01"}
    assert results["k"].tls_versions == ("TLSv1.2", "TLSv1.3")


def test_unreachable_twice_is_all_not_tested(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_scan(targets: Sequence[TlsTarget], **_: Any) -> dict[str, Any]:
        calls.append([t.key for t in targets])
        return {t.key: _server_result(t, None) for t in targets}

    monkeypatch.setattr(tlsaudit, "_scan", fake_scan)
    results = audit_tls([TARGET], ca_file=None, timeout=1, concurrency=1, per_host=1)
    assert len(calls) == 2
    findings = results["k"].findings
    assert {f.id for f in findings} == ALL_IDS
    assert {f.status for f in findings} == {Status.NOT_TESTED}
    assert "no TLS connection (tried twice)" in text(findings[0])
    assert "timed out" in text(findings[0])


def test_a_name_idna_cannot_encode_is_not_tested() -> None:
    bad = dataclasses.replace(TARGET, server_name="a" * 64 + ".example.test")
    results = audit_tls([bad], ca_file=None, timeout=1, concurrency=1, per_host=1)
    assert {f.status for f in results["k"].findings} == {Status.NOT_TESTED}
    assert "cannot scan" in text(results["k"].findings[0])


def test_a_scan_command_that_errored_is_run_again_on_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 9: a reset in the middle of one sslyze command (a loaded machine) must not
    turn TLS-10 into "not tested" on one scan and not on the next: the command runs
    once more, alone, and its second answer is the one judged."""
    calls: list[tuple[list[str], Any]] = []
    leaf = make_leaf(not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))

    def fake_scan(targets: Sequence[TlsTarget], **kwargs: Any) -> dict[str, Any]:
        calls.append(([t.key for t in targets], kwargs.get("commands")))
        attempts = scan((leaf,), heartbleed=failed()) if len(calls) == 1 else scan((leaf,))
        return {t.key: _server_result(t, attempts) for t in targets}

    monkeypatch.setattr(tlsaudit, "_scan", fake_scan)
    results = audit_tls([TARGET], ca_file=None, timeout=1, concurrency=1, per_host=1)
    assert calls == [(["k"], None), (["k"], {"k": {ScanCommand.HEARTBLEED}})]
    assert {f.id for f in results["k"].findings} == {"CERT-01"}  # no TLS-10 not tested


def test_a_scan_command_that_errors_twice_is_not_tested(monkeypatch: pytest.MonkeyPatch) -> None:
    leaf = make_leaf(not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))

    def fake_scan(targets: Sequence[TlsTarget], **kwargs: Any) -> dict[str, Any]:
        return {t.key: _server_result(t, scan((leaf,), robot=failed())) for t in targets}

    monkeypatch.setattr(tlsaudit, "_scan", fake_scan)
    results = audit_tls([TARGET], ca_file=None, timeout=1, concurrency=1, per_host=1)
    untested = {f.id for f in results["k"].findings if f.status is Status.NOT_TESTED}
    assert untested == {"TLS-10"}
