"""What every format of the scan report shows the same way: the grades (a service
without one is graded here, so every format shows the same), findings worst
first (severity, then catalog order), not-tested checks apart with their reason,
and everything a server sent with its control, format (bidi) and separator
characters escaped (`escape_text`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections import Counter
from collections.abc import Iterable
from typing import Any

from imapguard.scanner.catalog import CATALOG
from imapguard.scanner.grade import grade
from imapguard.scanner.model import (
    Finding,
    Protocol,
    ScanReport,
    Service,
    Severity,
    Status,
    TlsMode,
)
from imapguard.text import escape

__all__ = [
    "UNKNOWN_PROTOCOL",
    "certificate_lines",
    "escape_text",
    "failed_findings",
    "mode_text",
    "not_tested_reason",
    "scanner_version",
    "severity_counts",
    "software_text",
    "untested_count",
    "untested_findings",
    "with_grades",
    "worst_first",
]

_ORDER = {check_id: i for i, check_id in enumerate(CATALOG)}


def with_grades(report: ScanReport) -> ScanReport:
    services = []
    for service in report.services:
        if not service.grade:
            letter, reasons = grade(service)
            service = dataclasses.replace(service, grade=letter, grade_reasons=reasons)
        services.append(service)
    return dataclasses.replace(report, services=services)


def escape_text(text: str, *, newlines: bool = False) -> str:
    """`text` as `imapguard.text.escape` shows it, tabs kept, line feeds kept only
    with `newlines` (our own multi-line texts)."""
    return escape(text, keep="\t\n" if newlines else "\t")


def worst_first(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.severity.rank, _ORDER.get(f.id, len(_ORDER)), f.id))


def failed_findings(service: Service) -> list[Finding]:
    return worst_first(f for f in service.findings if f.status is Status.FAIL)


def untested_findings(service: Service) -> list[Finding]:
    return worst_first(f for f in service.findings if f.status is Status.NOT_TESTED)


def severity_counts(service: Service) -> Counter[Severity]:
    return Counter(f.severity for f in service.findings if f.status is Status.FAIL)


def mode_text(service: Service) -> str:
    return "implicit TLS" if service.tls_mode is TlsMode.IMPLICIT else "cleartext + STARTTLS"


UNKNOWN_PROTOCOL = "no IMAP, POP3, SMTP or ManageSieve answered on this port: no mail check ran"


def untested_count(service: Service) -> str:
    """How many checks did not run: "all" where no mail protocol answered."""
    if service.protocol is Protocol.UNKNOWN:
        return "all"
    return str(len(untested_findings(service)))


def software_text(service: Service) -> str:
    """ "Dovecot (ID name "Dovecot")": which software, and how the scanner knows."""
    if service.software is None:
        return ""
    return f"{service.software.software.value} (from its {service.software.evidence})"


def not_tested_reason(finding: Finding) -> str:
    reason = finding.evidence[0] if finding.evidence else ""
    return reason.removeprefix("not tested: ")


def _certificate_summary(certificate: dict[str, Any]) -> list[tuple[str, str]]:
    """The certificate fields a reader cares about, in a fixed order, as
    (label, text); other fields stay in the JSON."""
    labels = (
        ("subject", "Subject"),
        ("san", "Names"),
        ("issuer", "Issuer"),
        ("not_after", "Valid until"),
        ("days_left", "Days left"),
        ("key", "Key"),
        ("signature", "Signature"),
    )
    out = []
    for key, label in labels:
        value = certificate.get(key)
        if value is None or value == "" or value == []:
            continue
        text = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
        out.append((label, escape_text(text)))
    return out


def certificate_lines(certificate: dict[str, Any]) -> list[tuple[str, str]]:
    """The certificate in at most three lines, for the terminal."""
    fields = dict(_certificate_summary(certificate))
    lines = []
    if "Subject" in fields or "Names" in fields:
        text = fields.get("Subject", "")
        if "Names" in fields:
            text += f" ({fields['Names']})" if text else fields["Names"]
        if "Issuer" in fields:
            text += f", issued by {fields['Issuer']}"
        lines.append(("Certificate", text))
    days = certificate.get("days_left")
    if "Valid until" in fields or isinstance(days, int | float):
        text = fields.get("Valid until", "")
        if isinstance(days, int | float):
            left = f"expired {-days} days ago" if days < 0 else f"{days} days left"
            text = f"{text} ({left})" if text else left
        lines.append(("Expires", text))
    if "Key" in fields or "Signature" in fields:
        key = ", signed ".join(v for v in (fields.get("Key"), fields.get("Signature")) if v)
        lines.append(("Key", key))
    return lines


def scanner_version(report: ScanReport) -> str:
    if report.version:
        return report.version
    try:
        return importlib.metadata.version("imapguard")
    except importlib.metadata.PackageNotFoundError:
        return ""
