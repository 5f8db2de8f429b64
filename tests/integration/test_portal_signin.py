"""Signing in to the portal for real: `imapguard serve` with `[portal]` in front
of Dovecot; the password is checked by logging in to Dovecot as the user (the
auth service's only way), then the TOTP code; the portal's guesses count in the
same defense as IMAP logins. Driven over HTTPS with httpx (the browser tests
drive the same pages in Chromium)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.live_imap import assert_login_refused
from tests.integration.portal_web import browser, new_user, portal_gateway
from tests.integration.portal_web import csrf as csrf  # test_portal_invite imports it from here

FAILED = "The user name, password or code is not right."

client = browser  # test_portal_invite imports it from here


@pytest.fixture(scope="module")
def portal_gw(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[tuple[GatewayProcess, int]]:
    extra = """
[defense]
# A block after the third wrong password of one account from one address (the
# default is ten; each guess costs Dovecot's growing per-address penalty).
pair_free = 1
pair_block = 3
"""
    with portal_gateway(tmp_path_factory.mktemp("gw-portal"), dovecot, extra) as running:
        yield running


def sign_in_password(web: httpx.Client, user: str, password: str) -> httpx.Response:
    form = web.get("/signin")
    assert form.status_code == 200
    return web.post("/signin", data={"csrf": csrf(form), "username": user, "password": password})


def test_password_then_code_signs_in(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = portal_gw
    u = new_user(gw, dovecot, "portal")
    user, password, otp = u.name, u.password, u.otp
    with browser(gw, port) as web:
        step = sign_in_password(web, user, password)
        assert step.status_code == 303, step.text
        assert step.headers["location"].endswith("/signin/code")
        assert web.get("/").status_code == 303  # one factor is no session yet
        code_page = web.get("/signin/code")
        done = web.post("/signin/code", data={"csrf": csrf(code_page), "code": otp.now()})
        assert done.status_code == 303, done.text
        home = web.get("/")
        assert home.status_code == 200
        assert user in home.text
    steps = [
        (e["mechanism"], e["result"])
        for e in gw.events("auth")
        if e.get("user") == user and e.get("listener") == "portal"
    ]
    assert steps == [("PORTAL-PASSWORD", "ok"), ("PORTAL-TOTP", "ok")]
    assert password not in gw.audit_path.read_text()


def test_wrong_password_and_wrong_code_look_the_same(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = portal_gw
    u = new_user(gw, dovecot, "portal")
    user, password, otp = u.name, u.password, u.otp
    with browser(gw, port) as web:
        wrong = sign_in_password(web, user, password + "x")
        assert wrong.status_code == 200
        assert FAILED in wrong.text
    with browser(gw, port) as web:
        assert sign_in_password(web, user, password).status_code == 303
        code_page = web.get("/signin/code")
        bad = f"{(int(otp.now()) + 1) % 1_000_000:06d}"
        wrong_code = web.post("/signin/code", data={"csrf": csrf(code_page), "code": bad})
        assert FAILED in wrong_code.text
    compromise = [e for e in gw.events("compromise_signal") if e.get("user") == user]
    assert len(compromise) == 1  # a right password came with a wrong code


def test_portal_guesses_block_imap_logins_from_the_same_source(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    """One defense: password guesses at the portal count against the source as
    IMAP guesses do, so the block they earn refuses an IMAP login from there,
    even with a valid app password."""
    gw, port = portal_gw
    user = new_user(gw, dovecot, "portal").name
    app_password = gw.create_app_password(user, "phone")
    with browser(gw, port) as web:
        for n in range(6):
            sign_in_password(web, user, f"guess-{n}")
            blocks = json.loads(gw.cli("blocks", "list", "--json").stdout)
            if any("127.0.0.1" in b.get("target", "") for b in blocks):
                break
        else:
            raise AssertionError(f"no block on the portal's guesser: {blocks}")
    assert_login_refused(gw, "127.0.0.1", user, app_password, timeout=30)
    refused = [
        e for e in gw.events("auth") if e.get("user") == user and e.get("listener") != "portal"
    ]
    assert refused[-1]["reason"].startswith("blocked"), refused[-1]
