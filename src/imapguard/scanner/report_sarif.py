"""The scan report as SARIF 2.1.0.

`sarif` is one run whose `rules` are the whole catalog, so dashboards show
every check even when it found nothing. GitHub code scanning refuses a result
without a physical location and refuses URI schemes other than the
checkout's (an `imap://` URI fails with "SARIF URI scheme did not match the
checkout URI scheme"), so each result points at the relative URI
``PROTOCOL/HOST/PORT`` (e.g. ``imap/mail.example.org/993``) and carries the
real ``imap://host:port`` as a logical location. Not-tested checks are tool
execution notifications, not results: SARIF results are things found, and
code scanning would otherwise open alerts for them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import urllib.parse
from typing import Any

from imapguard.scanner.catalog import CATALOG
from imapguard.scanner.model import (
    ScanReport,
    Service,
    Severity,
)
from imapguard.scanner.report_view import (
    failed_findings,
    mode_text,
    not_tested_reason,
    scanner_version,
    untested_findings,
    with_grades,
)

__all__ = ["SARIF_SCHEMA", "SECURITY_SEVERITY", "sarif_log"]

SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)

#: GitHub code scanning reads `security-severity` (CVSS-like, as a string) and
#: maps 9.0+ to critical, 7.0-8.9 high, 4.0-6.9 medium, 0.1-3.9 low, 0.0 none.
SECURITY_SEVERITY: dict[Severity, str] = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}

_LEVEL: dict[Severity, str] = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}

_FAMILY_TAG = {
    "EXP": "exposure",
    "ST": "starttls",
    "AUTH": "authentication",
    "BAN": "disclosure",
    "TLS": "tls",
    "CERT": "certificate",
}


def _information_uri() -> str:
    """The project's home page from the package metadata (``[project.urls]``),
    or "" while it has none."""
    try:
        urls: list[str] = importlib.metadata.metadata("imapguard").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        return ""
    for entry in urls:
        label, _, url = str(entry).partition(",")
        if label.strip().lower() in ("homepage", "home", "source", "repository"):
            return url.strip()
    return ""


def _rule_name(title: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in title).split()
    return "".join(w[:1].upper() + w[1:] for w in words)


def _sarif_rules() -> list[dict[str, Any]]:
    rules = []
    for check in CATALOG.values():
        standard = "" if check.standard == "—" else check.standard
        rule: dict[str, Any] = {
            "id": check.id,
            "name": _rule_name(check.title),
            "shortDescription": {"text": check.title},
            "fullDescription": {
                "text": f"{check.title}."
                + (f" Standard: {standard}." if standard else "")
                + f" Default severity: {check.severity.value}."
            },
            "help": {
                "text": check.fix + (f"\n\nStandard: {standard}" if standard else ""),
                "markdown": f"```\n{check.fix}\n```"
                + (f"\n\nStandard: {standard}" if standard else ""),
            },
            "defaultConfiguration": {"level": _LEVEL[check.severity]},
            "properties": {
                "tags": ["security", "mail", _FAMILY_TAG.get(check.family, check.family.lower())],
                "security-severity": SECURITY_SEVERITY[check.severity],
            },
        }
        if check.help_uri:
            rule["helpUri"] = check.help_uri
        rules.append(rule)
    return rules


def _sarif_location(service: Service) -> dict[str, Any]:
    # A relative URI: GitHub refuses other schemes than the checkout's
    # ("file"), and the first segment must not hold a colon (IPv6).
    host = urllib.parse.quote(service.host, safe=":.-_")
    uri = f"{service.protocol.value}/{host}/{service.port}"
    authority = f"[{service.host}]" if ":" in service.host else service.host
    return {
        "physicalLocation": {
            "artifactLocation": {"uri": uri},
            "region": {"startLine": 1},
        },
        "logicalLocations": [
            {
                "name": service.name,
                "fullyQualifiedName": f"{service.protocol.value}://{authority}:{service.port}",
                "kind": "resource",
            }
        ],
    }


def _fingerprint(service: Service, check_id: str) -> str:
    # Stable across scans as long as the name the user gave and the port stay.
    key = f"{service.host.lower()}|{service.port}|{check_id}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def sarif_log(report: ScanReport) -> dict[str, Any]:
    """The SARIF 2.1.0 log of `report` (graded or not) as a JSON-ready dict."""
    report = with_grades(report)
    rule_index = {check_id: i for i, check_id in enumerate(CATALOG)}
    results: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    for service in report.services:
        location = _sarif_location(service)
        for finding in failed_findings(service):
            text = (
                f"{service.name} ({service.protocol.value}, {mode_text(service)}): {finding.title}"
            )
            if finding.evidence:
                text += "\n" + "\n".join(finding.evidence)
            result: dict[str, Any] = {
                "ruleId": finding.id,
                "level": _LEVEL[finding.severity],
                "message": {"text": text},
                "locations": [location],
                "partialFingerprints": {"imapguardFinding/v1": _fingerprint(service, finding.id)},
                "properties": {
                    "severity": finding.severity.value,
                    "service": service.name,
                    "address": service.address,
                    "grade": service.grade,
                    "evidence": list(finding.evidence),
                    "standard": finding.standard,
                },
            }
            if finding.id in rule_index:
                result["ruleIndex"] = rule_index[finding.id]
            results.append(result)
        for finding in untested_findings(service):
            notification: dict[str, Any] = {
                "level": "note",
                "message": {
                    "text": f"{service.name}: {finding.id} not tested: {not_tested_reason(finding)}"
                },
                "locations": [location],
                "associatedRule": {"id": finding.id},
            }
            if finding.id in rule_index:
                notification["associatedRule"]["index"] = rule_index[finding.id]
            notifications.append(notification)

    driver: dict[str, Any] = {"name": "imapguard", "rules": _sarif_rules()}
    version = scanner_version(report)
    if version:
        driver["version"] = version
        driver["semanticVersion"] = version
    if uri := _information_uri():
        driver["informationUri"] = uri
    invocation: dict[str, Any] = {
        "executionSuccessful": True,
        "toolExecutionNotifications": notifications,
    }
    if report.started:
        invocation["startTimeUtc"] = report.started
    if report.finished:
        invocation["endTimeUtc"] = report.finished
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": driver},
                "invocations": [invocation],
                "results": results,
                "properties": {
                    "targets": list(report.targets),
                    "portsClosed": report.closed,
                    "summary": report.summary().to_json(),
                    "services": [
                        {"name": s.name, "protocol": s.protocol.value, "grade": s.grade}
                        for s in report.services
                    ],
                },
            }
        ],
    }
