"""catalog.toml as the one source of where checks apply: the loader refuses a broken
file naming the check and key, and what the mail checks and the grade rules derive
from it is pinned here."""

from __future__ import annotations

import re

import pytest

from imapguard.scanner.catalog import (
    CATALOG,
    CatalogError,
    checks_for,
    exposure_check,
    graded_at,
    load_catalog,
    needing_starttls,
)
from imapguard.scanner.grade import RULES
from imapguard.scanner.model import Protocol, TlsMode

_IMAP, _POP3, _SMTP = Protocol.IMAP, Protocol.POP3, Protocol.SMTP
_C, _I = TlsMode.CLEARTEXT, TlsMode.IMPLICIT

_GOOD = """
[[check]]
id = "ST-01"
severity = "high"
title = "STARTTLS not advertised"
standard = "RFC 3207 §4"
cleartext = ["smtp"]
fix = '''
Offer it.
Postfix main.cf:
  smtpd_tls_security_level = may
'''

[[check]]
id = "EXP-03"
severity = "medium"
title = "Submission without TLS"
standard = "RFC 8314 §3.3"
cleartext = ["smtp"]
decided_by = ["ST-01"]
grade_cap = "B"
fix = '''
Require TLS.
'''
"""


def test_a_valid_file_loads_in_order_with_its_fields() -> None:
    checks = load_catalog(_GOOD)
    assert list(checks) == ["ST-01", "EXP-03"]
    st01, exp03 = checks.values()
    assert st01.fix == "Offer it.\nPostfix main.cf:\n  smtpd_tls_security_level = may"
    assert st01.cleartext == frozenset({_SMTP})
    assert st01.implicit == frozenset()
    assert st01.help_uri == "https://www.rfc-editor.org/rfc/rfc3207#section-4"
    assert (exp03.decided_by, exp03.grade_cap) == (("ST-01",), "B")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('severity = "high"', 'severity = "severe"'), "check ST-01.severity"),
        (('cleartext = ["smtp"]\nfix', 'cleartext = ["lmtp"]\nfix'), "check ST-01.cleartext"),
        (('id = "EXP-03"', 'id = "ST-01"'), "check ST-01: listed twice"),
        (('decided_by = ["ST-01"]', 'decided_by = ["ST-99"]'), "check EXP-03.decided_by"),
        (('grade_cap = "B"', 'grade_cap = "E"'), "check EXP-03.grade_cap"),
        (('grade_cap = "B"', 'grade_cap = "B"\nseverty = "low"'), "check EXP-03: unknown keys"),
        (('id = "ST-01"', 'id = "st-1"'), "check #1.id"),
        (('title = "STARTTLS not advertised"', 'title = ""'), "check ST-01.title"),
        (('[[check]]\nid = "EXP-03"', '[[checks]]\nid = "EXP-03"'), "only [[check]] tables"),
        (("fix = '''\nRequire", "fix = '''\nRequire\nx = '''\n'''"), "catalog.toml:"),
    ],
)
def test_a_broken_file_is_refused_naming_the_check_and_key(
    change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in _GOOD
    with pytest.raises(CatalogError, match=re.escape(message)):
        load_catalog(_GOOD.replace(old, new, 1))


def test_the_shipped_catalog_has_every_family_in_order() -> None:
    families = list(dict.fromkeys(c.family for c in CATALOG.values()))
    assert families == ["EXP", "ST", "AUTH", "BAN", "TLS", "CERT"]


# What the mail checks give each kind of service (the not-tested list when a
# server throttles the scan): written out here so that a change to catalog.toml shows.
_EXPECTED = {
    (_IMAP, _C): "EXP-01 EXP-07 ST-01 ST-02 ST-03 ST-04 ST-07 ST-09 ST-10 "
    "AUTH-01 AUTH-02 AUTH-05 AUTH-06 AUTH-09 BAN-01 BAN-02",
    (_POP3, _C): "EXP-02 EXP-07 ST-01 ST-02 ST-03 ST-04 ST-07 ST-10 "
    "AUTH-03 AUTH-05 AUTH-06 AUTH-09 BAN-01 BAN-02",
    (_SMTP, _C): "EXP-03 EXP-07 ST-01 ST-02 ST-03 ST-04 ST-05 ST-07 ST-08 ST-10 "
    "AUTH-04 AUTH-05 AUTH-06 AUTH-08 AUTH-09 BAN-01 BAN-03",
    (_IMAP, _I): "ST-04 ST-06 AUTH-06 AUTH-09 BAN-01 BAN-02",
    (_POP3, _I): "ST-04 ST-06 AUTH-06 AUTH-09 BAN-01 BAN-02",
    (_SMTP, _I): "ST-04 ST-06 AUTH-06 AUTH-08 AUTH-09 BAN-01 BAN-03",
}


@pytest.mark.parametrize(("key", "ids"), list(_EXPECTED.items()))
def test_checks_for_each_kind_of_service(key: tuple[Protocol, TlsMode], ids: str) -> None:
    assert checks_for(*key) == tuple(ids.split())


def test_no_mail_check_for_sieve_or_unknown() -> None:
    for protocol in (Protocol.SIEVE, Protocol.UNKNOWN):
        assert checks_for(protocol, _C) == ()
        assert exposure_check(protocol) is None


def test_checks_that_need_a_working_starttls() -> None:
    assert needing_starttls(_IMAP) == ("ST-04", "ST-07", "ST-10", "AUTH-09")
    assert needing_starttls(_POP3) == ("ST-04", "ST-07", "ST-10", "AUTH-09")
    assert needing_starttls(_SMTP) == ("ST-04", "ST-05", "ST-07", "ST-08", "ST-10", "AUTH-09")


def test_exposure_checks_and_their_inputs_in_evidence_order() -> None:
    decided = {p: exposure_check(p) for p in (_IMAP, _POP3, _SMTP)}
    assert {p: (c.id, c.decided_by) for p, c in decided.items() if c is not None} == {
        _IMAP: ("EXP-01", ("ST-09", "ST-01", "AUTH-01", "AUTH-02", "AUTH-05")),
        _POP3: ("EXP-02", ("ST-01", "AUTH-03", "AUTH-05")),
        _SMTP: ("EXP-03", ("ST-01", "AUTH-04", "AUTH-05")),
    }


def test_grade_rules_name_exactly_the_catalogs_caps() -> None:
    """The grade table's text (printed in the README) names the IDs the catalog
    caps at each grade: the text cannot drift from the rule it describes."""
    for cap in ("F", "D", "C", "B"):
        named = {
            check_id
            for rule in RULES
            if rule.cap == cap
            for check_id in re.findall(r"\b[A-Z]+-\d\d\b", rule.when)
        }
        assert named == graded_at(cap), cap
    assert graded_at("A") == frozenset()
