"""The four output formats: table, JSON (against the published schema), SARIF
2.1.0 (against the OASIS schema) and HTML (escaping of what servers send).

`sample_report()` is also the report the Chromium test renders and the
screenshot in docs/ shows.
"""

from __future__ import annotations

import dataclasses
import html as html_module
import json
import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs; only tests use it
import pytest

from imapguard.scanner import report as report_module
from imapguard.scanner.catalog import CATALOG, finding, fix_for, not_tested
from imapguard.scanner.grade import GRADES
from imapguard.scanner.model import (
    SCHEMA_VERSION,
    Identified,
    Protocol,
    ScanReport,
    Service,
    Severity,
    Software,
    Status,
    TlsMode,
)
from imapguard.scanner.report import FORMATS, progress, render, sarif_log

ROOT = Path(__file__).resolve().parents[3]
SARIF_SCHEMA = ROOT / "tests" / "data" / "sarif-schema-2.1.0.json"

HOSTILE_BANNER = "+OK <script>alert('x')</script> \x1b[2J\u202eevil ready"


def _cert(days_left: int, name: str = "mail.example.org") -> dict[str, Any]:
    return {
        "subject": f"CN={name}",
        "san": [name],
        "issuer": "CN=R11, O=Let's Encrypt, C=US",
        "not_after": "2026-07-17T09:30:00Z" if days_left > 0 else "2026-04-22T09:30:00Z",
        "days_left": days_left,
        "key": "ECDSA P-256",
        "signature": "ecdsa-with-SHA384",
    }


def sample_report() -> ScanReport:
    """Two hosts, six services, from A+ down to F, with a hostile banner."""
    modern = ("TLSv1.2", "TLSv1.3")
    services = [
        Service(
            host="mail.example.org",
            address="192.0.2.10",
            port=993,
            protocol=Protocol.IMAP,
            tls_mode=TlsMode.IMPLICIT,
            banner="* OK [CAPABILITY IMAP4rev1 SASL-IR ID ENABLE IDLE AUTH=PLAIN] ready.",
            capabilities_after_tls=("IMAP4rev1", "SASL-IR", "ID", "IDLE", "AUTH=PLAIN"),
            tls_versions=modern,
            certificate=_cert(74),
            findings=[],
            duration=1.2,
        ),
        Service(
            host="mail.example.org",
            address="192.0.2.10",
            port=143,
            protocol=Protocol.IMAP,
            tls_mode=TlsMode.CLEARTEXT,
            banner="* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready.",
            capabilities_before_tls=("IMAP4rev1", "STARTTLS", "LOGINDISABLED"),
            capabilities_after_tls=("IMAP4rev1", "AUTH=PLAIN"),
            tls_versions=modern,
            certificate=_cert(74),
            findings=[
                finding(
                    "ST-10",
                    ["before TLS: IMAP4rev1 STARTTLS LOGINDISABLED", "after TLS: AUTH=PLAIN"],
                )
            ],
            duration=1.4,
        ),
        Service(
            host="mail.example.org",
            address="192.0.2.10",
            port=587,
            protocol=Protocol.SMTP,
            tls_mode=TlsMode.CLEARTEXT,
            banner="220 mail.example.org ESMTP Postfix (Debian/GNU)",
            capabilities_before_tls=("PIPELINING", "STARTTLS", "AUTH PLAIN LOGIN"),
            tls_versions=modern,
            certificate=_cert(74),
            findings=[
                finding(
                    "AUTH-04", ["C: EHLO scanner", "S: 250-AUTH PLAIN LOGIN (before STARTTLS)"]
                ),
                finding("BAN-01", ["S: 220 mail.example.org ESMTP Postfix (Debian/GNU)"]),
            ],
            duration=0.9,
        ),
        Service(
            host="mail.example.org",
            address="192.0.2.10",
            port=465,
            protocol=Protocol.SMTP,
            tls_mode=TlsMode.IMPLICIT,
            banner="220 mail.example.org ESMTP",
            tls_versions=modern,
            certificate=_cert(74),
            findings=[
                finding(
                    "TLS-05",
                    ["TLSv1.2 accepts ECDHE-RSA-AES128-SHA (CBC)", "TLSv1.2 accepts AES128-SHA"],
                ),
                finding("CERT-07", ["valid 2025-09-01 to 2027-09-01: 730 days"]),
            ],
            duration=2.1,
        ),
        Service(
            host="legacy.example.net",
            address="198.51.100.7",
            port=110,
            protocol=Protocol.POP3,
            tls_mode=TlsMode.CLEARTEXT,
            banner=HOSTILE_BANNER,
            capabilities_before_tls=("TOP", "USER", "STLS", "SASL PLAIN"),
            tls_versions=("TLSv1.0", "TLSv1.1", "TLSv1.2"),
            certificate=_cert(-12, name="legacy.example.net"),
            findings=[
                finding(
                    "EXP-02",
                    ["USER/PASS accepted before STLS (see AUTH-05): critical"],
                    severity=Severity.CRITICAL,
                ),
                finding("AUTH-03", ["CAPA before STLS lists USER and SASL PLAIN"]),
                finding("AUTH-05", ["C: USER imapguard-probe", "S: +OK (evaluated, not refused)"]),
                finding("EXP-05", ["110 is open, 995 is closed"]),
                finding("TLS-02", ["TLSv1.0 accepted", "TLSv1.1 accepted"]),
                finding("CERT-03", ["notAfter 2026-04-22T09:30:00Z: expired 12 days ago"]),
                not_tested("TLS-10", "the server refused connections after 20 (throttled)"),
            ],
            duration=6.5,
        ),
        Service(
            host="legacy.example.net",
            address="198.51.100.7",
            port=143,
            protocol=Protocol.IMAP,
            tls_mode=TlsMode.CLEARTEXT,
            banner="* OK IMAP4rev1 Service Ready",
            capabilities_before_tls=("IMAP4rev1", "AUTH=PLAIN"),
            findings=[
                finding("EXP-07", ["CAPABILITY has no STARTTLS", "STARTTLS answered BAD"]),
                finding("AUTH-02", ["CAPABILITY before TLS lists AUTH=PLAIN"]),
                not_tested("CERT-01", "no TLS on this port"),
            ],
            duration=0.6,
        ),
    ]
    return ScanReport(
        started="2026-05-04T09:30:00Z",
        finished="2026-05-04T09:30:12Z",
        targets=("mail.example.org", "legacy.example.net"),
        services=services,
        closed=6,
        options={"ports": [143, 993, 110, 995, 587, 465], "rate": 100.0, "timeout": 5.0},
        version="0.1.0",
    )


def incomplete_report() -> ScanReport:
    """Issue 9's report: nothing graded D or F, but one service was not fully tested
    and another spoke nothing the scanner knows. No headline may call it all clear."""
    report = sample_report()
    clean, starttls = report.services[0], report.services[1]
    throttled = dataclasses.replace(
        starttls,
        port=1143,
        findings=[
            *starttls.findings,
            not_tested("TLS-10", "the server refused connections after 20 (throttled)"),
        ],
    )
    unknown = Service(
        "mail.example.org", "192.0.2.10", 8443, Protocol.UNKNOWN, TlsMode.IMPLICIT, banner=""
    )
    return dataclasses.replace(
        report,
        targets=("mail.example.org",),
        services=[clean, starttls, throttled, unknown],
    )


def clean_report() -> ScanReport:
    """Every service fully tested, none graded D or F: the one all clear."""
    report = sample_report()
    return dataclasses.replace(report, targets=("mail.example.org",), services=report.services[:2])


def _schema() -> dict[str, Any]:
    text = resources.files("imapguard.scanner").joinpath("report.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


# -- JSON ---------------------------------------------------------------------------


def test_json_is_the_model_and_validates_against_the_published_schema() -> None:
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    data = json.loads(render(sample_report(), "json"))
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(data)
    assert data["schema_version"] == SCHEMA_VERSION
    grades = {(s["host"], s["port"]): s["grade"] for s in data["services"]}
    assert grades == {
        ("mail.example.org", 993): "A+",
        ("mail.example.org", 143): "A",
        ("mail.example.org", 587): "C",
        ("mail.example.org", 465): "B",
        ("legacy.example.net", 110): "F",
        ("legacy.example.net", 143): "F",
    }


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("schema_version",), "0.9"),
        (("services", 0, "protocol"), "http"),
        (("services", 0, "findings", 0, "severity"), "urgent"),
        (("services", 0, "findings", 0, "status"), "pass"),
        (("services", 0, "grade"), "E"),
        (("services", 0, "tls_versions", 0), "TLS 1.3"),
        (("services", 0, "port"), 70000),
        (("services", 0, "surprise"), 1),
    ],
)
def test_schema_rejects_what_the_format_never_holds(path: tuple[Any, ...], value: Any) -> None:
    report = sample_report()
    report.services.insert(0, report.services.pop(4))  # the service with findings first
    data = json.loads(render(report, "json"))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(_schema()).validate(data)


def test_schema_enums_match_the_model() -> None:
    defs = _schema()["$defs"]
    assert defs["severity"]["enum"] == [s.value for s in Severity]
    assert defs["finding"]["properties"]["status"]["enum"] == [s.value for s in Status]
    assert defs["service"]["properties"]["protocol"]["enum"] == [p.value for p in Protocol]
    assert defs["service"]["properties"]["tls_mode"]["enum"] == [m.value for m in TlsMode]
    assert defs["service"]["properties"]["grade"]["enum"] == [*GRADES, ""]
    assert _schema()["properties"]["schema_version"]["const"] == SCHEMA_VERSION


def test_schema_declares_every_key_the_model_writes() -> None:
    # The schema is closed (additionalProperties false): a key added to the
    # model without a schema entry fails here before it fails a user.
    data = sample_report().to_json()
    schema = _schema()
    assert set(data) == set(schema["properties"]) == set(schema["required"])
    service = data["services"][0]
    assert set(service) == set(schema["$defs"]["service"]["properties"])
    assert set(service["findings"][0] if service["findings"] else {}) <= set(
        schema["$defs"]["finding"]["properties"]
    )
    one = sample_report().services[4].findings[0].to_json()
    assert set(one) == set(schema["$defs"]["finding"]["properties"])


# -- SARIF --------------------------------------------------------------------------


def _sarif() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(render(sample_report(), "sarif"))
    return data


def test_sarif_validates_against_the_oasis_schema() -> None:
    schema = json.loads(SARIF_SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator_class(schema, format_checker=validator_class.FORMAT_CHECKER).validate(_sarif())


def test_sarif_has_one_rule_per_catalog_id_with_github_severities() -> None:
    run = _sarif()["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(CATALOG)
    by_id = {r["id"]: r for r in rules}
    assert by_id["AUTH-05"]["properties"]["security-severity"] == "9.5"
    assert by_id["TLS-02"]["properties"]["security-severity"] == "8.0"
    assert by_id["EXP-05"]["properties"]["security-severity"] == "5.5"
    assert by_id["BAN-01"]["properties"]["security-severity"] == "3.0"
    assert by_id["ST-10"]["properties"]["security-severity"] == "0.0"
    assert "security" in by_id["TLS-02"]["properties"]["tags"]
    assert "tls" in by_id["TLS-02"]["properties"]["tags"]
    assert by_id["EXP-01"]["help"]["text"].startswith(CATALOG["EXP-01"].fix)
    assert "RFC 8314 §3" in by_id["EXP-01"]["help"]["text"]
    assert by_id["EXP-01"]["shortDescription"]["text"] == CATALOG["EXP-01"].title
    assert by_id["EXP-01"]["helpUri"] == "https://www.rfc-editor.org/rfc/rfc8314#section-3"
    assert run["tool"]["driver"]["name"] == "imapguard"
    assert run["tool"]["driver"]["version"] == "0.1.0"


def test_sarif_results_are_the_failed_findings_with_relative_locations() -> None:
    run = _sarif()["runs"][0]
    results = run["results"]
    expected = sum(
        1 for s in sample_report().services for f in s.findings if f.status is Status.FAIL
    )
    assert len(results) == expected
    auth05 = next(r for r in results if r["ruleId"] == "AUTH-05")
    assert auth05["level"] == "error"
    assert auth05["message"]["text"].startswith("legacy.example.net:110 (pop3")
    assert "S: +OK (evaluated, not refused)" in auth05["message"]["text"]
    location = auth05["locations"][0]
    assert location["physicalLocation"]["artifactLocation"]["uri"] == "pop3/legacy.example.net/110"
    assert location["logicalLocations"][0]["fullyQualifiedName"] == "pop3://legacy.example.net:110"
    assert run["tool"]["driver"]["rules"][auth05["ruleIndex"]]["id"] == "AUTH-05"
    levels = {r["ruleId"]: r["level"] for r in results}
    assert levels["TLS-05"] == "warning"
    assert levels["BAN-01"] == "note"
    # GitHub refuses a URI scheme other than the checkout's: never "imap://".
    for result in results:
        uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert "://" not in uri
        assert ":" not in uri.split("/", 1)[0]


def test_sarif_location_of_an_ipv6_service_keeps_the_colon_out_of_the_first_segment() -> None:
    service = Service("2001:db8::25", "2001:db8::25", 143, Protocol.IMAP, TlsMode.CLEARTEXT)
    service.findings.append(finding("EXP-05", ["993 closed"]))
    log = sarif_log(ScanReport("", "", ("2001:db8::25",), [service]))
    location = log["runs"][0]["results"][0]["locations"][0]
    assert location["physicalLocation"]["artifactLocation"]["uri"] == "imap/2001:db8::25/143"
    assert location["logicalLocations"][0]["fullyQualifiedName"] == "imap://[2001:db8::25]:143"


def _fingerprints(log: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {
        (r["properties"]["service"], r["ruleId"]): r["partialFingerprints"]
        for r in log["runs"][0]["results"]
    }


def test_sarif_fingerprints_are_stable_per_service_and_id() -> None:
    first = _fingerprints(_sarif())
    changed = sample_report()
    changed.services[4].findings[0] = finding("EXP-02", ["different evidence today"])
    second = _fingerprints(sarif_log(changed))
    assert first == second
    assert len({json.dumps(v) for v in first.values()}) == len(first)


def test_sarif_reports_not_tested_checks_as_notifications_not_results() -> None:
    run = _sarif()["runs"][0]
    assert all(r["ruleId"] not in ("TLS-10", "CERT-01") for r in run["results"])
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert {(n["associatedRule"]["id"], n["level"]) for n in notes} == {
        ("TLS-10", "note"),
        ("CERT-01", "note"),
    }
    tls10 = next(n for n in notes if n["associatedRule"]["id"] == "TLS-10")
    assert "throttled" in tls10["message"]["text"]
    assert run["invocations"][0]["executionSuccessful"] is True


# -- HTML ---------------------------------------------------------------------------


class _Scan(HTMLParser):
    """Collects tags, script elements, external references and text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.scripts = 0
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "script":
            self.scripts += 1
        for name, value in attrs:
            if name in ("src", "srcset") and value:
                self.external.append(value)
            if tag == "link" and name == "href" and value:
                self.external.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_escapes_a_hostile_banner() -> None:
    page = render(sample_report(), "html")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "\x1b" not in page
    assert "\u202e" not in page
    assert "\\x1b[2J\\u202eevil ready" in page
    scan = _Scan()
    scan.feed(page)
    assert scan.scripts == 0
    assert scan.external == []


def test_html_is_self_contained_and_forbids_scripts() -> None:
    page = render(sample_report(), "html")
    assert re.search(
        r"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';", page
    )
    assert "@import" not in page
    assert "url(" not in page
    scan = _Scan()
    scan.feed(page)
    assert scan.tags.count("h1") == 1
    assert scan.tags.count("section") >= 6


def test_html_shows_grades_findings_fixes_and_standards() -> None:
    page = render(sample_report(), "html")
    assert '<span class="grade big g-F" title="Grade F">F</span>' in page
    assert "Worst grade F</strong> across 6 services (6 ports closed)" in page
    assert "2 need urgent attention (grade D or F)" in page
    assert "AUTH-05" in page
    assert "Dovecot 2.4:\n  ssl = required\n  auth_allow_cleartext = no" in page  # a fix, verbatim
    assert '<p class="todo">Refuse every authentication attempt before TLS' in page
    assert "C: USER imapguard-probe\nS: +OK (evaluated, not refused)</pre>" in page
    assert '<a href="https://www.rfc-editor.org/rfc/rfc2595#section-4">RFC 2595 §4</a>' in page
    assert "the server refused connections after 20 (throttled)" in page  # a not-tested reason
    assert page.index("AUTH-05") < page.index("AUTH-03")  # critical before high


# -- table --------------------------------------------------------------------------


def test_table_on_a_pipe_is_plain_text_with_every_section() -> None:
    text = render(sample_report(), "table", color=False)
    assert "\x1b[" not in text
    assert "legacy.example.net:110  POP3, cleartext + STARTTLS   grade F ---" in text
    assert "mail.example.org:993  IMAP, implicit TLS   grade A+ ---" in text
    assert "Expires:     2026-04-22T09:30:00Z (expired 12 days ago)" in text
    assert not any(line.endswith(" ") for line in text.splitlines())
    assert "\\x1b[2J\\u202eevil ready" in text  # the hostile banner, defused
    assert "Not tested:" in text
    assert "TLS-10   the server refused connections after 20 (throttled)" in text
    assert "Summary" in text
    assert "Worst grade: F" in text


def test_table_lists_findings_worst_first_with_evidence_and_fix() -> None:
    text = render(sample_report(), "table", color=False)
    section = text[
        text.index("legacy.example.net:110  POP3") : text.index("legacy.example.net:143  IMAP")
    ]
    rows = re.finditer(r"^  (?:CRITICAL|HIGH|MEDIUM|LOW|INFO) +([A-Z]+-\d\d) ", section, re.M)
    order = [m.group(1) for m in rows]
    assert order == ["EXP-02", "AUTH-05", "CERT-03", "AUTH-03", "TLS-02", "EXP-05"]
    assert "Seen: C: USER imapguard-probe  (+1 more in the JSON report)" in section
    assert "Fix: Refuse every authentication attempt before TLS" in section
    assert "    Dovecot 2.4:" in section


def test_table_prints_each_fix_once_and_refers_back() -> None:
    report = sample_report()
    report.services[0].findings.append(finding("CERT-07", ["lifetime 730 days"]))
    text = render(report, "table", color=False)
    assert text.count("Fix: Issue certificates for at most 397 days") == 1
    assert "Fix: as for CERT-07 on mail.example.org:993 above" in text


def test_table_on_a_terminal_is_coloured() -> None:
    text = render(sample_report(), "table", color=True, width=120)
    assert "\x1b[" in text
    assert "\\x1b[2J" in text  # the banner's escape is still shown, not executed
    assert "\x1b[2J" not in text


def test_render_refuses_an_unknown_format() -> None:
    assert FORMATS == ("table", "json", "sarif", "html")
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        render(sample_report(), "xml")


def test_render_keeps_a_grade_already_set() -> None:
    report = sample_report()
    report.services[0].grade = "B"
    report.services[0].grade_reasons = ("set by the caller caps at B",)
    data = json.loads(render(report, "json"))
    assert data["services"][0]["grade"] == "B"
    assert data["services"][0]["grade_reasons"] == ["set by the caller caps at B"]
    assert report_module.render(report, "json") == render(report, "json")


# -- progress -----------------------------------------------------------------------


def test_progress_disabled_is_a_silent_no_op(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(10, enabled=False) as bar:
        bar.advance()
        bar.advance(3, description="mail.example.org:993")
        bar.set_total(12)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_progress_enabled_counts_steps() -> None:
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    with progress(4, enabled=True, console=console) as bar:
        bar.advance()
        bar.advance(2, description="mail.example.org:143")
        assert bar._bar is not None
        task = bar._bar.tasks[0]
        assert task.completed == 3
        assert task.total == 4
        assert task.description == "mail.example.org:143"
        bar.set_total(6)
        assert bar._bar.tasks[0].total == 6


# -- the headline agrees with the body, in every format ----------------------------

ALL_CLEAR = "No service is graded D or F"
REPORTS = {"sample": sample_report, "incomplete": incomplete_report, "clean": clean_report}


def _body_truth(fmt: str, text: str) -> tuple[set[str], set[str]]:
    """(services graded D or F, services not fully tested) as the body of one rendered
    report shows them, read without the headline's help."""
    if fmt == "table":
        urgent, incomplete = set(), set()
        sections = re.split(r"^(?=\S+:\d+  [A-Z0-9]+, )", text, flags=re.M)[1:]
        for section in sections:
            name = section.split()[0]
            grade = re.search(r" grade (\S+) -", section)
            assert grade is not None
            if grade.group(1) in ("D", "F"):
                urgent.add(name)
            if "\n  Not tested:" in section:
                incomplete.add(name)
        return urgent, incomplete
    if fmt == "html":
        cards = re.findall(
            r'<section class="card"[^>]*aria-label="([^"]+)">(.*?)</section>', text, re.S
        )
        urgent = {n for n, body in cards if re.search(r'class="grade big g-[DF]"', body)}
        incomplete = {n for n, body in cards if "<h3>Not tested</h3>" in body}
        return urgent, incomplete
    data = json.loads(text)
    services = data["services"] if fmt == "json" else data["runs"][0]["properties"]["services"]
    if fmt == "sarif":
        notes = data["runs"][0]["invocations"][0]["toolExecutionNotifications"]
        named = {n["message"]["text"].split(": ", 1)[0] for n in notes}
        return {s["name"] for s in services if s["grade"] in ("D", "F")}, named
    names = {f"{s['host']}:{s['port']}": s for s in services}
    return (
        {n for n, s in names.items() if s["grade"] in ("D", "F")},
        {n for n, s in names.items() if not s["complete"]},
    )


def _headline(fmt: str, text: str) -> tuple[str, ...]:
    if fmt == "table":
        lines = re.findall(r"^Result:  (.*(?:\n {9}.*)*)", text, re.M)
        return tuple(" ".join(part.strip() for part in line.split("\n")) for line in lines)
    if fmt == "html":
        box = text[text.index('<section class="summary"') :]
        box = box[: box.index("</section>")]
        return tuple(
            html_module.unescape(re.sub(r"<[^>]+>", "", p))
            for p in re.findall(r"<p[^>]*>(.*?)</p>", box)
        )
    data = json.loads(text)
    summary = data["summary"] if fmt == "json" else data["runs"][0]["properties"]["summary"]
    return tuple(summary["headline"])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("which", list(REPORTS))
def test_the_headline_agrees_with_the_body(fmt: str, which: str) -> None:
    report = REPORTS[which]()
    text = render(report, fmt, color=False)
    urgent, incomplete = _body_truth(fmt, text)
    headline = _headline(fmt, text)
    expected = report_module._graded(report).summary()
    assert headline == expected.lines()
    assert set(expected.urgent) == urgent
    if fmt != "sarif":  # SARIF has no place for an unknown protocol's service
        assert set(expected.incomplete) == incomplete
    said_all_clear = any(ALL_CLEAR in line for line in headline)
    assert said_all_clear is (not urgent and not incomplete), headline
    for name in incomplete:
        assert any("not fully tested" in line and name in line for line in headline)
    for name in urgent:
        assert any("urgent attention" in line and name in line for line in headline)


def test_an_incomplete_report_never_says_all_clear_anywhere() -> None:
    """The issue's report: "No service is graded D or F" above incomplete services."""
    report = incomplete_report()
    for fmt in FORMATS:
        text = render(report, fmt, color=False)
        assert ALL_CLEAR not in text, fmt
        assert "are not fully tested: mail.example.org:1143, mail.example.org:8443" in text
    data = json.loads(render(report, "json"))
    assert data["summary"]["all_clear"] is False
    assert data["summary"]["incomplete"] == ["mail.example.org:1143", "mail.example.org:8443"]
    unknown = data["services"][3]
    assert unknown["complete"] is False
    assert unknown["grade_reasons"][-1].startswith("incomplete: no IMAP, POP3, SMTP")
    clean = json.loads(render(clean_report(), "json"))["summary"]
    assert clean["all_clear"] is True
    assert clean["headline"][-1] == "No service is graded D or F, and every check ran."


def test_a_fix_shown_once_per_id_and_text_not_per_id() -> None:
    """The same ID on two services running different software has two fixes: the
    second is printed, not "as for ... above"."""
    report = sample_report()
    dovecot = Identified(Software.DOVECOT, "ID name")
    imapguard = Identified(Software.IMAPGUARD, "greeting")
    a = Service("h", "192.0.2.1", 993, Protocol.IMAP, TlsMode.IMPLICIT, software=dovecot)
    b = Service("h", "192.0.2.1", 994, Protocol.IMAP, TlsMode.IMPLICIT, software=imapguard)
    a.findings = [
        dataclasses.replace(finding("TLS-06", ["x"]), fix=fix_for("TLS-06", dovecot.software))
    ]
    b.findings = [
        dataclasses.replace(finding("TLS-06", ["x"]), fix=fix_for("TLS-06", imapguard.software))
    ]
    text = render(dataclasses.replace(report, services=[a, b]), "table")
    assert "ssl_alt_cert" in text
    assert 'certificate = "/etc/letsencrypt/live/mail.example.org/fullchain.pem"' in text
    assert "Fix: as for" not in text
    assert "Software:    imapguard (from its greeting)" in text


def test_the_json_example_in_the_docs_validates() -> None:
    text = (ROOT / "docs" / "scan-report.md").read_text(encoding="utf-8")
    example = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    jsonschema.Draft202012Validator(_schema()).validate(example)
    assert example["schema_version"] == SCHEMA_VERSION
