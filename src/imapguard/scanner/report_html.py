"""The scan report as one self-contained HTML file.

Everything a server sent is HTML-escaped, and a Content-Security-Policy forbids
scripts and network loads: the file is safe to open whatever the servers said.
"""

from __future__ import annotations

import html
from collections import Counter

from imapguard.scanner.catalog import standard_links
from imapguard.scanner.grade import GRADES, RULES
from imapguard.scanner.model import (
    Protocol,
    ScanReport,
    Service,
    Severity,
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

__all__ = ["render_html"]

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

_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none';"
    " form-action 'none'"
)


def _h(text: str, *, newlines: bool = False) -> str:
    return html.escape(escape_text(text, newlines=newlines), quote=True)


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


def render_html(report: ScanReport) -> str:
    services = report.services
    version = scanner_version(report)
    summary = report.summary()
    worst = summary.worst
    totals: Counter[Severity] = Counter()
    for service in services:
        totals.update(severity_counts(service))
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
            counts = severity_counts(service)
            out.append(
                f'<tr><td><a href="#service-{i}">{_h(service.name)}</a></td>'
                f"<td>{_h(service.protocol.value.upper())}</td><td>{_h(mode_text(service))}</td>"
                f"<td>{_badge(service.grade)}</td>"
                + "".join(f'<td class="n">{counts[s]}</td>' for s in Severity)
                + f'<td class="n">{untested_count(service)}</td></tr>'
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
        f'<p class="meta">{_h(service.protocol.value.upper())}, {_h(mode_text(service))}'
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
        details.append(("Software", _h(software_text(service))))
    if service.banner:
        details.append(("Banner", f"<pre>{_h(service.banner)}</pre>"))
    if service.tls_versions:
        details.append(("TLS versions", _h(", ".join(service.tls_versions))))
    details.extend((label, _h(text)) for label, text in certificate_lines(service.certificate))
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

    failed = failed_findings(service)
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

    skipped = untested_findings(service)
    if skipped or not service.complete:
        out.append("<h3>Not tested</h3>")
        out.append("<ul>")
        if service.protocol is Protocol.UNKNOWN:
            out.append(f"<li>{_h(UNKNOWN_PROTOCOL)}</li>")
        out.extend(
            f'<li><span class="id">{_h(f.id)}</span> {_h(f.title)}: {_h(not_tested_reason(f))}</li>'
            for f in skipped
        )
        out.append("</ul>")
    out.append("</section>")
    return out
