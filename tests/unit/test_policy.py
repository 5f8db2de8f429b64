"""The zero-trust policy: table tests of evaluate / explain over a rule set that
uses every condition kind, the schema's errors with their key paths, groups,
and properties that hold for any request."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from imapguard import config as config_module
from imapguard import policy
from imapguard.errors import ConfigError
from imapguard.policy import (
    FACTOR_STRENGTH,
    FACTORS,
    IMPLICIT_DENY,
    METHODS,
    NO_POLICY,
    CompiledPolicy,
    Decision,
    DecisionKind,
    Groups,
    GroupsConfig,
    PolicyConfig,
    PolicyRequest,
    compile_policy,
    evaluate,
    explain,
    parse_groups_file,
    policy_problems,
    policy_warnings,
    strength,
)
from imapguard.policy.rules import COUNTRY_CODES, METHOD_FACTORS
from imapguard.vocab import DEFAULT_SUFFICIENT

ALLOW, DENY, REQUIRE = DecisionKind.ALLOW, DecisionKind.DENY, DecisionKind.REQUIRE_FACTOR
INTERNAL = "10.0.0.1:993"
PUBLIC = "0.0.0.0:993"
DEFAULT_ALERT = "Access denied by policy; see https://it.example.org/mail"
STUDENT_ALERT = "IMAP is switched off for students; use https://webmail.example.org"
COUNTRY_ALERT = "IMAP is not available from your country"
ADMIN_ALERT = "Admins sign in with their client certificate"
MFA = ("app-password", "password+totp", "oauth-mfa", "client-cert", "password+client-cert")

# Every condition kind, negations and globs included; the comments say which
# table rows below exercise what.
CONFIG = f"""
[groups]
staff = ["alice@example.org", "Bob@Example.org"]
students = ["sam@example.org", "rep@example.org"]

[policy]
geoip_database = "/var/lib/imapguard/geo-whois-asn-country.mmdb"
default_alert = "{DEFAULT_ALERT}"

[[policy.rules]]
name = "sanctioned-countries"
action = "deny"
countries = ["KP", "ir"]
alert = "{COUNTRY_ALERT}"

[[policy.rules]]
name = "unknown-country-off-campus"
action = "deny"
countries = ["unknown"]
not_networks = ["10.0.0.0/8", "2001:db8::/32"]

[[policy.rules]]
name = "students-imap-off"
action = "deny"
groups = ["students"]
not_users = ["rep@example.org"]
alert = "{STUDENT_ALERT}"

[[policy.rules]]
name = "monitoring"
action = "allow"
users = ["monitor@example.org"]
networks = ["10.0.9.7/32", "2001:db8:9::7/128"]
client_cert = true
listeners = ["{INTERNAL}"]
methods = ["client-cert"]

[[policy.rules]]
name = "internal-needs-cert"
action = "deny"
listeners = ["{INTERNAL}"]
client_cert = false

[[policy.rules]]
name = "campus-staff"
action = "allow"
groups = ["Staff"]
networks = ["10.0.0.0/8", "::ffff:192.168.0.0/112", "2001:db8::/32"]

[[policy.rules]]
name = "no-weak-oauth"
action = "deny"
methods = ["oauthbearer", "xoauth2"]
not_factors = ["oauth-mfa"]

[[policy.rules]]
name = "admins-need-cert"
action = "require"
users = ["admin-*@example.org", "root@example.org"]
require = ["password+client-cert"]
alert = "{ADMIN_ALERT}"

[[policy.rules]]
name = "partners-eu"
action = "allow"
users = ["*@partner.example"]
not_groups = ["staff", "students"]
not_countries = ["US", "cn"]
factors = ["app-password"]
not_listeners = ["{INTERNAL}"]
not_methods = ["password"]

[[policy.rules]]
name = "strong-elsewhere"
action = "allow"
min_strength = 3

[[policy.rules]]
name = "example-org-needs-mfa"
action = "require"
users = ["*@example.org"]
require_strength = 3
"""

RAW = tomllib.loads(CONFIG)
POLICY_CONFIG = PolicyConfig.model_validate(RAW["policy"])
GROUPS = Groups.from_config(GroupsConfig.model_validate(RAW["groups"]))
POLICY = compile_policy(POLICY_CONFIG)
RULE_NAMES = [rule.name for rule in POLICY_CONFIG.rules]


def request(user: str, **fields: Any) -> PolicyRequest:
    """A login that passes most rules: from outside, Germany, public listener,
    password with a code; the groups come from [groups] as the gateway does."""
    values: dict[str, Any] = {
        "groups": GROUPS.groups_of(user),
        "ip": "198.51.100.7",
        "country": "DE",
        "client_cert": False,
        "method": "password",
        "factor": "password+totp",
        "listener": PUBLIC,
    }
    values.update(fields)
    return PolicyRequest(user=user, **values)


# id, request, expected kind, deciding rule, alert, required
CASES: list[tuple[str, PolicyRequest, DecisionKind, str, str | None, tuple[str, ...]]] = [
    # countries (case-insensitive in config and request); first match wins over students
    (
        "student-from-kp",
        request("sam@example.org", country="kp"),
        DENY,
        "sanctioned-countries",
        COUNTRY_ALERT,
        (),
    ),
    (
        "staff-from-ir",
        request("alice@example.org", country="IR"),
        DENY,
        "sanctioned-countries",
        COUNTRY_ALERT,
        (),
    ),
    # country "unknown" + not_networks (v4 outside, inside; v6 inside; v4-mapped)
    (
        "unknown-country-outside",
        request("alice@example.org", country=None, ip="172.16.0.5"),
        DENY,
        "unknown-country-off-campus",
        DEFAULT_ALERT,
        (),
    ),
    (
        "unknown-country-outside-v6",
        request("alice@example.org", country=None, ip="2001:db9::1"),
        DENY,
        "unknown-country-off-campus",
        DEFAULT_ALERT,
        (),
    ),
    (
        "unknown-country-campus",
        request("alice@example.org", country=None, ip="10.1.2.3"),
        ALLOW,
        "campus-staff",
        None,
        (),
    ),
    (
        "unknown-country-campus-v6",
        request("alice@example.org", country=None, ip="2001:db8:1::5"),
        ALLOW,
        "campus-staff",
        None,
        (),
    ),
    (
        "unknown-country-campus-mapped",
        request("alice@example.org", country=None, ip="::ffff:10.1.2.3"),
        ALLOW,
        "campus-staff",
        None,
        (),
    ),
    # a v4-mapped network in the configuration matches plain IPv4 (and mapped) clients
    (
        "mapped-network-v4-client",
        request("alice@example.org", ip="192.168.3.4"),
        ALLOW,
        "campus-staff",
        None,
        (),
    ),
    (
        "mapped-network-mapped-client",
        request("alice@example.org", ip="::ffff:192.168.3.4"),
        ALLOW,
        "campus-staff",
        None,
        (),
    ),
    (
        "just-outside-mapped-network",
        request("alice@example.org", ip="192.169.0.1"),
        ALLOW,
        "strong-elsewhere",
        None,
        (),
    ),
    # groups (case-insensitive membership) + not_users
    ("student", request("Sam@Example.org"), DENY, "students-imap-off", STUDENT_ALERT, ()),
    (
        "student-rep-excepted",
        request("rep@example.org", factor="password"),
        REQUIRE,
        "example-org-needs-mfa",
        DEFAULT_ALERT,
        MFA,
    ),
    # users + networks (v4, v6 /32 and /128) + client_cert true + listeners + methods
    (
        "monitoring",
        request(
            "monitor@example.org",
            ip="10.0.9.7",
            client_cert=True,
            listener=INTERNAL,
            method="client-cert",
            factor="client-cert",
            country=None,
        ),
        ALLOW,
        "monitoring",
        None,
        (),
    ),
    (
        "monitoring-v6",
        request(
            "monitor@example.org",
            ip="2001:db8:9::7",
            client_cert=True,
            listener=INTERNAL,
            method="client-cert",
            factor="client-cert",
            country=None,
        ),
        ALLOW,
        "monitoring",
        None,
        (),
    ),
    (
        "monitoring-other-host",
        request(
            "monitor@example.org",
            ip="10.0.9.8",
            client_cert=True,
            listener=INTERNAL,
            method="client-cert",
            factor="client-cert",
        ),
        ALLOW,
        "strong-elsewhere",
        None,
        (),
    ),
    (
        "monitoring-public-listener",
        request(
            "monitor@example.org",
            ip="10.0.9.7",
            client_cert=True,
            method="client-cert",
            factor="client-cert",
        ),
        ALLOW,
        "strong-elsewhere",
        None,
        (),
    ),
    # listeners + client_cert false
    (
        "internal-listener-without-cert",
        request("alice@example.org", ip="10.1.2.3", listener=INTERNAL),
        DENY,
        "internal-needs-cert",
        DEFAULT_ALERT,
        (),
    ),
    (
        "internal-listener-with-cert",
        request("alice@example.org", ip="10.1.2.3", listener=INTERNAL, client_cert=True),
        ALLOW,
        "campus-staff",
        None,
        (),
    ),
    # methods + not_factors
    (
        "oauth-without-mfa",
        request("bob@example.org", method="oauthbearer", factor="oauth"),
        DENY,
        "no-weak-oauth",
        DEFAULT_ALERT,
        (),
    ),
    (
        "xoauth2-without-mfa",
        request("bob@example.org", method="xoauth2", factor="oauth"),
        DENY,
        "no-weak-oauth",
        DEFAULT_ALERT,
        (),
    ),
    (
        "oauth-with-mfa",
        request("bob@example.org", method="xoauth2", factor="oauth-mfa"),
        ALLOW,
        "strong-elsewhere",
        None,
        (),
    ),
    # require: satisfied, not satisfied; user globs are anchored and case-insensitive
    (
        "admin-with-cert",
        request("admin-carol@example.org", factor="password+client-cert"),
        ALLOW,
        "admins-need-cert",
        None,
        (),
    ),
    (
        "admin-with-totp",
        request("ADMIN-Carol@Example.ORG"),
        REQUIRE,
        "admins-need-cert",
        ADMIN_ALERT,
        ("password+client-cert",),
    ),
    (
        "root-exact-name",
        request("root@example.org", factor="app-password", method="app-password"),
        REQUIRE,
        "admins-need-cert",
        ADMIN_ALERT,
        ("password+client-cert",),
    ),
    (
        "glob-is-anchored-left",
        request("xadmin-carol@example.org"),
        ALLOW,
        "strong-elsewhere",
        None,
        (),
    ),
    (
        "glob-is-anchored-right",
        request("admin-carol@example.org.evil.example"),
        ALLOW,
        "strong-elsewhere",
        None,
        (),
    ),
    # suffix glob + not_groups + not_countries + factors + not_listeners + not_methods
    (
        "partner",
        request("p@partner.example", country="fr", method="app-password", factor="app-password"),
        ALLOW,
        "partners-eu",
        None,
        (),
    ),
    (
        "partner-not-countries",
        request("p@partner.example", country="CN", method="app-password", factor="app-password"),
        ALLOW,
        "strong-elsewhere",
        None,
        (),
    ),
    (
        "partner-not-listeners",
        request(
            "p@partner.example",
            listener=INTERNAL,
            client_cert=True,
            method="app-password",
            factor="app-password",
        ),
        ALLOW,
        "strong-elsewhere",
        None,
        (),
    ),
    ("partner-not-methods", request("p@partner.example"), ALLOW, "strong-elsewhere", None, ()),
    (
        "partner-factors",
        request("p@partner.example", method="oauthbearer", factor="oauth-mfa"),
        ALLOW,
        "strong-elsewhere",
        None,
        (),
    ),
    # min_strength: below 3 falls through; nothing after the last rule: implicit deny
    (
        "partner-weak",
        request("p@partner.example", factor="password"),
        DENY,
        IMPLICIT_DENY,
        DEFAULT_ALERT,
        (),
    ),
    (
        "trusted-device-example-org",
        request("alice@example.org", factor="trusted-device"),
        REQUIRE,
        "example-org-needs-mfa",
        DEFAULT_ALERT,
        MFA,
    ),
    # what the request does not know matches neither way (policy explain without options)
    (
        "no-factor",
        request("alice@example.org", factor=None),
        REQUIRE,
        "example-org-needs-mfa",
        DEFAULT_ALERT,
        MFA,
    ),
    (
        "no-method-weak-oauth",
        request("bob@example.org", method=None, factor="oauth"),
        REQUIRE,
        "example-org-needs-mfa",
        DEFAULT_ALERT,
        MFA,
    ),
    (
        "no-listener",
        request("p@partner.example", listener=None, method="app-password", factor="app-password"),
        ALLOW,
        "strong-elsewhere",
        None,
        (),
    ),
    (
        "outsider-no-factor",
        request("eve@elsewhere.example", factor=None),
        DENY,
        IMPLICIT_DENY,
        DEFAULT_ALERT,
        (),
    ),
]


@pytest.mark.parametrize(
    ("req", "kind", "rule", "alert", "required"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_decision_table(
    req: PolicyRequest,
    kind: DecisionKind,
    rule: str,
    alert: str | None,
    required: tuple[str, ...],
) -> None:
    decision = evaluate(POLICY, req)
    assert (decision.kind, decision.rule, decision.alert, decision.required) == (
        kind,
        rule,
        alert,
        required,
    ), decision.reason
    # `policy explain` reaches the same decision and stops at the deciding rule.
    explanation = explain(POLICY, req)
    assert explanation.decision == decision
    matched = [step.name for step in explanation.trace if step.matched]
    assert matched == ([] if rule == IMPLICIT_DENY else [rule])
    if rule == IMPLICIT_DENY:
        assert len(explanation.trace) == len(RULE_NAMES)
    else:
        assert explanation.trace[-1].name == rule


def test_table_exercises_every_rule_and_outcome() -> None:
    deciding = {case[3] for case in CASES}
    assert deciding == {*RULE_NAMES, IMPLICIT_DENY}
    assert {case[2] for case in CASES} == set(DecisionKind)


def test_rule_set_uses_every_condition_kind() -> None:
    from imapguard.policy.rules import CONDITION_KEYS

    used = {key for rule in POLICY_CONFIG.rules for key in rule.conditions()}
    assert used == set(CONDITION_KEYS)


def test_no_policy_allows_every_authenticated_login() -> None:
    for req in (request("eve@elsewhere.example", factor="password"), request("x", factor=None)):
        decision = evaluate(None, req)
        assert decision == explain(None, req).decision
        assert (decision.kind, decision.rule, decision.alert) == (ALLOW, NO_POLICY, None)
    assert compile_policy(None) is None
    lines = explain(None, request("x")).explanation_lines()
    assert any("no [policy] section" in line for line in lines)


def test_empty_rules_deny_everything() -> None:
    compiled = compile_policy(PolicyConfig())
    decision = evaluate(compiled, request("alice@example.org", factor="password+client-cert"))
    assert (decision.kind, decision.rule, decision.alert) == (DENY, IMPLICIT_DENY, None)


def test_first_match_wins_even_when_a_later_rule_would_allow() -> None:
    config = PolicyConfig.model_validate(
        {
            "rules": [
                {"name": "deny-all", "action": "deny"},
                {"name": "allow-all", "action": "allow"},
            ]
        }
    )
    decision = evaluate(compile_policy(config), request("alice@example.org"))
    assert (decision.kind, decision.rule) == (DENY, "deny-all")
    assert decision.alert is None


def test_rule_alert_overrides_default_alert_and_allow_carries_none() -> None:
    assert evaluate(POLICY, request("sam@example.org")).alert == STUDENT_ALERT
    assert evaluate(POLICY, request("eve@x.example", factor="password")).alert == DEFAULT_ALERT
    assert evaluate(POLICY, request("alice@example.org", ip="10.0.0.9")).alert is None


def test_without_country_database_countries_rules_never_match() -> None:
    compiled = compile_policy(POLICY_CONFIG, countries_available=False)
    assert not compiled.countries_available
    # The sanctioned-countries deny no longer applies: the student rule decides.
    decision = evaluate(compiled, request("sam@example.org", country="KP"))
    assert decision.rule == "students-imap-off"
    # Nor does the "unknown" rule, and neither does the negated not_countries.
    decision = evaluate(compiled, request("alice@example.org", country=None, ip="172.16.0.5"))
    assert decision.rule == "strong-elsewhere"
    partner = request(
        "p@partner.example", country="FR", method="app-password", factor="app-password"
    )
    assert evaluate(compiled, partner).rule == "strong-elsewhere"
    step = explain(compiled, partner).trace[0]
    assert (step.failed, step.detail) == (
        "countries",
        "countries: no country database, so countries conditions never match",
    )
    # By default, availability follows the configuration.
    assert compile_policy(POLICY_CONFIG).countries_available
    without = POLICY_CONFIG.model_copy(update={"geoip_database": None})
    assert not compile_policy(without).countries_available


def test_two_hundred_rules() -> None:
    rules: list[dict[str, Any]] = [
        {
            "name": f"r{i}",
            "action": "allow",
            "users": [f"user{i}@example.org", f"*@dept{i}.example.org"],
            "networks": [f"10.{i}.0.0/16", f"2001:db8:{i:x}::/48"],
            "methods": ["password"],
        }
        for i in range(199)
    ]
    rules.append({"name": "last", "action": "require", "require_strength": 4})
    compiled = compile_policy(PolicyConfig.model_validate({"rules": rules}))
    assert len(compiled.rules) == 200
    hit = evaluate(compiled, request("x@dept150.example.org", ip="2001:db8:96::1"))
    assert hit.rule == "r150"
    assert hit.kind is ALLOW
    miss = explain(compiled, request("user3@example.org", ip="10.4.0.1"))
    assert miss.decision.rule == "last"
    assert miss.decision.kind is REQUIRE
    assert miss.decision.required == ("password+client-cert",)
    assert len(miss.trace) == 200
    assert miss.trace[3].failed == "networks"
    assert miss.trace[4].failed == "users"


# -- explain -------------------------------------------------------------------


def test_explain_names_the_first_failed_condition_of_each_rule() -> None:
    explanation = explain(POLICY, request("rep@example.org"))
    got = [(step.name, step.matched, step.failed) for step in explanation.trace]
    assert got == [
        ("sanctioned-countries", False, "countries"),
        ("unknown-country-off-campus", False, "countries"),
        ("students-imap-off", False, "not_users"),
        ("monitoring", False, "listeners"),
        ("internal-needs-cert", False, "listeners"),
        ("campus-staff", False, "groups"),
        ("no-weak-oauth", False, "methods"),
        ("admins-need-cert", False, "users"),
        ("partners-eu", False, "not_methods"),
        ("strong-elsewhere", True, None),
    ]
    assert [step.index for step in explanation.trace] == list(range(10))
    details = [step.detail for step in explanation.trace]
    assert details == [
        "countries: country DE is not one of KP, IR",
        "countries: country DE is not one of unknown",
        "not_users: rep@example.org matches rep@example.org",
        f"listeners: listener {PUBLIC} is not one of {INTERNAL}",
        f"listeners: listener {PUBLIC} is not one of {INTERNAL}",
        "groups: rep@example.org is in none of staff (only in students)",
        "methods: method password is not one of oauthbearer, xoauth2",
        "users: rep@example.org matches none of admin-*@example.org, root@example.org",
        "not_methods: method password is one of password",
        "all conditions hold",
    ]
    assert explanation.by_factor == ()


@pytest.mark.parametrize(
    ("req", "index", "detail"),
    [
        (
            request("alice@example.org", ip="192.0.2.1", listener=INTERNAL, client_cert=True),
            5,
            "networks: 192.0.2.1 is in none of 10.0.0.0/8, 192.168.0.0/16, 2001:db8::/32",
        ),
        (
            request("alice@example.org", country=None, ip="::ffff:10.9.9.9"),
            1,
            "not_networks: 10.9.9.9 is in one of 10.0.0.0/8, 2001:db8::/32",
        ),
        (
            request("monitor@example.org", ip="10.0.9.7", listener=INTERNAL, method="client-cert"),
            3,
            "client_cert = true: no verified client certificate was presented",
        ),
        (
            request("monitor@example.org", ip="10.0.9.7", listener=INTERNAL, client_cert=True),
            4,
            "client_cert = false: a verified client certificate was presented",
        ),
        (
            request("p@partner.example", country="us", method="app-password"),
            8,
            "not_countries: country US is one of US, CN",
        ),
        (
            request("p@partner.example", listener=INTERNAL, client_cert=True),
            8,
            f"not_listeners: listener {INTERNAL} is one of {INTERNAL}",
        ),
        (
            request("p@partner.example", method="oauthbearer", factor="oauth-mfa"),
            8,
            "factors: factor oauth-mfa is not one of app-password",
        ),
        (
            request("p@partner.example", method=None, factor="app-password"),
            8,
            "not_methods: no method given",
        ),
        (
            request("p@partner.example", factor="app-password"),
            8,
            "not_methods: method password is one of password",
        ),
        (
            request("bob@example.org", method="xoauth2", factor="oauth-mfa"),
            6,
            "not_factors: factor oauth-mfa is one of oauth-mfa",
        ),
        (
            request("bob@example.org", method="xoauth2", factor=None),
            6,
            "not_factors: no factor given",
        ),
        (request("bob@example.org", method=None), 6, "methods: no method given"),
        (request("bob@example.org", listener=None), 3, "listeners: no listener given"),
        (
            request("eve@elsewhere.example", ip="10.0.0.1", factor="trusted-device"),
            5,
            "groups: eve@elsewhere.example is in none of staff (in no group)",
        ),
        (
            request("bob@example.org", factor="trusted-device"),
            9,
            "min_strength = 3: trusted-device has strength 2",
        ),
        (request("bob@example.org", factor=None), 9, "min_strength = 3: no factor given"),
        (
            request(
                "p@partner.example",
                country="DE",
                method="app-password",
                factor="app-password",
                groups=frozenset({"staff"}),
            ),
            8,
            "not_groups: p@partner.example is in staff",
        ),
    ],
)
def test_explain_details(req: PolicyRequest, index: int, detail: str) -> None:
    steps = {step.index: step for step in explain(POLICY, req).trace}
    assert steps[index].detail == detail


def test_explain_without_factor_lists_the_decision_per_factor() -> None:
    explanation = explain(POLICY, request("bob@example.org", factor=None))
    by_factor = {factor: (d.kind, d.rule) for factor, d in explanation.by_factor}
    assert [f for f, _ in explanation.by_factor] == [
        "password",
        "trusted-device",
        "password+totp",
        "password+client-cert",
    ]  # what a password login can prove, weakest first
    assert by_factor == {
        "password": (REQUIRE, "example-org-needs-mfa"),
        "trusted-device": (REQUIRE, "example-org-needs-mfa"),
        "password+totp": (ALLOW, "strong-elsewhere"),
        "password+client-cert": (ALLOW, "strong-elsewhere"),
    }
    no_method = explain(POLICY, request("bob@example.org", factor=None, method=None))
    assert sorted(f for f, _ in no_method.by_factor) == sorted(FACTORS)
    oauth = explain(POLICY, request("bob@example.org", factor=None, method="oauthbearer"))
    assert [(f, d.rule) for f, d in oauth.by_factor] == [
        ("oauth", "no-weak-oauth"),
        ("oauth-mfa", "strong-elsewhere"),
    ]


def test_explanation_lines_for_humans() -> None:
    lines = explain(POLICY, request("sam@example.org")).explanation_lines()
    assert lines == [
        "user sam@example.org · groups students · ip 198.51.100.7 · country DE · method password"
        f" · factor password+totp · listener {PUBLIC} · client certificate no",
        "  rules[0] sanctioned-countries (deny): no match: countries: country DE is not one of "
        "KP, IR",
        "  rules[1] unknown-country-off-campus (deny): no match: countries: country DE is not "
        "one of unknown",
        "  rules[2] students-imap-off (deny): MATCH",
        "decision: DENY by rule 'students-imap-off'",
        "  rule 'students-imap-off' denies",
        f"  alert (after a correct password): {STUDENT_ALERT}",
    ]
    implicit = explain(POLICY, request("eve@x.example", factor=None, method="app-password"))
    text = implicit.explanation_lines()
    assert "  after the last rule: implicit deny" in text
    assert "decision: DENY by implicit deny" in text
    assert text[-2:] == [
        "by factor (no factor given):",
        "  app-password  strength 3  ALLOW           rule 'strong-elsewhere'",
    ]


def test_explanation_to_dict_is_json() -> None:
    data = explain(POLICY, request("admin-carol@example.org", factor=None)).to_dict()
    decoded = json.loads(json.dumps(data))
    assert decoded["policy_configured"] is True
    assert decoded["request"] == {
        "user": "admin-carol@example.org",
        "groups": [],
        "ip": "198.51.100.7",
        "country": "DE",
        "client_cert": False,
        "method": "password",
        "factor": None,
        "listener": PUBLIC,
    }
    assert decoded["decision"] == {
        "kind": "require_factor",
        "rule": "admins-need-cert",
        "reason": "rule 'admins-need-cert' requires one of password+client-cert; "
        "the login proved nothing yet",
        "alert": ADMIN_ALERT,
        "required": ["password+client-cert"],
    }
    assert decoded["rules"][-1] == {
        "index": 7,
        "name": "admins-need-cert",
        "action": "require",
        "matched": True,
        "failed": None,
        "detail": "all conditions hold",
    }
    assert decoded["by_factor"][-1] == {
        "factor": "password+client-cert",
        "strength": 4,
        "decision": {
            "kind": "allow",
            "rule": "admins-need-cert",
            "reason": "password+client-cert (strength 4) satisfies rule 'admins-need-cert'",
            "alert": None,
            "required": [],
        },
    }
    assert json.loads(json.dumps(explain(None, request("x")).to_dict()))["rules"] == []


# -- requests and decisions are data ---------------------------------------------


def test_request_normalizes_and_validates() -> None:
    req = PolicyRequest(
        user="Alice@Example.ORG",
        ip="::ffff:192.0.2.1",
        groups=frozenset({"Staff"}),
        country="de",
    )
    assert (req.user, req.groups, req.country, str(req.address)) == (
        "alice@example.org",
        frozenset({"staff"}),
        "DE",
        "192.0.2.1",
    )
    assert req.ip == "::ffff:192.0.2.1"  # what the caller saw stays as it was
    assert PolicyRequest(user="a", ip="192.0.2.1", country="unknown").country is None
    assert PolicyRequest(user="a", ip="192.0.2.1", country="").country is None
    with pytest.raises(ValueError, match=re.escape("not an IP address: 'example.org'")):
        PolicyRequest(user="a", ip="example.org")
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.user = "mallory"  # type: ignore[misc]


def test_decision_is_frozen_data() -> None:
    decision = evaluate(POLICY, request("admin-carol@example.org"))
    assert decision.to_dict() == {
        "kind": "require_factor",
        "rule": "admins-need-cert",
        "reason": "rule 'admins-need-cert' requires one of password+client-cert; "
        "the login proved password+totp (strength 3)",
        "alert": ADMIN_ALERT,
        "required": ["password+client-cert"],
    }
    assert not decision.allowed
    assert evaluate(None, request("a")).allowed
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.kind = ALLOW  # type: ignore[misc]
    assert isinstance(POLICY, CompiledPolicy)
    with pytest.raises(ValidationError):
        POLICY_CONFIG.rules[0].action = "allow"


@pytest.mark.parametrize(
    ("patterns", "matching", "not_matching"),
    [
        (
            ["bob@example.org"],
            ["bob@example.org", "BOB@example.org"],
            ["bob@example.orgx", "xbob@example.org"],
        ),
        (["*"], ["anyone", "a@b"], []),
        (
            ["*@example.org"],
            ["a@example.org", "@example.org"],
            ["a@example.org.evil", "a@xexample.org"],
        ),
        (["svc-*"], ["svc-backup", "svc-"], ["xsvc-backup", "svc"]),
        (
            ["admin-*@example.org"],
            ["admin-a@example.org", "admin-@example.org"],
            ["admin-a@example.orgx", "xadmin-a@example.org", "admin@example.org"],
        ),
        (["a*b*c"], ["abc", "a-b-c", "abbc"], ["ab", "abcd", "xabc"]),
        (["a.b*"], ["a.b", "a.bc"], ["axb", "axbc"]),
        (["*adm*"], ["adm", "xadmx", "admin@x"], ["ad", "xadx"]),  # "." is not a wildcard
        (["(a|b)*"], ["(a|b)x"], ["a", "b"]),
        (
            ["x@y", "*@students.example.org", "staff-*", "a*z"],
            ["x@y", "s@students.example.org", "staff-1", "abcz"],
            ["y@x", "s@students.example.com", "abc"],
        ),
    ],
)
def test_user_patterns(patterns: list[str], matching: list[str], not_matching: list[str]) -> None:
    rules = [{"name": "users", "action": "allow", "users": patterns}]
    negated = [{"name": "not-users", "action": "allow", "not_users": patterns}]
    compiled = compile_policy(PolicyConfig.model_validate({"rules": rules}))
    compiled_not = compile_policy(PolicyConfig.model_validate({"rules": negated}))
    for user in matching:
        assert evaluate(compiled, request(user)).kind is ALLOW, user
        assert evaluate(compiled_not, request(user)).kind is DENY, user
    for user in not_matching:
        assert evaluate(compiled, request(user)).kind is DENY, user
        assert evaluate(compiled_not, request(user)).kind is ALLOW, user


def test_unknown_factor_names_count_as_nothing() -> None:
    decision = evaluate(POLICY, request("alice@example.org", factor="sms"))
    assert (decision.kind, decision.rule) == (REQUIRE, "example-org-needs-mfa")
    assert decision.reason.endswith("the login proved sms (strength 0)")


# -- properties -----------------------------------------------------------------

_IPS = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.sampled_from(["10.0.9.7", "2001:db8:9::7", "192.168.1.1", "2001:db8::1"]),
)
_NAMES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "alice@example.org",
            "sam@example.org",
            "admin-x@example.org",
            "p@partner.example",
            "monitor@example.org",
            "root@example.org",
        ]
    ),
)
_REQUESTS = st.builds(
    PolicyRequest,
    user=_NAMES,
    ip=_IPS,
    groups=st.frozensets(st.one_of(st.sampled_from(["staff", "students", "x"]), st.text())),
    country=st.one_of(st.none(), st.sampled_from(["DE", "KP", "us", "cn"]), st.text(max_size=3)),
    client_cert=st.booleans(),
    method=st.one_of(st.none(), st.sampled_from(METHODS), st.text(max_size=12)),
    factor=st.one_of(st.none(), st.sampled_from(FACTORS), st.text(max_size=12)),
    listener=st.one_of(st.none(), st.sampled_from([INTERNAL, PUBLIC]), st.text(max_size=12)),
)


@settings(max_examples=300, deadline=None)
@given(req=_REQUESTS, countries_available=st.booleans())
def test_evaluate_never_raises_and_agrees_with_explain(
    req: PolicyRequest, countries_available: bool
) -> None:
    compiled = compile_policy(POLICY_CONFIG, countries_available=countries_available)
    decision = evaluate(compiled, req)
    assert isinstance(decision, Decision)
    assert decision.rule in {*RULE_NAMES, IMPLICIT_DENY}
    assert (decision.kind is REQUIRE) == bool(decision.required)
    assert (decision.alert is None) == (decision.kind is ALLOW)
    explanation = explain(compiled, req)
    assert explanation.decision == decision
    assert json.dumps(explanation.to_dict())
    assert explanation.explanation_lines()


@settings(max_examples=200, deadline=None)
@given(address=st.ip_addresses(v=4), req=_REQUESTS)
def test_v4_mapped_addresses_decide_like_ipv4(address: Any, req: PolicyRequest) -> None:
    plain = dataclasses.replace(req, ip=str(address))
    mapped = dataclasses.replace(req, ip=f"::ffff:{address}")
    assert evaluate(POLICY, plain) == evaluate(POLICY, mapped)


# -- the vocabulary ---------------------------------------------------------------


def test_vocabulary_matches_the_configuration() -> None:
    assert METHODS == config_module.ALL_METHODS
    assert set(FACTORS) == set(config_module.ALL_FACTORS)
    assert set(METHOD_FACTORS) == set(METHODS)
    assert {f for fs in METHOD_FACTORS.values() for f in fs} == set(FACTORS)


def test_strength_table() -> None:
    assert dict(FACTOR_STRENGTH) == {
        "password": 1,
        "oauth": 1,
        "trusted-device": 2,
        "app-password": 3,
        "password+totp": 3,
        "oauth-mfa": 3,
        "client-cert": 3,
        "password+client-cert": 4,
    }
    assert strength(None) == 0
    assert strength("sms") == 0
    # Every factor that is sufficient by default is stronger than a password.
    assert min(strength(f) for f in DEFAULT_SUFFICIENT) >= 2
    assert list(FACTORS) == sorted(FACTORS, key=strength)


def test_country_codes() -> None:
    assert len(COUNTRY_CODES) == 249 + 3
    assert {"GB", "DE", "US", "XK", "SS"} <= COUNTRY_CODES
    assert "UK" not in COUNTRY_CODES


def test_public_names() -> None:
    assert sorted(policy.__all__) == sorted(
        [
            "FACTORS",
            "FACTOR_STRENGTH",
            "IMPLICIT_DENY",
            "METHODS",
            "NO_POLICY",
            "CompiledPolicy",
            "CountryDatabase",
            "CountryDatabaseError",
            "CountryLookup",
            "Decision",
            "DecisionKind",
            "Explanation",
            "Groups",
            "GroupsConfig",
            "NoCountryDatabase",
            "PolicyConfig",
            "PolicyRequest",
            "Rule",
            "RuleTrace",
            "compile_policy",
            "evaluate",
            "explain",
            "parse_groups_file",
            "policy_problems",
            "policy_warnings",
            "strength",
        ]
    )
    for name in policy.__all__:
        assert hasattr(policy, name), name


# -- configuration errors, with key paths -----------------------------------------


def _key(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]"
        else:
            parts.append(item)
    return ".".join(parts)


def problems(raw: dict[str, Any], section: str = "policy") -> list[tuple[str, str, str]]:
    """(key path, error type, message) as check-config would report them."""
    model = PolicyConfig if section == "policy" else GroupsConfig
    try:
        model.model_validate(raw)
    except ValidationError as exc:
        return [
            (_key((section, *err["loc"])), err["type"], err["msg"].removeprefix("Value error, "))
            for err in exc.errors()
        ]
    return []


def _rule(**fields: Any) -> dict[str, Any]:
    return {"rules": [{"name": "r", "action": "deny", **fields}]}


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        (
            _rule(action="allow", require=["password+totp"]),
            "policy.rules[0].require",
            'only with action = "require" (this rule\'s action is "allow")',
        ),
        (
            _rule(require_strength=3),
            "policy.rules[0].require_strength",
            'only with action = "require"',
        ),
        (
            _rule(action="require"),
            "policy.rules[0]",
            "needs require = [factors] and/or require_strength",
        ),
        (
            _rule(action="require", require=["password+sms"]),
            "policy.rules[0].require[0]",
            "unknown factor 'password+sms'",
        ),
        (
            _rule(factors=["password", "totp"]),
            "policy.rules[0].factors[1]",
            "unknown factor 'totp'",
        ),
        (_rule(not_methods=["imap"]), "policy.rules[0].not_methods[0]", "unknown method 'imap'"),
        (
            _rule(networks=["10.0.0.300/8"]),
            "policy.rules[0].networks[0]",
            "'10.0.0.300/8' is not an address or CIDR network",
        ),
        (
            _rule(networks=["10.0.0.0/8", "10.0.0.1/8"]),
            "policy.rules[0].networks[1]",
            "'10.0.0.1/8' has host bits set: did you mean 10.0.0.0/8?",
        ),
        (
            _rule(not_networks=["2001:db8::1/32"]),
            "policy.rules[0].not_networks[0]",
            "did you mean 2001:db8::/32?",
        ),
        (_rule(countries=["UK"]), "policy.rules[0].countries[0]", "the United Kingdom is GB"),
        (
            _rule(not_countries=["DE", "Germany"]),
            "policy.rules[0].not_countries[1]",
            "'Germany' is not an ISO 3166-1 alpha-2 country code",
        ),
        (_rule(users=[]), "policy.rules[0].users", "an empty list never matches"),
        (_rule(users=["bob smith"]), "policy.rules[0].users[0]", "is no account name"),
        (_rule(groups=["staff!"]), "policy.rules[0].groups[0]", "'staff!' is no group name"),
        (
            _rule(listeners=[" 0.0.0.0:993"]),
            "policy.rules[0].listeners[0]",
            "as in [[listen]].address",
        ),
        (_rule(min_strength=5), "policy.rules[0].min_strength", "less than or equal to 4"),
        (_rule(min_strength=0), "policy.rules[0].min_strength", "greater than or equal to 1"),
        (_rule(min_strength="3"), "policy.rules[0].min_strength", "valid integer"),
        (_rule(client_cert="yes"), "policy.rules[0].client_cert", "valid boolean"),
        (_rule(alert="two\r\nlines"), "policy.rules[0].alert", "found '\\r'"),
        (_rule(alert="see [https://x]"), "policy.rules[0].alert", "without ']'"),
        (_rule(alert="Grüße"), "policy.rules[0].alert", "printable ASCII"),
        (_rule(alert="x" * 201), "policy.rules[0].alert", "at most 200 characters"),
        (_rule(alert=""), "policy.rules[0].alert", "must not be empty"),
        (
            _rule(action="allow", alert="hello"),
            "policy.rules[0].alert",
            "an alert goes with a refusal",
        ),
        (_rule(action="permit"), "policy.rules[0].action", "'allow', 'deny' or 'require'"),
        (_rule(name="Implicit Deny"), "policy.rules[0].name", "is reserved"),
        (_rule(netwroks=["10.0.0.0/8"]), "policy.rules[0].netwroks", "Extra inputs"),
        ({"rules": [{"action": "deny"}]}, "policy.rules[0].name", "Field required"),
        ({"geoip": "x.mmdb"}, "policy.geoip", "Extra inputs"),
        ({"default_alert": "a\nb"}, "policy.default_alert", "found '\\n'"),
        (
            {
                "rules": [
                    {"name": "Same", "action": "deny"},
                    {"name": "x", "action": "deny"},
                    {"name": "same", "action": "allow"},
                ]
            },
            "policy.rules",
            "rule name 'same' is used by rules[0] and rules[2]",
        ),
    ],
)
def test_config_errors_name_their_key(raw: dict[str, Any], key: str, message: str) -> None:
    found = problems(raw)
    assert len(found) == 1, found
    assert found[0][0] == key
    assert message in found[0][2]


def test_config_errors_are_all_reported() -> None:
    raw = {
        "rules": [
            {"name": "a", "action": "deny", "networks": ["bad"], "countries": ["ZZ"]},
            {"name": "b", "action": "allow", "methods": ["pop3"], "require": ["x"]},
        ]
    }
    assert [key for key, _, _ in problems(raw)] == [
        "policy.rules[0].networks[0]",
        "policy.rules[0].countries[0]",
        "policy.rules[1].require[0]",
        "policy.rules[1].methods[0]",
    ]


def test_config_normalizes_values() -> None:
    rule = PolicyConfig.model_validate(
        _rule(
            users=["Bob@Example.org"],
            groups=["Staff"],
            countries=["de", "Unknown"],
            networks=["10.1.2.3", "2001:DB8::/32", "::ffff:192.168.0.0/112", "::ffff:0:0/96"],
        )
    ).rules[0]
    assert rule.users == ["bob@example.org"]
    assert rule.groups == ["staff"]
    assert rule.countries == ["DE", "unknown"]
    assert rule.networks == ["10.1.2.3/32", "2001:db8::/32", "192.168.0.0/16", "0.0.0.0/0"]


# -- warnings and cross-checks ----------------------------------------------------


def test_warnings_for_the_example_policy() -> None:
    assert policy_warnings(POLICY_CONFIG, known_groups=GROUPS.names) == []
    assert policy_warnings(POLICY_CONFIG, known_groups={"staff"}) == [
        "policy.rules[2].groups[0]: group 'students' is not defined",
        "policy.rules[8].not_groups[1]: group 'students' is not defined",
    ]


def test_countries_without_database_is_a_warning_not_an_error() -> None:
    config = PolicyConfig.model_validate(
        {"rules": [{"name": "geo", "action": "deny", "not_countries": ["DE"]}]}
    )
    assert policy_warnings(config) == [
        "policy.rules[0] ('geo') has a countries condition but no policy.geoip_database is "
        "configured: it never matches"
    ]
    failed = POLICY_CONFIG.model_copy()
    warnings = policy_warnings(failed, countries_available=False)
    assert len(warnings) == 3
    assert warnings[0] == (
        "policy.rules[0] ('sanctioned-countries') has a countries condition but the country "
        "database /var/lib/imapguard/geo-whois-asn-country.mmdb could not be opened: "
        "it never matches"
    )


def test_warnings_for_unreachable_rules_and_no_rules() -> None:
    config = PolicyConfig.model_validate(
        {
            "rules": [
                {"name": "campus", "action": "allow", "networks": ["10.0.0.0/8"]},
                {"name": "everyone", "action": "require", "require": ["app-password"]},
                {"name": "never", "action": "deny"},
            ]
        }
    )
    assert policy_warnings(config) == [
        "policy.rules[2] ('never') is never reached: policy.rules[1] ('everyone') has no conditions"
    ]
    assert policy_warnings(PolicyConfig()) == [
        "policy: no rules, so every login is refused (implicit deny)"
    ]


def test_listeners_must_be_configured() -> None:
    assert policy_problems(POLICY_CONFIG, listen_addresses=[INTERNAL, PUBLIC]) == []
    assert policy_problems(POLICY_CONFIG, listen_addresses=[PUBLIC]) == [
        (
            "policy.rules[3].listeners[0]",
            f"no [[listen]] has address '{INTERNAL}' (configured: {PUBLIC})",
        ),
        (
            "policy.rules[4].listeners[0]",
            f"no [[listen]] has address '{INTERNAL}' (configured: {PUBLIC})",
        ),
        (
            "policy.rules[8].not_listeners[0]",
            f"no [[listen]] has address '{INTERNAL}' (configured: {PUBLIC})",
        ),
    ]


# -- groups ------------------------------------------------------------------------


def test_groups_file_format() -> None:
    text = """
# exported nightly from the directory
staff: alice@example.org, Bob@Example.org
students: sam@example.org rep@example.org,,  x@example.org   # trailing comment
Staff: carol@example.org

empty-group:
"""
    assert parse_groups_file(text) == {
        "staff": frozenset({"alice@example.org", "bob@example.org", "carol@example.org"}),
        "students": frozenset({"sam@example.org", "rep@example.org", "x@example.org"}),
        "empty-group": frozenset(),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("staff: a\nstudents b\n", "line 2: expected 'group: user1, user2'"),
        ("staff!: a\n", "line 1: 'staff!' is no group name"),
        ("\n\nstaff: *@example.org\n", "line 3: group members are account names, not patterns"),
        ('staff: "a"\n', "line 1: '\"a\"' is no account name"),
    ],
)
def test_groups_file_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_groups_file(text)


def test_groups_from_config_and_file(tmp_path: Path) -> None:
    path = tmp_path / "groups.txt"
    path.write_text("staff: carol@example.org\nlibrary: alice@example.org\n")
    config = GroupsConfig.model_validate(
        {"groups_file": str(path), "Staff": ["Alice@Example.org"], "admins": []}
    )
    groups = Groups.from_config(config)
    assert groups.names == {"staff", "library", "admins"}
    assert groups.groups_of("ALICE@example.org") == {"staff", "library"}
    assert groups.groups_of("carol@example.org") == {"staff"}
    assert groups.groups_of("nobody@example.org") == frozenset()
    assert groups.members("STAFF") == {"alice@example.org", "carol@example.org"}
    assert Groups.from_config(None).groups_of("alice@example.org") == frozenset()


def test_groups_file_problems_are_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(ConfigError) as info:
        Groups.from_config(GroupsConfig(groups_file=str(missing)))
    assert info.value.problems == [("groups.groups_file", f"file not found: {missing}")]
    bad = tmp_path / "bad.txt"
    bad.write_text("staff: a\nno colon here\n")
    with pytest.raises(ConfigError) as info:
        Groups.from_config(GroupsConfig(groups_file=str(bad)))
    assert info.value.problems == [
        ("groups.groups_file", f"{bad}: line 2: expected 'group: user1, user2'")
    ]
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"staff: \xff\n")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        Groups.from_config(GroupsConfig(groups_file=str(binary)))


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        ({"staff": "alice"}, "groups.staff", "valid list"),
        ({"staff": ["alice", "bob smith"]}, "groups.staff[1]", "is no account name"),
        ({"bad name": ["alice"]}, "groups", "'bad name' is no group name"),
        ({"Staff": ["a"], "staff": ["b"]}, "groups", "group 'staff' is listed twice"),
        ({"staff": ["*@example.org"]}, "groups", "group members are account names"),
        ({"groups_file": 3}, "groups.groups_file", "valid string"),
    ],
)
def test_groups_config_errors(raw: dict[str, Any], key: str, message: str) -> None:
    found = problems(raw, section="groups")
    assert len(found) == 1, found
    assert found[0][0] == key
    assert message in found[0][2]
