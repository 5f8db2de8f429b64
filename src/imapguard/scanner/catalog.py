"""The check catalog: one registry of every finding the scanner can report.

IDs, default severities and standards come from SCANNER-CHECKS.md (a contract:
an ID never changes meaning). Each check is registered here once, with its title,
the exact standard section and the concrete fix; the checks themselves only name
the ID and give the evidence (`finding`). SARIF rules, the README catalog and the
HTML report are all rendered from this table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from imapguard.scanner.model import Finding, Severity, Status

__all__ = ["CATALOG", "Check", "finding", "not_tested"]


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    id: str
    severity: Severity
    title: str
    standard: str
    fix: str
    help_uri: str = ""

    @property
    def family(self) -> str:
        return self.id.split("-", 1)[0]


_C, _H, _M, _L, _I = (
    Severity.CRITICAL,
    Severity.HIGH,
    Severity.MEDIUM,
    Severity.LOW,
    Severity.INFO,
)

_CHECKS: tuple[Check, ...] = (
    Check(
        "EXP-01",
        _H,
        "IMAP cleartext port does not make TLS mandatory before login",
        "RFC 8314 §3, RFC 9051 §11.2",
        "",
    ),
    Check(
        "EXP-02",
        _H,
        "POP3 cleartext port does not make TLS mandatory before login",
        "RFC 8314 §3, RFC 2595 §4",
        "",
    ),
    Check(
        "EXP-03",
        _M,
        "Submission port does not require TLS before AUTH/MAIL",
        "RFC 8314 §3.3, RFC 6409",
        "",
    ),
    Check("EXP-04", _M, "Port 25 open on a host that is not a mail exchanger", "RFC 3207 §4", ""),
    Check("EXP-05", _M, "Cleartext service without its implicit-TLS twin", "RFC 8314 §3", ""),
    Check("EXP-06", _I, "Other mail-adjacent service found", "RFC 5804", ""),
    Check(
        "EXP-07",
        _C,
        "Cleartext mail service with no STARTTLS at all",
        "RFC 9051 §6.1.1, RFC 2595 §4, RFC 3207 §4",
        "",
    ),
    Check(
        "ST-01",
        _H,
        "STARTTLS/STLS not advertised on the cleartext port",
        "RFC 9051 §6.1.1, RFC 2595 §4, RFC 3207 §4",
        "",
    ),
    Check(
        "ST-02",
        _H,
        "STARTTLS advertised but the command or the handshake fails",
        "RFC 9051 §6.2.1, RFC 2595 §4, RFC 3207 §4",
        "",
    ),
    Check("ST-03", _L, "STARTTLS accepted although not advertised", "RFC 9051 §6.2.1", ""),
    Check("ST-04", _L, "STARTTLS still advertised after TLS is established", "RFC 9051 §6.2.1", ""),
    Check("ST-05", _L, "A second STARTTLS inside TLS is accepted", "RFC 3207 §4.2", ""),
    Check(
        "ST-06",
        _L,
        "STARTTLS on an implicit-TLS port is not answered with a tagged BAD",
        "RFC 9051 §6.2.1",
        "",
    ),
    Check(
        "ST-07",
        _C,
        "STARTTLS command injection",
        "RFC 9051 §6.2.1, RFC 3207 §4.2, CVE-2011-0411",
        "",
    ),
    Check("ST-08", _M, "SMTP state not reset after STARTTLS", "RFC 3207 §4.2", ""),
    Check("ST-09", _H, "PREAUTH greeting on a cleartext connection", "RFC 9051 §7.1.4", ""),
    Check("ST-10", _I, "Capabilities before and after TLS", "RFC 9051 §6.2.1", ""),
    Check("ST-11", _I, "Server throttled the scan: affected checks not tested", "—", ""),
    Check(
        "AUTH-01",
        _H,
        "IMAP cleartext CAPABILITY lacks LOGINDISABLED",
        "RFC 9051 §6.2.3, §7.2.2",
        "",
    ),
    Check("AUTH-02", _H, "Plaintext SASL mechanisms advertised before TLS", "RFC 9051 §6.2.2", ""),
    Check("AUTH-03", _H, "POP3 USER or plaintext SASL offered before STLS", "RFC 2595 §4", ""),
    Check("AUTH-04", _H, "SMTP AUTH advertised before STARTTLS", "RFC 4954 §4, RFC 8314 §3.3", ""),
    Check(
        "AUTH-05",
        _C,
        "A dummy credential sent before TLS is evaluated instead of refused",
        "RFC 9051 §6.2.3, §7.1; RFC 4954 §6",
        "",
    ),
    Check("AUTH-06", _H, "Anonymous access or an open relay", "RFC 9051 §6.2", ""),
    Check("AUTH-07", _L, "NTLM challenge discloses internal names", "—", ""),
    Check("AUTH-08", _L, "SMTP VRFY/EXPN user enumeration", "RFC 5321 §3.5", ""),
    Check("AUTH-09", _I, "Only legacy SASL mechanisms after TLS", "RFC 9051 §6.2.2", ""),
    Check("BAN-01", _L, "Greeting discloses product and version", "—", ""),
    Check(
        "BAN-02",
        _L,
        "POP3 IMPLEMENTATION or IMAP ID discloses product and version",
        "RFC 2449 §6.9, RFC 2971 §3.3",
        "",
    ),
    Check("BAN-03", _I, "SMTP EHLO/HELP reveals internal host names", "—", ""),
    Check("TLS-01", _C, "SSLv2 or SSLv3 accepted", "RFC 8314 §4.1, BOD 18-01", ""),
    Check("TLS-02", _H, "TLS 1.0 or 1.1 accepted", "RFC 8996 §2-3, RFC 8997", ""),
    Check("TLS-03", _M, "TLS 1.2 or TLS 1.3 not offered", "RFC 9051 §11.1", ""),
    Check(
        "TLS-04",
        _C,
        "NULL, EXPORT, anonymous, RC4, DES or 3DES cipher suites",
        "RFC 7465, BOD 18-01",
        "",
    ),
    Check(
        "TLS-05",
        _M,
        "Suites without forward secrecy, or CBC (non-AEAD) suites",
        "Mozilla Server Side TLS 6.0",
        "",
    ),
    Check(
        "TLS-06", _I, "TLS 1.2 without TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "RFC 9051 §11.1", ""
    ),
    Check("TLS-07", _I, "Cipher order (server preference)", "—", ""),
    Check(
        "TLS-08",
        _H,
        "Weak key exchange: DH below 2048 bits, EC below 256 bits",
        "Mozilla Server Side TLS 6.0",
        "",
    ),
    Check(
        "TLS-09", _H, "TLS compression, insecure or client-initiated renegotiation", "RFC 5746", ""
    ),
    Check(
        "TLS-10",
        _C,
        "Heartbleed, CCS injection or ROBOT",
        "CVE-2014-0160, CVE-2014-0224, CVE-2017-13099",
        "",
    ),
    Check(
        "TLS-11", _L, "No TLS_FALLBACK_SCSV or no Extended Master Secret", "RFC 7507, RFC 7627", ""
    ),
    Check(
        "CERT-01", _H, "Certificate chain does not validate to a trusted root", "RFC 8314 §5", ""
    ),
    Check("CERT-02", _H, "Certificate name does not match", "RFC 7817 §3, RFC 6125 §6.4", ""),
    Check(
        "CERT-03",
        _C,
        "Certificate expired, not yet valid, or expiring within 30 days",
        "RFC 5280 §4.1.2.5",
        "",
    ),
    Check("CERT-04", _M, "Certificate chain incomplete or out of order", "RFC 8446 §4.4.2", ""),
    Check("CERT-05", _H, "MD5 or SHA-1 certificate signature", "RFC 9155", ""),
    Check("CERT-06", _H, "RSA key below 2048 bits or EC key below 256 bits", "—", ""),
    Check("CERT-07", _L, "Certificate lifetime above 398 days", "CA/B Forum BR §6.3.2", ""),
    Check("CERT-08", _I, "No OCSP or revocation information", "RFC 5280 §4.2.1.13, RFC 6960", ""),
    Check("CERT-09", _L, "Different certificate or TLS policy on twin ports", "—", ""),
)

CATALOG: dict[str, Check] = {c.id: c for c in _CHECKS}


def finding(
    check_id: str,
    evidence: Iterable[str],
    *,
    severity: Severity | None = None,
    standard: str | None = None,
    title: str | None = None,
) -> Finding:
    """A problem found by check `check_id`. A check that raises or lowers the
    default severity says why in its evidence."""
    check = CATALOG[check_id]
    return Finding(
        id=check.id,
        severity=severity or check.severity,
        title=title or check.title,
        evidence=tuple(evidence),
        standard=standard or check.standard,
        fix=check.fix,
    )


def not_tested(check_id: str, reason: str) -> Finding:
    """A check that could not run: never a pass, never a fail."""
    check = CATALOG[check_id]
    return Finding(
        id=check.id,
        severity=Severity.INFO,
        title=check.title,
        evidence=(f"not tested: {reason}",),
        standard=check.standard,
        fix="",
        status=Status.NOT_TESTED,
    )
