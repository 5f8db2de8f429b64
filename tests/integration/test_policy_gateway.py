"""The zero-trust policy through the gateway to a real Dovecot (master mode): a deny
after correct credentials carries the configured [ALERT] text (and only then: wrong
credentials get the uniform failure), a rule requiring a stronger factor refuses a
weaker one, allowed logins relay, and `policy explain` agrees with the gateway.

Source addresses: 127.0.1.190-199.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import AUTH_FAILED, RawClient, running_gateway

pytestmark = pytest.mark.dovecot

ALERT = "IMAP is switched off for students; use https://webmail.example.org"

POLICY = f"""
[groups]
students = ["carol"]

[[policy.rules]]
name = "students-imap-off"
action = "deny"
groups = ["students"]
alert = "{ALERT}"

[[policy.rules]]
name = "strong-factors"
action = "require"
require_strength = 3
"""


@pytest.fixture(scope="module")
def gw_policy(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    with running_gateway(
        tmp_path_factory.mktemp("gw-policy"),
        dovecot,
        login="master",
        methods=("app-password", "password+totp"),
        edit=lambda text: text + POLICY,
    ) as gw:
        yield gw


def _login(gw: GatewayProcess, n: int, user: str, password: str) -> bytes:
    with RawClient(gw.implicit_port, source_address(n), tls=gw.client_ssl()) as c:
        c.line()
        return c.command(b"a", f'LOGIN {user} "{password}"'.encode())[-1]


def _last_auth(gw: GatewayProcess, n: int) -> dict[str, object]:
    return [e for e in gw.events("auth") if e.get("src") == source_address(n)][-1]


def test_deny_with_alert_only_after_correct_credentials(gw_policy: GatewayProcess) -> None:
    password = gw_policy.create_app_password("carol", "phone")
    assert _login(gw_policy, 190, "carol", password) == f"a NO [ALERT] {ALERT}".encode()
    event = _last_auth(gw_policy, 190)
    assert (event["result"], event["rule"]) == ("denied", "students-imap-off")
    # A guesser learns nothing: wrong credentials get the uniform answer.
    assert _login(gw_policy, 191, "carol", "wrong-" + password) == b"a " + AUTH_FAILED


def test_require_stronger_factor(gw_policy: GatewayProcess, dovecot: DovecotServer) -> None:
    # bob has a factor (an app password), so his password alone from a new device is
    # refused anyway; approve the device so that only the policy stands in the way.
    password = gw_policy.create_app_password("bob", "laptop")
    assert _login(gw_policy, 192, "bob", password).startswith(b"a OK")  # strength 3
    assert _login(gw_policy, 193, "bob", dovecot.users["bob"]) == b"a " + AUTH_FAILED
    (device,) = json.loads(gw_policy.cli("device", "list", "bob", "--json").stdout)
    gw_policy.cli("device", "approve", "bob", device["id"])
    assert _login(gw_policy, 193, "bob", dovecot.users["bob"]) == b"a " + AUTH_FAILED
    event = _last_auth(gw_policy, 193)
    assert (event["result"], event["factor"], event["rule"]) == (
        "missing_factor",
        "trusted-device",
        "strong-factors",
    )


def test_policy_explain_agrees(gw_policy: GatewayProcess) -> None:
    out = gw_policy.cli(
        "policy", "explain", "--user", "Carol", "--ip", "192.0.2.1", "--json"
    ).stdout
    decision = json.loads(out)["decision"]
    assert (decision["kind"], decision["rule"], decision["alert"]) == (
        "deny",
        "students-imap-off",
        ALERT,
    )
    out = gw_policy.cli(
        "policy",
        "explain",
        "--user",
        "bob",
        "--ip",
        "192.0.2.1",
        "--factor",
        "trusted-device",
        "--json",
    ).stdout
    assert json.loads(out)["decision"]["kind"] == "require_factor"
