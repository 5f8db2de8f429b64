"""Render a `ScanReport` as a terminal table, JSON, SARIF 2.1.0 or one HTML file.

Rules every format keeps:
- everything a server sent (banners, capabilities, evidence, certificate
  fields) is untrusted: control and bidi characters are shown as escapes in
  the table and the HTML (a banner must not move the cursor, recolour the
  terminal or reorder text), and the HTML escapes all of it and forbids
  scripts and network loads with a Content-Security-Policy;
- a service without a grade is graded first (`grade.grade`, through
  `report_view.with_grades`), so every format shows the same grade;
- findings are listed worst first (severity, then catalog order); not-tested
  checks are listed apart with their reason and never counted as problems;
- the headline is `ScanReport.summary()` in every format (the table's lines under
  its header, the HTML summary box, JSON's and SARIF's ``summary``): it is computed
  from the services below it, so it can never call a report "all clear" while a
  service is graded D or F or was not fully tested.

`json` is exactly `ScanReport.to_json()`, published as report.schema.json
beside this module (docs/scan-report.md documents it field by field).
SARIF 2.1.0 is `report_sarif`'s (one run whose rules are the whole catalog), the
table `report_table`'s, the HTML `report_html`'s; what they share is
`report_view`'s.
"""

from __future__ import annotations

import json

from imapguard.scanner.model import ScanReport
from imapguard.scanner.report_html import render_html
from imapguard.scanner.report_sarif import sarif_log
from imapguard.scanner.report_table import ScanProgress, progress, render_table
from imapguard.scanner.report_view import with_grades

__all__ = ["FORMATS", "ScanProgress", "progress", "render", "sarif_log"]

FORMATS: tuple[str, ...] = ("table", "json", "sarif", "html")


def render(report: ScanReport, fmt: str, *, color: bool = False, width: int | None = None) -> str:
    """`report` in one of FORMATS. `color` applies to the table only (pass
    whether stdout is a terminal); `width` is the table's width in columns
    (default: 100, or the terminal's width when `color`)."""
    graded = with_grades(report)
    if fmt == "table":
        return render_table(graded, color=color, width=width)
    if fmt == "json":
        return json.dumps(graded.to_json(), indent=2, ensure_ascii=False) + "\n"
    if fmt == "sarif":
        return json.dumps(sarif_log(graded), indent=2, ensure_ascii=False) + "\n"
    if fmt == "html":
        return render_html(graded)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


#: The grading every format applies (kept under its old name for callers).
_graded = with_grades
