"""The scan report as a terminal table (rich), and the progress bar of a scan.

A banner or any other text a server sent is shown with its control and bidi
characters escaped: it must not move the cursor, recolour the terminal or
reorder text.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

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

from imapguard.scanner.model import (
    Protocol,
    ScanReport,
    Service,
    Severity,
    TlsMode,
)
from imapguard.scanner.report_view import (
    UNKNOWN_PROTOCOL,
    certificate_lines,
    escape_text,
    failed_findings,
    mode_text,
    not_tested_reason,
    scanner_version,
    severity_counts,
    software_text,
    untested_count,
    untested_findings,
)

__all__ = ["ScanProgress", "progress", "render_table"]

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


def render_table(report: ScanReport, *, color: bool, width: int | None) -> str:
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
    version = scanner_version(report)
    console.print(Text("imapguard scan" + (f" {version}" if version else ""), style="bold"))
    grid = _grid(8)
    grid.add_row("Targets:", Text(escape_text(", ".join(report.targets))))
    grid.add_row("Scanned:", Text(f"{report.started} to {report.finished}"))
    grid.add_row("Found:", Text(f"{len(report.services)} services, {report.closed} ports closed"))
    for line in report.summary().lines():
        grid.add_row("Result:", Text(escape_text(line)))
    console.print(grid)


def _table_service(
    console: Console, service: Service, fixes_shown: dict[tuple[str, str], str], *, color: bool
) -> None:
    console.print()
    heading = Text()
    heading.append(escape_text(service.name), style="bold")
    heading.append(f"  {service.protocol.value.upper()}, {mode_text(service)}   grade ")
    heading.append_text(_grade_text(service.grade, color=color))
    console.rule(heading, align="left", characters="─" if color else "-")

    about = _grid(12)
    if service.address and service.address != service.host:
        about.add_row("Address:", Text(service.address))
    if service.software:
        about.add_row("Software:", Text(escape_text(software_text(service))))
    if service.banner:
        about.add_row("Banner:", Text(escape_text(service.banner)))
    if service.tls_versions:
        about.add_row("TLS:", Text(", ".join(service.tls_versions)))
    for label, text in certificate_lines(service.certificate):
        about.add_row(f"{label}:", Text(text))
    for reason in service.grade_reasons:
        about.add_row("Grade:", Text(escape_text(reason), style="dim"))
    console.print(Padding(about, (0, 0, 0, 2)))

    failed = failed_findings(service)
    if not failed:
        console.print(Text("  No problems found.", style="green"))
    findings = _grid(8, 8)
    for finding in failed:
        body: list[RenderableType] = [Text(escape_text(finding.title), style="bold")]
        if finding.evidence:
            more = len(finding.evidence) - 1
            extra = f"  (+{more} more in the JSON report)" if more else ""
            body.append(Text(f"Seen: {escape_text(finding.evidence[0])}{extra}"))
        if finding.standard and finding.standard != "—":
            body.append(Text(f"Standard: {finding.standard}"))
        # The same ID may have another fix on another service (another software).
        if finding.fix and (finding.id, finding.fix) in fixes_shown:
            body.append(Text(f"Fix: as for {fixes_shown[finding.id, finding.fix]} above"))
        elif finding.fix:
            fixes_shown[finding.id, finding.fix] = f"{finding.id} on {service.name}"
            summary, _, rest = escape_text(finding.fix, newlines=True).partition("\n")
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

    skipped = untested_findings(service)
    if skipped or not service.complete:
        console.print(Text("  Not tested:", style="bold"))
        grid = _grid(8)
        if service.protocol is Protocol.UNKNOWN:
            grid.add_row("all", Text(UNKNOWN_PROTOCOL))
        for finding in skipped:
            grid.add_row(finding.id, Text(escape_text(not_tested_reason(finding))))
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
        counts = severity_counts(service)
        table.add_row(
            Text(escape_text(service.name)),
            service.protocol.value.upper(),
            "implicit" if service.tls_mode is TlsMode.IMPLICIT else "STARTTLS",
            _grade_text(service.grade, color=color),
            *(str(counts[severity]) for severity in Severity),
            untested_count(service),
        )
    console.print(table)
    summary = report.summary()
    if summary.worst:
        console.print(Text("Worst grade: ").append_text(_grade_text(summary.worst, color=color)))
    for line in summary.lines()[1:]:
        console.print(Text(escape_text(line)))


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
            self._bar.update(self._task, advance=n, description=escape_text(description))

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
