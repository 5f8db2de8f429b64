"""Render a `ScanReport` as a terminal table, JSON, SARIF 2.1.0 or one HTML file.

Rules every format keeps:
- everything a server sent (banners, capabilities, evidence, certificate
  fields) is untrusted: control and bidi characters are shown as escapes in
  the table and the HTML (a banner must not move the cursor, recolour the
  terminal or reorder text), and the HTML escapes all of it and forbids
  scripts and network loads with a Content-Security-Policy;
- a service without a grade is graded here (`grade.grade`), so every format
  shows the same grade;
- findings are listed worst first (severity, then catalog order); not-tested
  checks are listed apart with their reason and never counted as problems;
- the headline is `ScanReport.summary()` in every format (the table's lines under
  its header, the HTML summary box, JSON's and SARIF's ``summary``): it is computed
  from the services below it, so it can never call a report "all clear" while a
  service is graded D or F or was not fully tested.

`json` is exactly `ScanReport.to_json()`, published as report.schema.json
beside this module (docs/scan-report.md documents it field by field).

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

import contextlib
import dataclasses
import hashlib
import html
import importlib.metadata
import io
import json
import unicodedata
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from imapguard.scanner.catalog import CATALOG, standard_links
from imapguard.scanner.grade import GRADES, RULES, grade
from imapguard.scanner.model import (
    Finding,
    Protocol,
    ScanReport,
    Service,
    Severity,
    Status,
    TlsMode,
)

__all__ = ["FORMATS", "ScanProgress", "progress", "render", "sarif_log"]

FORMATS: tuple[str, ...] = ("table", "json", "sarif", "html")

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
_ORDER = {check_id: i for i, check_id in enumerate(CATALOG)}


def render(report: ScanReport, fmt: str, *, color: bool = False, width: int | None = None) -> str:
    """`report` in one of FORMATS. `color` applies to the table only (pass
    whether stdout is a terminal); `width` is the table's width in columns
    (default: 100, or the terminal's width when `color`)."""
    graded = _graded(report)
    if fmt == "table":
        return _table(graded, color=color, width=width)
    if fmt == "json":
        return json.dumps(graded.to_json(), indent=2, ensure_ascii=False) + "\n"
    if fmt == "sarif":
        return json.dumps(sarif_log(graded), indent=2, ensure_ascii=False) + "\n"
    if fmt == "html":
        return _html(graded)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


# -- shared helpers ----------------------------------------------------------------


def _graded(report: ScanReport) -> ScanReport:
    services = []
    for service in report.services:
        if not service.grade:
            letter, reasons = grade(service)
            service = dataclasses.replace(service, grade=letter, grade_reasons=reasons)
        services.append(service)
    return dataclasses.replace(report, services=services)


def _clean(text: str, *, newlines: bool = False) -> str:
    """`text` with control, format (bidi) and separator characters escaped;
    line feeds kept only with `newlines` (our own multi-line texts)."""
    out = []
    for char in text:
        if (
            char == "\t"
            or (newlines and char == "\n")
            or unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp")
        ):
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}")
    return "".join(out)


def _sorted(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.severity.rank, _ORDER.get(f.id, len(_ORDER)), f.id))


def _failed(service: Service) -> list[Finding]:
    return _sorted(f for f in service.findings if f.status is Status.FAIL)


def _not_tested(service: Service) -> list[Finding]:
    return _sorted(f for f in service.findings if f.status is Status.NOT_TESTED)


def _counts(service: Service) -> Counter[Severity]:
    return Counter(f.severity for f in service.findings if f.status is Status.FAIL)


def _mode(service: Service) -> str:
    return "implicit TLS" if service.tls_mode is TlsMode.IMPLICIT else "cleartext + STARTTLS"


_UNKNOWN_PROTOCOL = "no IMAP, POP3, SMTP or ManageSieve answered on this port: no mail check ran"


def _untested(service: Service) -> str:
    """How many checks did not run: "all" where no mail protocol answered."""
    if service.protocol is Protocol.UNKNOWN:
        return "all"
    return str(len(_not_tested(service)))


def _software(service: Service) -> str:
    """ "Dovecot (ID name "Dovecot")": which software, and how the scanner knows."""
    if service.software is None:
        return ""
    return f"{service.software.software.value} (from its {service.software.evidence})"


def _not_tested_reason(finding: Finding) -> str:
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
        out.append((label, _clean(text)))
    return out


def _certificate_lines(certificate: dict[str, Any]) -> list[tuple[str, str]]:
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


def _version(report: ScanReport) -> str:
    if report.version:
        return report.version
    try:
        return importlib.metadata.version("imapguard")
    except importlib.metadata.PackageNotFoundError:
        return ""


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


# -- table -------------------------------------------------------------------------

_SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.HIGH: "bold red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}
_GRADE_STYLE = {
    "A+": "bold green",
    "A": "bold green",
    "A-": "green",
    "B": "bold yellow",
    "C": "bold dark_orange",
    "D": "bold red",
    "F": "bold white on red",
}


def _table(report: ScanReport, *, color: bool, width: int | None) -> str:
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
        width=width or (Console().width if color else 100),
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=False,
    )
    _table_header(console, report)
    fixes_shown: dict[tuple[str, str], str] = {}  # (ID, fix) -> service that printed it
    for service in report.services:
        _table_service(console, service, fixes_shown, color=color)
    _table_summary(console, report, color=color)
    text = buffer.getvalue()
    if color:
        return text
    # rich pads grid rows to the full width; a file or a pipe wants none of it.
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def _grade_text(letter: str, *, color: bool) -> Text:
    # On a terminal the grade is a coloured block; spaces pad the background.
    return Text(f" {letter} " if color else letter, style=_GRADE_STYLE.get(letter, ""))


def _grid(*widths: int) -> Table:
    """Columns of fixed width and a last one that wraps within itself, so a
    long banner or fix line stays indented under its label."""
    grid = Table.grid(padding=(0, 1))
    for width in widths:
        grid.add_column(width=width, no_wrap=True)
    grid.add_column(ratio=1, overflow="fold")
    return grid


def _table_header(console: Console, report: ScanReport) -> None:
    version = _version(report)
    console.print(Text("imapguard scan" + (f" {version}" if version else ""), style="bold"))
    grid = _grid(8)
    grid.add_row("Targets:", Text(_clean(", ".join(report.targets))))
    grid.add_row("Scanned:", Text(f"{report.started} to {report.finished}"))
    grid.add_row("Found:", Text(f"{len(report.services)} services, {report.closed} ports closed"))
    for line in report.summary().lines():
        grid.add_row("Result:", Text(_clean(line)))
    console.print(grid)


def _table_service(
    console: Console, service: Service, fixes_shown: dict[tuple[str, str], str], *, color: bool
) -> None:
    console.print()
    heading = Text()
    heading.append(_clean(service.name), style="bold")
    heading.append(f"  {service.protocol.value.upper()}, {_mode(service)}   grade ")
    heading.append_text(_grade_text(service.grade, color=color))
    console.rule(heading, align="left", characters="─" if color else "-")

    about = _grid(12)
    if service.address and service.address != service.host:
        about.add_row("Address:", Text(service.address))
    if service.software:
        about.add_row("Software:", Text(_clean(_software(service))))
    if service.banner:
        about.add_row("Banner:", Text(_clean(service.banner)))
    if service.tls_versions:
        about.add_row("TLS:", Text(", ".join(service.tls_versions)))
    for label, text in _certificate_lines(service.certificate):
        about.add_row(f"{label}:", Text(text))
    for reason in service.grade_reasons:
        about.add_row("Grade:", Text(_clean(reason), style="dim"))
    console.print(Padding(about, (0, 0, 0, 2)))

    failed = _failed(service)
    if not failed:
        console.print(Text("  No problems found.", style="green"))
    findings = _grid(8, 8)
    for finding in failed:
        body: list[RenderableType] = [Text(_clean(finding.title), style="bold")]
        if finding.evidence:
            more = len(finding.evidence) - 1
            extra = f"  (+{more} more in the JSON report)" if more else ""
            body.append(Text(f"Seen: {_clean(finding.evidence[0])}{extra}"))
        if finding.standard and finding.standard != "—":
            body.append(Text(f"Standard: {finding.standard}"))
        # The same ID may have another fix on another service (another software).
        if finding.fix and (finding.id, finding.fix) in fixes_shown:
            body.append(Text(f"Fix: as for {fixes_shown[finding.id, finding.fix]} above"))
        elif finding.fix:
            fixes_shown[finding.id, finding.fix] = f"{finding.id} on {service.name}"
            summary, _, rest = _clean(finding.fix, newlines=True).partition("\n")
            body.append(Text(f"Fix: {summary}"))
            if rest:
                body.append(Padding(Text(rest, style="dim" if color else ""), (0, 0, 0, 2)))
        findings.add_row(
            Text(finding.severity.value.upper(), style=_SEVERITY_STYLE[finding.severity]),
            Text(finding.id, style="bold"),
            Group(*body),
        )
    if failed:
        console.print(Padding(findings, (0, 0, 0, 2)))

    skipped = _not_tested(service)
    if skipped or not service.complete:
        console.print(Text("  Not tested:", style="bold"))
        grid = _grid(8)
        if service.protocol is Protocol.UNKNOWN:
            grid.add_row("all", Text(_UNKNOWN_PROTOCOL))
        for finding in skipped:
            grid.add_row(finding.id, Text(_clean(_not_tested_reason(finding))))
        console.print(Padding(grid, (0, 0, 0, 4)))


def _table_summary(console: Console, report: ScanReport, *, color: bool) -> None:
    console.print()
    table = Table(
        title="Summary",
        title_justify="left",
        box=box.SIMPLE_HEAVY if color else box.ASCII,
        show_edge=not color,
    )
    longest = max((len(s.name) for s in report.services), default=7)
    table.add_column("Service", no_wrap=True, min_width=min(longest, 40))
    table.add_column("Protocol")
    table.add_column("TLS")
    table.add_column("Grade", justify="center")
    for label in ("crit", "high", "med", "low", "info", "untested"):
        table.add_column(label, justify="right")
    for service in report.services:
        counts = _counts(service)
        table.add_row(
            Text(_clean(service.name)),
            service.protocol.value.upper(),
            "implicit" if service.tls_mode is TlsMode.IMPLICIT else "STARTTLS",
            _grade_text(service.grade, color=color),
            *(str(counts[severity]) for severity in Severity),
            _untested(service),
        )
    console.print(table)
    summary = report.summary()
    if summary.worst:
        console.print(Text("Worst grade: ").append_text(_grade_text(summary.worst, color=color)))
    for line in summary.lines()[1:]:
        console.print(Text(_clean(line)))


# -- progress ------------------------------------------------------------------------


class ScanProgress:
    """What the orchestrator calls as work completes; does nothing when the
    progress bar is off (on a pipe)."""

    def __init__(self, bar: Progress | None = None, task: TaskID | None = None) -> None:
        self._bar = bar
        self._task = task

    def advance(self, n: int = 1, description: str | None = None) -> None:
        if self._bar is None or self._task is None:
            return
        if description is None:
            self._bar.advance(self._task, n)
        else:
            self._bar.update(self._task, advance=n, description=_clean(description))

    def set_total(self, total: int) -> None:
        """Change the amount of work (discovery often finds more than planned)."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=total)


@contextlib.contextmanager
def progress(
    total: int, enabled: bool, *, console: Console | None = None
) -> Iterator[ScanProgress]:
    """A progress bar on stderr for `total` steps while the block runs, gone
    when it ends. Pass ``enabled=sys.stderr.isatty()``: nothing on a pipe."""
    if not enabled:
        yield ScanProgress()
        return
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=True,
    )
    with bar:
        yield ScanProgress(bar, bar.add_task("scanning", total=total))


# -- SARIF ---------------------------------------------------------------------------


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
    report = _graded(report)
    rule_index = {check_id: i for i, check_id in enumerate(CATALOG)}
    results: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    for service in report.services:
        location = _sarif_location(service)
        for finding in _failed(service):
            text = f"{service.name} ({service.protocol.value}, {_mode(service)}): {finding.title}"
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
        for finding in _not_tested(service):
            notification: dict[str, Any] = {
                "level": "note",
                "message": {
                    "text": f"{service.name}: {finding.id} not tested:"
                    f" {_not_tested_reason(finding)}"
                },
                "locations": [location],
                "associatedRule": {"id": finding.id},
            }
            if finding.id in rule_index:
                notification["associatedRule"]["index"] = rule_index[finding.id]
            notifications.append(notification)

    driver: dict[str, Any] = {"name": "imapguard", "rules": _sarif_rules()}
    version = _version(report)
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


# -- HTML ----------------------------------------------------------------------------

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; --card: #fff; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 0; word-break: break-all; }
h3 { font-size: 15px; margin: 20px 0 8px; }
a { color: #0969da; }
.meta { color: var(--muted); margin: 0; }
.summary { display: grid; grid-template-columns: auto 1fr; gap: 24px; align-items: center;
  background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 20px; margin: 20px 0; }
.summary p { margin: 4px 0; }
.counts { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 8px; }
.grade { display: inline-block; min-width: 2.4em; padding: 2px 8px; border-radius: 6px;
  color: #fff; font-weight: 700; text-align: center; }
.grade.big { font-size: 44px; min-width: 2.2em; padding: 8px 16px; border-radius: 12px; }
.g-Aplus, .g-A { background: #1a7f37; } .g-Aminus { background: #4c8c2b; }
.g-B { background: #9a6700; } .g-C { background: #bc4c00; }
.g-D { background: #cf222e; } .g-F { background: #82071e; }
.sev { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px;
  font-weight: 700; text-transform: uppercase; color: #fff; }
.sev-critical { background: #82071e; } .sev-high { background: #cf222e; }
.sev-medium { background: #9a6700; } .sev-low { background: #0969da; }
.sev-info { background: #59636e; }
table { border-collapse: collapse; width: 100%; background: var(--card); }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); }
th { background: var(--bg); font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 20px; margin: 24px 0; }
.card header { display: flex; gap: 16px; align-items: center; justify-content: space-between; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 12px 0; }
dt { color: var(--muted); } dd { margin: 0; overflow-wrap: anywhere; }
.reasons { margin: 8px 0; padding-left: 20px; color: var(--muted); }
.finding { border-left: 4px solid var(--line); padding: 4px 0 4px 14px; margin: 16px 0; }
.finding.critical { border-color: #82071e; } .finding.high { border-color: #cf222e; }
.finding.medium { border-color: #9a6700; } .finding.low { border-color: #0969da; }
.finding h4 { margin: 0 0 6px; font-size: 15px; }
.finding .id { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  margin: 0 6px; }
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px;
  margin: 6px 0; overflow-x: auto; white-space: pre-wrap; overflow-wrap: anywhere;
  font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre.fix { background: #f0f7ff; border-color: #b6d6fb; }
.label { color: var(--muted); font-size: 13px; margin: 8px 0 0; }
.todo { margin: 2px 0 4px; font-weight: 600; }
.ok { color: #1a7f37; }
footer { color: var(--muted); font-size: 13px; margin: 32px 0; }
@media print {
  body { background: #fff; font-size: 11pt; }
  main { max-width: none; padding: 0; }
  .card, .summary { border-color: #999; break-inside: auto; }
  .finding, tr, pre { break-inside: avoid; }
  h2, h3, h4 { break-after: avoid; }
  a { color: inherit; text-decoration: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""

# No script, no network: even a banner that escaped escaping could do nothing.
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none';"
    " form-action 'none'"
)


def _h(text: str, *, newlines: bool = False) -> str:
    return html.escape(_clean(text, newlines=newlines), quote=True)


def _grade_class(letter: str) -> str:
    return "g-" + letter.replace("+", "plus").replace("-", "minus")


def _badge(letter: str, *, big: bool = False) -> str:
    size = " big" if big else ""
    return (
        f'<span class="grade{size} {_grade_class(letter)}" title="Grade {_h(letter)}">'
        f"{_h(letter)}</span>"
    )


def _standard_html(standard: str) -> str:
    links = standard_links(standard)
    if not links:
        return _h(standard)
    return ", ".join(f'<a href="{_h(url)}">{_h(text)}</a>' for text, url in links)


def _html(report: ScanReport) -> str:
    services = report.services
    version = _version(report)
    summary = report.summary()
    worst = summary.worst
    totals: Counter[Severity] = Counter()
    for service in services:
        totals.update(_counts(service))
    targets = ", ".join(report.targets)
    title = f"imapguard scan report: {targets}" if targets else "imapguard scan report"

    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{_h(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        "<header>",
        "<h1>Mail server security scan</h1>",
        f'<p class="meta">Targets: {_h(targets) or "none"}</p>',
        f'<p class="meta">Scanned {_h(report.started)} to {_h(report.finished)}'
        f"{' with imapguard ' + _h(version) if version else ''}</p>",
        "</header>",
    ]

    # The overall summary, for a reader who stops here.
    out.append('<section class="summary" aria-label="Summary">')
    out.append(f"<div>{_badge(worst, big=True) if worst else ''}</div>")
    out.append("<div>")
    lines = summary.lines()
    if not services:
        out.append(f"<p><strong>{_h(lines[0])}</strong></p>")
    else:
        # The first sentence starts "Worst grade X": that part in bold.
        head, _, rest = lines[0].partition(" across ")
        out.append(f"<p><strong>{_h(head)}</strong> across {_h(rest)}</p>")
        out.extend(f'<p class="{_line_class(line)}">{_h(line)}</p>' for line in lines[1:])
        out.append('<div class="counts">')
        for severity in Severity:
            out.append(
                f'<span class="sev sev-{severity.value}">{totals[severity]} {severity.value}</span>'
            )
        out.append("</div>")
    out.append("</div>")
    out.append("</section>")

    if services:
        out.append('<section aria-label="Services">')
        out.append("<table>")
        out.append(
            "<thead><tr><th>Service</th><th>Protocol</th><th>TLS</th><th>Grade</th>"
            + "".join(f'<th class="n">{s.value}</th>' for s in Severity)
            + '<th class="n">not tested</th></tr></thead>'
        )
        out.append("<tbody>")
        for i, service in enumerate(services):
            counts = _counts(service)
            out.append(
                f'<tr><td><a href="#service-{i}">{_h(service.name)}</a></td>'
                f"<td>{_h(service.protocol.value.upper())}</td><td>{_h(_mode(service))}</td>"
                f"<td>{_badge(service.grade)}</td>"
                + "".join(f'<td class="n">{counts[s]}</td>' for s in Severity)
                + f'<td class="n">{_untested(service)}</td></tr>'
            )
        out.append("</tbody></table>")
        out.append("</section>")

    for i, service in enumerate(services):
        out.extend(_html_service(i, service))

    out.append("<footer>")
    out.append("<details><summary>How grades are computed</summary>")
    out.append(
        "<p>Each service starts at A+; every rule that applies caps the grade, and the"
        " lowest cap wins. Scale, best first: " + ", ".join(GRADES) + ".</p>"
    )
    out.append("<table><thead><tr><th>Caps at</th><th>When</th><th>Why</th></tr></thead><tbody>")
    for rule in RULES:
        out.append(
            f"<tr><td>{_badge(rule.cap)}</td><td>{_h(rule.when)}</td><td>{_h(rule.why)}</td></tr>"
        )
    out.append("</tbody></table></details>")
    out.append(
        f"<p>Generated by imapguard{' ' + _h(version) if version else ''}. Banners,"
        " capabilities and evidence quote what the scanned servers sent.</p>"
    )
    out.append("</footer>")
    out.extend(["</main>", "</body>", "</html>", ""])
    return "\n".join(out)


def _line_class(line: str) -> str:
    """A class per kind of headline sentence (tests and stylesheets find them)."""
    if "urgent attention" in line:
        return "urgent"
    if "not fully tested" in line:
        return "incomplete"
    return "all-clear"


def _html_service(index: int, service: Service) -> list[str]:
    out = [
        f'<section class="card" id="service-{index}" aria-label="{_h(service.name)}">',
        "<header>",
        "<div>",
        f"<h2>{_h(service.name)}</h2>",
        f'<p class="meta">{_h(service.protocol.value.upper())}, {_h(_mode(service))}'
        + (
            f", address {_h(service.address)}"
            if service.address and service.address != service.host
            else ""
        )
        + "</p>",
        "</div>",
        _badge(service.grade, big=True),
        "</header>",
    ]
    if service.grade_reasons:
        out.append('<p class="label">Why this grade</p>')
        out.append('<ul class="reasons">')
        out.extend(f"<li>{_h(reason)}</li>" for reason in service.grade_reasons)
        out.append("</ul>")

    details: list[tuple[str, str]] = []
    if service.software:
        details.append(("Software", _h(_software(service))))
    if service.banner:
        details.append(("Banner", f"<pre>{_h(service.banner)}</pre>"))
    if service.tls_versions:
        details.append(("TLS versions", _h(", ".join(service.tls_versions))))
    details.extend((label, _h(text)) for label, text in _certificate_lines(service.certificate))
    if service.capabilities_before_tls:
        details.append(
            ("Before TLS", f"<pre>{_h(' '.join(service.capabilities_before_tls))}</pre>")
        )
    if service.capabilities_after_tls:
        details.append(("After TLS", f"<pre>{_h(' '.join(service.capabilities_after_tls))}</pre>"))
    if details:
        out.append("<dl>")
        out.extend(f"<dt>{_h(label)}</dt><dd>{value}</dd>" for label, value in details)
        out.append("</dl>")

    failed = _failed(service)
    out.append("<h3>Findings</h3>")
    if not failed:
        out.append('<p class="ok">No problems found.</p>')
    for finding in failed:
        severity = finding.severity.value
        out.append(f'<article class="finding {severity}" data-check="{_h(finding.id)}">')
        out.append(
            f'<h4><span class="sev sev-{severity}">{severity}</span>'
            f'<span class="id">{_h(finding.id)}</span>{_h(finding.title)}</h4>'
        )
        if finding.evidence:
            out.append('<p class="label">What the scanner saw</p>')
            out.append(f"<pre>{chr(10).join(_h(line) for line in finding.evidence)}</pre>")
        if finding.fix:
            summary, _, blocks = finding.fix.partition("\n")
            out.append(f'<p class="label">How to fix</p><p class="todo">{_h(summary)}</p>')
            if blocks:
                out.append(f'<pre class="fix">{_h(blocks, newlines=True)}</pre>')
        if finding.standard and finding.standard != "—":
            out.append(f'<p class="label">Standard: {_standard_html(finding.standard)}</p>')
        out.append("</article>")

    skipped = _not_tested(service)
    if skipped or not service.complete:
        out.append("<h3>Not tested</h3>")
        out.append("<ul>")
        if service.protocol is Protocol.UNKNOWN:
            out.append(f"<li>{_h(_UNKNOWN_PROTOCOL)}</li>")
        out.extend(
            f'<li><span class="id">{_h(f.id)}</span> {_h(f.title)}: '
            f"{_h(_not_tested_reason(f))}</li>"
            for f in skipped
        )
        out.append("</ul>")
    out.append("</section>")
    return out
