"""The first access for real: `imapguard user invite` (the CLI, another process)
prints a link; the portal of `imapguard serve` in front of Dovecot takes the
account's password (checked by logging in to Dovecot), has the user enroll TOTP
and only then signs them in; later the user signs in with password and code.
A used link and a link without the password open nothing."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator

import httpx
import pyotp
import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.portal_web import portal_gateway
from tests.integration.test_portal_signin import client, csrf, sign_in_password

FAILED = "The invitation link, user name or password is not right."
_SECRET = re.compile(r'<code class="secret">([A-Z2-7 ]+)</code>')


@pytest.fixture(scope="module")
def portal_gw(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[tuple[GatewayProcess, int]]:
    with portal_gateway(tmp_path_factory.mktemp("gw-invite"), dovecot) as running:
        yield running


def invite(gw: GatewayProcess, dovecot: DovecotServer) -> tuple[str, str, str]:
    """A new Dovecot account with no factor, and the path of its invitation."""
    user = f"invited{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    dovecot.add_user(user, password)
    (doc,) = json.loads(gw.cli("user", "invite", user, "--ttl", "1h", "--json").stdout)
    path = httpx.URL(doc["link"]).path
    assert path.startswith("/invite/")
    return user, password, path


def redeem(web: httpx.Client, path: str, user: str, password: str) -> httpx.Response:
    form = web.get(path)
    assert form.status_code == 200
    return web.post(path, data={"csrf": csrf(form), "username": user, "password": password})


def test_invite_password_enrol_then_sign_in_with_password_and_code(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = portal_gw
    user, password, path = invite(gw, dovecot)
    with client(gw, port) as web:
        # Before the invitation an account with no factor cannot sign in.
        assert sign_in_password(web, user, password).status_code == 200
    with client(gw, port) as web:
        step = redeem(web, path, user, password)
        assert step.status_code == 303, step.text
        assert step.headers["location"] == "/invite/enroll"
        assert web.get("/").status_code == 303  # no full session yet
        page = web.get("/invite/enroll")
        assert "<svg" in page.text
        found = _SECRET.search(page.text)
        assert found is not None, page.text
        otp = pyotp.TOTP(found.group(1).replace(" ", ""))
        done = web.post("/invite/enroll", data={"csrf": csrf(page), "code": otp.now()})
        assert done.status_code == 303, done.text
        home = web.get("/")
        assert home.status_code == 200
        assert user in home.text
        signout = web.post("/signout", data={"csrf": csrf(home)})
        assert signout.status_code == 303
        assert web.get("/").status_code == 303
    with client(gw, port) as web:
        # The factor works for an ordinary sign-in (the next code: the one that
        # confirmed the enrolment is spent).
        assert sign_in_password(web, user, password).status_code == 303
        code_page = web.get("/signin/code")
        code = otp.at(time.time() + 30)
        signed = web.post("/signin/code", data={"csrf": csrf(code_page), "code": code})
        assert signed.status_code == 303, signed.text
        assert web.get("/").status_code == 200
    steps = [
        (e["mechanism"], e["result"])
        for e in gw.events("auth")
        if e.get("user") == user and e.get("listener") == "portal"
    ]
    assert ("PORTAL-INVITE", "ok") in steps
    assert steps[-2:] == [("PORTAL-PASSWORD", "ok"), ("PORTAL-TOTP", "ok")]
    log = gw.audit_path.read_text()
    assert path.rsplit("/", 1)[1] not in log
    assert password not in log
    admin = [e for e in gw.events("admin") if e.get("user") == user]
    assert [(e["action"], e["result"]) for e in admin] == [("invite", "ok")]


def test_used_link_and_link_with_a_wrong_password_open_nothing(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = portal_gw
    user, password, path = invite(gw, dovecot)
    with client(gw, port) as web:
        wrong = redeem(web, path, user, password + "x")
        assert wrong.status_code == 200
        assert FAILED in wrong.text
        assert web.get("/invite/enroll").status_code == 303
    with client(gw, port) as web:
        assert redeem(web, path, user, password).status_code == 303
    with client(gw, port) as web:
        again = redeem(web, path, user, password)
        assert again.status_code == 200
        assert FAILED in again.text
    results = [
        e["result"]
        for e in gw.events("auth")
        if e.get("user") == user and e.get("mechanism") == "PORTAL-INVITE"
    ]
    assert results == ["invalid", "ok", "missing_factor"]


def test_invitation_cannot_replace_a_factor_until_an_admin_resets_it(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    """Password + a live invitation of an account with TOTP: refused, the
    factor untouched. `user invite --reset` (the CLI, another process) removes
    the factor; its link then sets up a new one."""
    gw, port = portal_gw
    user, password, path = invite(gw, dovecot)
    enrolled = json.loads(gw.cli("totp", "enroll", user, "--json").stdout)
    with client(gw, port) as web:
        refused = redeem(web, path, user, password)
        assert refused.status_code == 200
        assert FAILED in refused.text
        assert web.get("/invite/enroll").status_code == 303
    (doc,) = json.loads(gw.cli("user", "invite", user, "--reset", "--json").stdout)
    reset_path = httpx.URL(doc["link"]).path
    with client(gw, port) as web:
        step = redeem(web, reset_path, user, password)
        assert (step.status_code, step.headers["location"]) == (303, "/invite/enroll")
        page = web.get("/invite/enroll")
        found = _SECRET.search(page.text)
        assert found is not None, page.text
        assert found.group(1).replace(" ", "") != enrolled["secret"]
    auth = [
        (e["result"], e["reason"])
        for e in gw.events("auth")
        if e.get("user") == user and e.get("mechanism") == "PORTAL-INVITE"
    ]
    assert auth[0][0] == "missing_factor"
    assert "an invitation for an account with a second factor" in auth[0][1]
    assert auth[1][0] == "ok"
    admin = [(e["action"], e["result"]) for e in gw.events("admin") if e.get("user") == user]
    assert admin == [("invite", "ok"), ("reset_factors", "ok"), ("invite", "ok")]
