"""Grades A+ to F for one service, from one rule table.

The scale, best first: A+, A, A-, B, C, D, F (no E: D already means "open to
anyone on the path"; a finer step between D and F would not change what an
administrator does next). A service starts at A+; every rule that applies caps
it, and the grade is the lowest cap. The reasons name each finding (or
condition) and its cap, worst first, e.g. "TLS-02: TLS 1.0 or 1.1 accepted caps
at C".

Which findings cap at a given grade whatever their severity is the catalog's
(`grade_cap` in catalog.toml); the rules below say why:
- any critical finding caps at F; so does EXP-07 (no TLS at all) whatever
  severity a check gave it;
- ST-09 (PREAUTH on cleartext) and AUTH-06 (anonymous access, open relay) cap
  at D: the mailbox or the relay is open to anyone, with no password to steal;
- TLS 1.0/1.1 (TLS-02), a certificate that does not validate or match
  (CERT-01, CERT-02), a plaintext mechanism advertised before TLS (AUTH-02,
  AUTH-03, AUTH-04), and opportunistic STARTTLS on IMAP or POP3 (EXP-01,
  EXP-02) cap at C: a password can be read or intercepted by someone on the
  path, the same class of harm;
- any other high finding caps at C;
- no forward secrecy or no AEAD (TLS-05), a missing implicit-TLS twin (EXP-05)
  and opportunistic STARTTLS on submission (EXP-03) cap at B; EXP-03 is B, not
  C, because without AUTH-04 the password is already protected and what stays
  exposed is the message, as with weak suites;
- any other medium finding caps at B, any low finding at A-; info findings
  never lower the grade;
- A+ needs, on top: TLS 1.3 accepted, a certificate valid for more than 30
  days, every TLS and certificate check actually run (a not-tested one caps at
  A: we cannot vouch for what we did not see), and implicit TLS. A cleartext
  port that requires STARTTLS, refuses plaintext login and has its twin reaches
  A but not A+: RFC 8314 §3.3 prefers implicit TLS because a client that does
  not insist on STARTTLS can be downgraded before the server can refuse.

Not-tested findings never lower the grade otherwise, and never raise it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from imapguard.scanner.catalog import graded_at
from imapguard.scanner.model import GRADES, Finding, Protocol, Service, Severity, Status, TlsMode

__all__ = ["GRADES", "RULES", "Rule", "grade", "grade_rank", "grade_table_markdown"]

#: A+ needs a certificate valid for more than this many days (the same 30 days
#: after which CERT-03 warns).
MIN_DAYS_LEFT = 30


def grade_rank(grade: str) -> int:
    """0 for A+ ... 6 for F; higher is worse (sorts the worst last)."""
    return GRADES.index(grade)


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One row of the grade table. `match` returns (key, reason) for each
    finding or condition that triggers the rule (empty: it does not apply); the
    key (a finding ID or the condition) makes a finding count once, under the
    first, worst, rule that matches it."""

    cap: str
    when: str  # for the Markdown table
    why: str  # for the Markdown table
    match: Callable[[Service], list[tuple[str, str]]]


def _failed(service: Service) -> list[Finding]:
    return [f for f in service.findings if f.status is Status.FAIL]


_Match = Callable[[Service], list[tuple[str, str]]]


def _capped(cap: str) -> _Match:
    """The failed findings the catalog caps at `cap` (its `grade_cap`)."""
    wanted = graded_at(cap)

    def match(service: Service) -> list[tuple[str, str]]:
        return [(f.id, f"{f.id}: {f.title}") for f in _failed(service) if f.id in wanted]

    return match


def _severity(severity: Severity) -> _Match:
    def match(service: Service) -> list[tuple[str, str]]:
        return [
            (f.id, f"{f.id} ({severity.value}): {f.title}")
            for f in _failed(service)
            if f.severity is severity
        ]

    return match


def _condition(test: Callable[[Service], str | None]) -> _Match:
    def match(service: Service) -> list[tuple[str, str]]:
        reason = test(service)
        return [] if reason is None else [(reason, reason)]

    return match


def _without_tls(service: Service) -> bool:
    """No TLS at all (EXP-07): the A+ conditions about TLS say nothing more."""
    return "EXP-07" in service.ids()


def _no_tls13(service: Service) -> str | None:
    if _without_tls(service) or "TLSv1.3" in service.tls_versions:
        return None
    return "TLS 1.3 not accepted"


def _short_certificate(service: Service) -> str | None:
    days = service.certificate.get("days_left")
    if _without_tls(service) or (isinstance(days, int | float) and days > MIN_DAYS_LEFT):
        return None
    if not isinstance(days, int | float):
        return "certificate validity unknown"
    if days <= 0:
        return "certificate expired"
    return f"certificate valid for only {days} more days"


def _tls_not_tested(service: Service) -> str | None:
    ids = sorted(
        {
            f.id
            for f in service.findings
            if f.status is Status.NOT_TESTED and f.id.split("-", 1)[0] in ("TLS", "CERT")
        }
    )
    return f"{', '.join(ids)} not tested" if ids else None


def _starttls(service: Service) -> str | None:
    if service.tls_mode is TlsMode.IMPLICIT or _without_tls(service):
        return None
    return "cleartext port with STARTTLS, not implicit TLS"


RULES: tuple[Rule, ...] = (
    Rule(
        "F",
        "EXP-07 (no STARTTLS at all), whatever its severity",
        "passwords and mail cross the network in cleartext",
        _capped("F"),
    ),
    Rule(
        "F",
        "any critical finding",
        "broken outright, or passwords already readable",
        _severity(Severity.CRITICAL),
    ),
    Rule(
        "D",
        "ST-09 (PREAUTH on cleartext), AUTH-06 (anonymous access or open relay)",
        "the mailbox or the relay is open to anyone, no password needed",
        _capped("D"),
    ),
    Rule(
        "C",
        "TLS-02 (TLS 1.0/1.1), CERT-01 (chain not trusted), CERT-02 (name mismatch),"
        " AUTH-02/AUTH-03/AUTH-04 (plaintext login offered before TLS),"
        " EXP-01/EXP-02 (IMAP/POP3 with opportunistic STARTTLS)",
        "a password can be read or intercepted by someone on the path",
        _capped("C"),
    ),
    Rule("C", "any other high finding", "a serious weakness", _severity(Severity.HIGH)),
    Rule(
        "B",
        "TLS-05 (no forward secrecy or no AEAD), EXP-05 (no implicit-TLS twin),"
        " EXP-03 (submission with opportunistic STARTTLS)",
        "traffic is protected, but less than it should be",
        _capped("B"),
    ),
    Rule(
        "B", "any other medium finding", "a weakness worth fixing soon", _severity(Severity.MEDIUM)
    ),
    Rule("A-", "any low finding", "hardening left to do", _severity(Severity.LOW)),
    Rule("A", "TLS 1.3 not accepted", "A+ needs TLS 1.3", _condition(_no_tls13)),
    Rule(
        "A",
        f"certificate valid for {MIN_DAYS_LEFT} days or less, or validity unknown",
        f"A+ needs more than {MIN_DAYS_LEFT} days left",
        _condition(_short_certificate),
    ),
    Rule(
        "A",
        "a TLS or certificate check not tested",
        "A+ is only given for what was seen",
        _condition(_tls_not_tested),
    ),
    Rule(
        "A",
        "cleartext port with STARTTLS (even when required)",
        "RFC 8314 prefers implicit TLS; A+ needs it",
        _condition(_starttls),
    ),
)


def grade(service: Service) -> tuple[str, tuple[str, ...]]:
    """The grade of `service` and why, worst reason first. Info findings and
    not-tested findings (other than the A+ conditions) change nothing."""
    # RULES runs from the lowest cap up, so the first rule to claim a key is
    # the one that caps it hardest.
    claimed: dict[str, tuple[str, str]] = {}  # key -> (cap, reason)
    for rule in RULES:
        for key, reason in rule.match(service):
            claimed.setdefault(key, (rule.cap, reason))
    worst = max((grade_rank(cap) for cap, _ in claimed.values()), default=0)
    ordered = sorted(claimed.values(), key=lambda item: -grade_rank(item[0]))
    reasons = [f"{reason} caps at {cap}" for cap, reason in ordered]
    if service.protocol is Protocol.UNKNOWN:
        reasons.append(
            "incomplete: no IMAP, POP3, SMTP or ManageSieve answered here, so no mail"
            " check ran; the grade covers nothing"
        )
    elif not service.complete:
        # Not a cap (a check that did not run is neither a pass nor a fail), but a
        # grade is only as good as what was seen: say so next to it.
        untested = sorted({f.id for f in service.findings if f.status is Status.NOT_TESTED})
        reasons.append(
            f"incomplete: {len(untested)} checks not tested ({', '.join(untested)}); "
            "the grade covers only what was tested"
        )
    return GRADES[worst], tuple(reasons)


def grade_table_markdown() -> str:
    """The rule table as Markdown, printed verbatim in the README and in
    docs/scan-report.md (a test checks they hold this exact text)."""
    lines = [
        "| Caps the grade at | When | Why |",
        "|---|---|---|",
        *(f"| {rule.cap} | {rule.when} | {rule.why} |" for rule in RULES),
    ]
    return "\n".join(lines) + "\n"
