"""The scanner's data: what was found, on which service, and how it grades.

Every check produces `Finding`s (frozen, JSON-ready): a catalog ID from
`imapguard.scanner.catalog`, a severity, evidence (what was sent and seen, never a
secret) and, for a check that could not run, status ``not_tested`` with the
reason. A `Service` is one reachable port that spoke a mail protocol (or TLS);
the `ScanReport` is what every output format renders.

Rules kept here so every part of the scanner agrees on them:
- a finding is a problem (or an info note); a passed check leaves no finding;
- a check that could not run leaves a ``not_tested`` finding, never a pass or
  a fail, and never lowers or raises the grade;
- a service is complete only when every check ran: no ``not_tested`` finding, and
  a protocol the checks know (nothing is checked on an unknown one);
- evidence lines are short and quoted as seen on the wire (CRLF stripped);
- the headline of every format is `ScanReport.summary()`, computed from the
  services: it names every service graded D or F and every one not fully tested,
  and says "all clear" only when there are none of either.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

__all__ = [
    "GRADES",
    "SCHEMA_VERSION",
    "Finding",
    "Identified",
    "Protocol",
    "ScanReport",
    "Service",
    "Severity",
    "Software",
    "Status",
    "Summary",
    "TlsMode",
]

#: Version of the JSON report (scanner/report.schema.json, docs/scan-report.md); bumped on any
#: incompatible change, minor on additions.
SCHEMA_VERSION = "1.1"

#: The grade scale, best first (grade.py has the rules).
GRADES: tuple[str, ...] = ("A+", "A", "A-", "B", "C", "D", "F")
#: Grades that need someone's attention now.
_URGENT = ("D", "F")


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for critical ... 4 for info (sorts the worst first)."""
        return list(Severity).index(self)


class Status(enum.StrEnum):
    FAIL = "fail"  # the problem is present
    NOT_TESTED = "not_tested"  # the check could not run (timeout, throttled, refused)


class Protocol(enum.StrEnum):
    IMAP = "imap"
    POP3 = "pop3"
    SMTP = "smtp"
    SIEVE = "sieve"
    UNKNOWN = "unknown"  # answered, but with nothing we recognise


class TlsMode(enum.StrEnum):
    IMPLICIT = "implicit"  # TLS from the first byte (993, 995, 465)
    CLEARTEXT = "cleartext"  # a cleartext greeting; STARTTLS may or may not exist


class Software(enum.StrEnum):
    """Server software that `scanner.software.identify` can tell apart; the catalog's
    fix texts have settings for most of them (fix block labels name them)."""

    IMAPGUARD = "imapguard"
    DOVECOT = "Dovecot"
    CYRUS = "Cyrus"
    COURIER = "Courier"
    EXCHANGE = "Exchange"
    POSTFIX = "Postfix"
    EXIM = "Exim"


@dataclasses.dataclass(frozen=True, slots=True)
class Identified:
    """The software behind a service and what gave it away (quoted as seen)."""

    software: Software
    evidence: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.software.value, "evidence": self.evidence}


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    id: str
    severity: Severity
    title: str
    evidence: tuple[str, ...]
    standard: str
    fix: str
    status: Status = Status.FAIL

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "severity": self.severity.value,
            "title": self.title,
            "evidence": list(self.evidence),
            "standard": self.standard,
            "fix": self.fix,
        }


@dataclasses.dataclass(slots=True)
class Service:
    """One open port that answered. `host` is the name the user gave (used for
    the certificate's name check), `address` the IP actually scanned."""

    host: str
    address: str
    port: int
    protocol: Protocol
    tls_mode: TlsMode
    banner: str = ""
    software: Identified | None = None  # None: nothing said which software this is
    capabilities_before_tls: tuple[str, ...] = ()
    capabilities_after_tls: tuple[str, ...] = ()
    tls_versions: tuple[str, ...] = ()  # accepted, e.g. ("TLSv1.2", "TLSv1.3")
    certificate: dict[str, Any] = dataclasses.field(default_factory=dict)
    findings: list[Finding] = dataclasses.field(default_factory=list)
    grade: str = ""
    grade_reasons: tuple[str, ...] = ()  # "TLS-02 caps at C", ...
    duration: float = 0.0  # seconds spent on this service

    @property
    def name(self) -> str:
        """host:port as a person reads it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def complete(self) -> bool:
        """Every check ran: a known protocol, and no not_tested finding."""
        return self.protocol is not Protocol.UNKNOWN and all(
            f.status is Status.FAIL for f in self.findings
        )

    def ids(self) -> set[str]:
        """The IDs of the problems found (not the not_tested ones)."""
        return {f.id for f in self.findings if f.status is Status.FAIL}

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "address": self.address,
            "port": self.port,
            "protocol": self.protocol.value,
            "tls_mode": self.tls_mode.value,
            "banner": self.banner,
            "software": self.software.to_json() if self.software else None,
            "capabilities_before_tls": list(self.capabilities_before_tls),
            "capabilities_after_tls": list(self.capabilities_after_tls),
            "tls_versions": list(self.tls_versions),
            "certificate": self.certificate,
            "grade": self.grade,
            "grade_reasons": list(self.grade_reasons),
            "complete": self.complete,
            "duration_seconds": round(self.duration, 3),
            "findings": [f.to_json() for f in self.findings],
        }


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    """The headline of a report, from its services (so it cannot disagree with them)."""

    services: int
    closed: int
    worst: str  # "" when no service has a grade
    urgent: tuple[str, ...]  # services graded D or F, by name
    incomplete: tuple[str, ...]  # services not fully tested, by name

    @property
    def all_clear(self) -> bool:
        """Services found, none graded D or F, and every check of every one ran."""
        return self.services > 0 and not self.urgent and not self.incomplete

    def lines(self) -> tuple[str, ...]:
        """The headline as sentences, the same in every format."""
        closed = _plural(self.closed, "port")
        if not self.services:
            return (f"No mail service answered ({closed} closed).",)
        out = [
            f"Worst grade {self.worst or '(none)'} across {_plural(self.services, 'service')}"
            f" ({closed} closed)."
        ]
        if self.urgent:
            needs = "needs" if len(self.urgent) == 1 else "need"
            out.append(
                f"{len(self.urgent)} {needs} urgent attention (grade D or F):"
                f" {', '.join(self.urgent)}."
            )
        if self.incomplete:
            one = len(self.incomplete) == 1
            covers = "its grade covers" if one else "their grades cover"
            out.append(
                f"{len(self.incomplete)} {'is' if one else 'are'} not fully tested:"
                f" {', '.join(self.incomplete)}; {covers} only what was tested."
            )
        if self.all_clear:
            out.append("No service is graded D or F, and every check ran.")
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "worst_grade": self.worst,
            "urgent": list(self.urgent),
            "incomplete": list(self.incomplete),
            "all_clear": self.all_clear,
            "headline": list(self.lines()),
        }


@dataclasses.dataclass(slots=True)
class ScanReport:
    started: str  # ISO 8601 UTC
    finished: str
    targets: tuple[str, ...]  # as the user gave them
    services: list[Service]
    closed: int = 0  # address:port pairs that did not answer
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    version: str = ""  # imapguard's version

    def summary(self) -> Summary:
        graded = [s.grade for s in self.services if s.grade in GRADES]
        return Summary(
            services=len(self.services),
            closed=self.closed,
            worst=max(graded, key=GRADES.index, default=""),
            urgent=tuple(s.name for s in self.services if s.grade in _URGENT),
            incomplete=tuple(s.name for s in self.services if not s.complete),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "imapguard", "version": self.version},
            "started": self.started,
            "finished": self.finished,
            "targets": list(self.targets),
            "options": self.options,
            "ports_closed": self.closed,
            "summary": self.summary().to_json(),
            "services": [s.to_json() for s in self.services],
        }
