"""`policy.gate`: the policy as the gateway and `policy explain` load and ask it.

A transcript per login: who, from where, with what; the groups and the country
the gate looks up itself; the decision, its rule and the alert the client is
shown after a correct password (deny and require carry one, allow never). And
loading: no `[policy]` allows, a missing country database is a warning that
makes country conditions fail both ways, a broken groups file is an error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from imapguard.errors import ConfigError
from imapguard.policy import (
    IMPLICIT_DENY,
    NO_POLICY,
    DecisionKind,
    GroupsConfig,
    PolicyConfig,
)
from imapguard.policy.gate import PolicyGate, load_policy

ALLOW, DENY, REQUIRE = DecisionKind.ALLOW, DecisionKind.DENY, DecisionKind.REQUIRE_FACTOR
DEFAULT_ALERT = "Access denied by policy"
STUDENT_ALERT = "IMAP is off for students; use webmail"
RULES: list[dict[str, Any]] = [
    {"name": "no-kp", "action": "deny", "countries": ["KP"]},
    {"name": "students-off", "action": "deny", "groups": ["students"], "alert": STUDENT_ALERT},
    {"name": "staff-on-campus", "action": "allow", "groups": ["staff"], "networks": ["10.0.0.0/8"]},
    {"name": "certs", "action": "allow", "client_cert": True, "listeners": ["10.0.0.1:993"]},
    {"name": "mfa-elsewhere", "action": "require", "require": ["password+totp", "app-password"]},
]
GROUPS = {"staff": ["Alice@Example.org"], "students": ["sam@example.org"]}


def country_db(path: Path) -> Path:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country")
    writer.insert_network(IPSet(["175.45.176.0/22"]), {"country": {"iso_code": "KP"}})
    writer.insert_network(IPSet(["81.2.69.0/24"]), {"country": {"iso_code": "GB"}})
    writer.to_db_file(str(path))
    return path


def gate(tmp_path: Path, *, database: bool = True, **policy: Any) -> tuple[PolicyGate, list[str]]:
    geoip = country_db(tmp_path / "country.mmdb") if database else tmp_path / "absent.mmdb"
    config = PolicyConfig.model_validate(
        {"geoip_database": str(geoip), "default_alert": DEFAULT_ALERT, "rules": RULES, **policy}
    )
    return load_policy(config, GroupsConfig.model_validate(GROUPS))


# (user, ip, method, factor, listener, client_cert) -> (kind, rule, alert, required)
TRANSCRIPT: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = [
    # The country comes from the database: this address is in KP.
    (
        ("bob@example.org", "175.45.177.1", "password", "password+totp", None, False),
        (DENY, "no-kp", DEFAULT_ALERT, ()),
    ),
    # IPv4-mapped IPv6 is the IPv4 address, for the country too.
    (
        ("bob@example.org", "::ffff:175.45.177.1", "password", "password+totp", None, False),
        (DENY, "no-kp", DEFAULT_ALERT, ()),
    ),
    # The groups come from [groups], whatever the case of the name.
    (
        ("SAM@example.org", "81.2.69.1", "password", "password+totp", None, False),
        (DENY, "students-off", STUDENT_ALERT, ()),
    ),
    (
        ("alice@example.org", "10.1.2.3", "password", "password", None, False),
        (ALLOW, "staff-on-campus", None, ()),
    ),
    # Staff off campus: the next rules decide.
    (
        ("alice@example.org", "81.2.69.1", "password", "password", None, False),
        (REQUIRE, "mfa-elsewhere", DEFAULT_ALERT, ("password+totp", "app-password")),
    ),
    (
        ("alice@example.org", "81.2.69.1", "password", "password+totp", None, False),
        (ALLOW, "mfa-elsewhere", None, ()),
    ),
    (
        ("bob@example.org", "81.2.69.1", "app-password", "app-password", None, False),
        (ALLOW, "mfa-elsewhere", None, ()),
    ),
    # A verified client certificate on the internal listener.
    (
        ("bob@example.org", "192.0.2.1", "client-cert", "client-cert", "10.0.0.1:993", True),
        (ALLOW, "certs", None, ()),
    ),
    (
        ("bob@example.org", "192.0.2.1", "password", "password", "10.0.0.1:993", False),
        (REQUIRE, "mfa-elsewhere", DEFAULT_ALERT, ("password+totp", "app-password")),
    ),
]


@pytest.mark.parametrize(("login", "expected"), TRANSCRIPT)
def test_decisions(tmp_path: Path, login: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    g, warnings = gate(tmp_path)
    assert warnings == []
    user, ip, method, factor, listener, cert = login
    request = g.request(user, ip, method=method, factor=factor, listener=listener, client_cert=cert)
    decision = g.decide(request)
    assert (decision.kind, decision.rule, decision.alert, decision.required) == expected
    # An allow never carries an alert: there is nothing to tell the client.
    assert decision.allowed == (decision.alert is None) == (decision.kind is ALLOW)
    # `policy explain` walks the same rules to the same decision.
    assert g.explain(request).decision == decision


def test_the_request_carries_what_the_gate_looked_up(tmp_path: Path) -> None:
    g, _ = gate(tmp_path)
    request = g.request("Alice@Example.org", "81.2.69.160", method="password", factor=None)
    assert (request.user, request.groups, request.country) == (
        "alice@example.org",
        frozenset({"staff"}),
        "GB",
    )
    assert (request.method, request.factor, request.listener, request.client_cert) == (
        "password",
        None,
        None,
        False,
    )
    # An address in no network of the database has no country.
    assert g.request("bob@example.org", "192.0.2.1").country is None
    # A user in no group has none.
    assert g.request("nobody@example.org", "192.0.2.1").groups == frozenset()


def test_not_an_address_is_refused(tmp_path: Path) -> None:
    g, _ = gate(tmp_path)
    with pytest.raises(ValueError, match="not an IP address"):
        g.request("bob@example.org", "mail.example.org")


def test_without_a_policy_every_authenticated_login_is_allowed() -> None:
    g, warnings = load_policy(None, None)
    assert warnings == []
    decision = g.decide(g.request("anyone@example.org", "203.0.113.9"))
    assert (decision.kind, decision.rule, decision.alert) == (ALLOW, NO_POLICY, None)


def test_groups_work_without_a_policy() -> None:
    g, _ = load_policy(None, GroupsConfig.model_validate(GROUPS))
    assert g.request("alice@example.org", "192.0.2.1").groups == frozenset({"staff"})


def test_a_missing_country_database_is_a_warning_and_countries_never_match(
    tmp_path: Path,
) -> None:
    g, warnings = gate(tmp_path, database=False)
    assert any(w.startswith("policy.geoip_database: ") for w in warnings)
    assert any("could not be opened" in w and "no-kp" in w for w in warnings)
    assert not g.countries.available
    # The KP address falls through to the next rules instead of the deny...
    request = g.request("bob@example.org", "175.45.177.1", method="password", factor="password")
    assert request.country is None
    decision = g.decide(request)
    assert (decision.kind, decision.rule) == (REQUIRE, "mfa-elsewhere")
    # ... and a not_countries rule does not match either (it fails closed).
    g, _ = gate(
        tmp_path,
        database=False,
        rules=[{"name": "outside-kp", "action": "allow", "not_countries": ["KP"]}],
    )
    decision = g.decide(g.request("bob@example.org", "81.2.69.1"))
    assert (decision.kind, decision.rule, decision.alert) == (DENY, IMPLICIT_DENY, DEFAULT_ALERT)


def test_a_broken_groups_file_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "groups.txt"
    broken.write_text("this is not a groups file\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(None, GroupsConfig.model_validate({"groups_file": str(broken)}))
    assert [key for key, _ in caught.value.problems] == ["groups.groups_file"]
