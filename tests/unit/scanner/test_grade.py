"""The grade table: each rule, the mail-aware cases, and the Markdown that the
README and docs/scan-report.md print verbatim."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from imapguard.scanner.catalog import CATALOG, finding, not_tested
from imapguard.scanner.grade import GRADES, RULES, grade, grade_rank, grade_table_markdown
from imapguard.scanner.model import Finding, Protocol, Service, Severity, TlsMode

ROOT = Path(__file__).resolve().parents[3]


def service(
    *findings: Finding,
    mode: TlsMode = TlsMode.IMPLICIT,
    versions: tuple[str, ...] = ("TLSv1.2", "TLSv1.3"),
    certificate: dict[str, Any] | None = None,
) -> Service:
    """A service that would get A+ before its findings are added."""
    return Service(
        host="mail.example.org",
        address="192.0.2.10",
        port=993 if mode is TlsMode.IMPLICIT else 143,
        protocol=Protocol.IMAP,
        tls_mode=mode,
        tls_versions=versions,
        certificate={"days_left": 80} if certificate is None else certificate,
        findings=list(findings),
    )


def f(check_id: str, severity: Severity | None = None) -> Finding:
    return finding(check_id, ["evidence"], severity=severity)


def test_a_clean_implicit_tls_service_gets_a_plus_with_no_reasons() -> None:
    assert grade(service()) == ("A+", ())


def test_info_findings_never_lower_the_grade() -> None:
    info = [f(c.id) for c in CATALOG.values() if c.severity is Severity.INFO]
    assert len(info) >= 5
    assert grade(service(*info)) == ("A+", ())


@pytest.mark.parametrize(
    ("check_id", "cap"),
    [
        # the floor: critical, EXP-07 and the catalog's grade caps
        ("EXP-07", "F"),
        ("AUTH-05", "F"),
        ("TLS-01", "F"),
        ("TLS-04", "F"),
        ("TLS-10", "F"),
        ("ST-07", "F"),
        ("CERT-03", "F"),
        ("TLS-02", "C"),
        ("CERT-01", "C"),
        ("CERT-02", "C"),
        ("AUTH-02", "C"),
        ("AUTH-03", "C"),
        ("AUTH-04", "C"),
        ("TLS-05", "B"),
        ("EXP-05", "B"),
        # ours
        ("ST-09", "D"),
        ("AUTH-06", "D"),
        ("EXP-01", "C"),
        ("EXP-02", "C"),
        ("EXP-03", "B"),
        ("ST-01", "C"),
        ("TLS-08", "C"),
        ("CERT-05", "C"),
        ("EXP-04", "B"),
        ("CERT-04", "B"),
        ("ST-08", "B"),
        ("BAN-01", "A-"),
        ("TLS-11", "A-"),
        ("CERT-07", "A-"),
    ],
)
def test_each_finding_caps_the_grade(check_id: str, cap: str) -> None:
    letter, reasons = grade(service(f(check_id)))
    assert letter == cap
    assert len(reasons) == 1
    assert reasons[0].startswith(check_id)
    assert reasons[0].endswith(f"caps at {cap}")


def test_every_catalog_id_has_a_defined_cap() -> None:
    for check in CATALOG.values():
        letter, _ = grade(service(f(check.id)))
        expected = {
            Severity.CRITICAL: "F",
            Severity.HIGH: "C",
            Severity.MEDIUM: "B",
            Severity.LOW: "A-",
            Severity.INFO: "A+",
        }[check.severity]
        if check.id in ("ST-09", "AUTH-06"):
            expected = "D"
        if check.id in ("EXP-03",):
            expected = "B"
        assert letter == expected, check.id


def test_the_reason_names_the_finding_and_the_cap() -> None:
    assert grade(service(f("TLS-02"))) == ("C", ("TLS-02: TLS 1.0 or 1.1 accepted caps at C",))


def test_a_raised_severity_caps_by_the_raised_severity() -> None:
    # EXP-01 is high by default, critical when the dummy credential was evaluated.
    letter, reasons = grade(service(f("EXP-01", Severity.CRITICAL)))
    assert letter == "F"
    assert reasons == (
        "EXP-01 (critical): IMAP cleartext port does not make TLS mandatory before login caps at F",
    )


def test_a_lowered_severity_still_meets_its_id_rule() -> None:
    # EXP-07 caps at F whatever severity a check reports, TLS-02 at C.
    assert grade(service(f("EXP-07", Severity.HIGH)))[0] == "F"
    assert grade(service(f("TLS-02", Severity.LOW)))[0] == "C"
    # ...while a lowered finding with no ID rule follows its new severity.
    assert grade(service(f("CERT-03", Severity.MEDIUM)))[0] == "B"


def test_the_lowest_cap_wins_and_reasons_come_worst_first() -> None:
    letter, reasons = grade(service(f("BAN-01"), f("TLS-05"), f("AUTH-05"), f("TLS-02")))
    assert letter == "F"
    assert [r.rsplit(" ", 1)[1] for r in reasons] == ["F", "C", "B", "A-"]
    assert [r.split(":")[0].split(" ")[0] for r in reasons] == [
        "AUTH-05",
        "TLS-02",
        "TLS-05",
        "BAN-01",
    ]


def test_a_finding_counts_once_under_its_worst_rule() -> None:
    # TLS-02 is both "high" and named by the C rule; one reason, not two.
    _, reasons = grade(service(f("TLS-02"), f("TLS-02")))
    assert reasons == ("TLS-02: TLS 1.0 or 1.1 accepted caps at C",)


# -- A+ conditions ------------------------------------------------------------------


def test_a_plus_needs_tls_1_3() -> None:
    assert grade(service(versions=("TLSv1.2",))) == ("A", ("TLS 1.3 not accepted caps at A",))


@pytest.mark.parametrize(
    ("certificate", "reason"),
    [
        ({"days_left": 30}, "certificate valid for only 30 more days caps at A"),
        ({"days_left": 3}, "certificate valid for only 3 more days caps at A"),
        ({"days_left": -2}, "certificate expired caps at A"),
        ({}, "certificate validity unknown caps at A"),
    ],
)
def test_a_plus_needs_a_certificate_valid_for_more_than_30_days(
    certificate: dict[str, Any], reason: str
) -> None:
    assert grade(service(certificate=certificate)) == ("A", (reason,))


def test_31_days_left_is_enough_for_a_plus() -> None:
    assert grade(service(certificate={"days_left": 31}))[0] == "A+"


def test_a_plus_needs_every_tls_and_certificate_check_run() -> None:
    throttled = not_tested("TLS-10", "throttled")
    assert grade(service(throttled)) == (
        "A",
        (
            "TLS-10 not tested caps at A",
            "incomplete: 1 checks not tested (TLS-10); the grade covers only what was tested",
        ),
    )
    # A not-tested mail check does not block A+: it says nothing about TLS. The
    # grade still says it is incomplete.
    letter, reasons = grade(service(not_tested("AUTH-05", "refused")))
    assert letter == "A+"
    assert reasons == (
        "incomplete: 1 checks not tested (AUTH-05); the grade covers only what was tested",
    )
    assert not service(not_tested("AUTH-05", "refused")).complete
    assert service(f("ST-10")).complete


def test_not_tested_findings_never_lower_the_grade_below_a() -> None:
    every = [not_tested(check_id, "timeout") for check_id in CATALOG]
    letter, reasons = grade(service(*every))
    assert letter == "A"
    assert len(reasons) == 2
    assert reasons[0].endswith("not tested caps at A")
    assert reasons[1].startswith(f"incomplete: {len(CATALOG)} checks not tested (")


# -- mail-aware ---------------------------------------------------------------------


def test_enforced_starttls_with_its_twin_reaches_a_but_not_a_plus() -> None:
    enforced = service(f("ST-10"), mode=TlsMode.CLEARTEXT)
    assert grade(enforced) == ("A", ("cleartext port with STARTTLS, not implicit TLS caps at A",))


@pytest.mark.parametrize(("check_id", "cap"), [("EXP-01", "C"), ("EXP-02", "C"), ("EXP-03", "B")])
def test_opportunistic_starttls_cannot_reach_a(check_id: str, cap: str) -> None:
    letter, _ = grade(service(f(check_id), mode=TlsMode.CLEARTEXT))
    assert letter == cap
    assert grade_rank(letter) > grade_rank("A")


def test_a_missing_twin_caps_an_enforced_starttls_port_at_b() -> None:
    assert grade(service(f("EXP-05"), mode=TlsMode.CLEARTEXT))[0] == "B"


def test_no_tls_at_all_is_f() -> None:
    none = service(f("EXP-07"), mode=TlsMode.CLEARTEXT, versions=(), certificate={})
    letter, reasons = grade(none)
    assert letter == "F"
    # The reasons about TLS quality (1.3, certificate, STARTTLS vs implicit) mean
    # nothing without TLS: only the cap itself is given.
    assert reasons == ("EXP-07: Cleartext mail service with no STARTTLS at all caps at F",)


# -- the table ----------------------------------------------------------------------


def test_scale_and_rules_are_ordered_worst_cap_first() -> None:
    assert GRADES == ("A+", "A", "A-", "B", "C", "D", "F")
    ranks = [grade_rank(rule.cap) for rule in RULES]
    assert ranks == sorted(ranks, reverse=True)


def test_grade_table_markdown_has_one_row_per_rule() -> None:
    table = grade_table_markdown()
    lines = table.splitlines()
    assert lines[0] == "| Caps the grade at | When | Why |"
    assert lines[1] == "|---|---|---|"
    assert len(lines) == 2 + len(RULES)
    assert lines[2].startswith("| F | EXP-07")
    assert any(line.startswith("| B | TLS-05") for line in lines)
    assert all(line.count("|") == 4 for line in lines)


def test_docs_print_the_grade_table_verbatim() -> None:
    docs = (ROOT / "docs" / "scan-report.md").read_text(encoding="utf-8")
    assert grade_table_markdown() in docs


def test_every_id_named_in_the_table_caps_at_its_row_whatever_its_severity() -> None:
    # The table's text and the matcher agree: an ID the "When" column names
    # caps at that row even when a check reports it as low.
    named = 0
    for rule in RULES:
        for check_id in re.findall(r"[A-Z]+-\d\d", rule.when):
            named += 1
            letter, reasons = grade(service(f(check_id, Severity.LOW)))
            assert letter == rule.cap, check_id
            assert reasons[0] == f"{check_id}: {CATALOG[check_id].title} caps at {rule.cap}"
    assert named == 14
