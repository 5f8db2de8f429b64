"""Sign-in methods for real: `imapguard serve` with `[portal]` in front of
Dovecot. A user signs in with password + TOTP, registers a passkey through the
pages (a software authenticator stands in for the browser's, tests/softkey.py),
then signs in with password + passkey: the password checked by logging in to
Dovecot, the passkey by the auth service, each an `auth` event of the real
audit log. Then the same in headless Chromium with its virtual authenticator,
through the page's own script."""

from __future__ import annotations

import json
import re
import secrets
import ssl
from collections.abc import Iterator

import httpx
import pyotp
import pytest
from playwright.sync_api import sync_playwright

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.portal_web import portal_gateway
from tests.softkey import SoftKey

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def portal_gw(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[tuple[GatewayProcess, int]]:
    with portal_gateway(
        tmp_path_factory.mktemp("gw-portal-factors"),
        dovecot,
        # Every test signs in from 127.0.0.1; the limit's own tests are elsewhere.
        "max_sign_ins_per_minute = 100\n",
    ) as running:
        yield running


def client(gw: GatewayProcess, port: int) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(gw.ca_cert))
    return httpx.Client(
        base_url=f"https://localhost:{port}",
        verify=ctx,
        timeout=30.0,
        headers={"Origin": f"https://localhost:{port}"},
    )


def csrf(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def password_step(web: httpx.Client, user: str, password: str) -> None:
    form = web.get("/signin")
    step = web.post("/signin", data={"csrf": csrf(form), "username": user, "password": password})
    assert step.status_code == 303, step.text
    assert step.headers["location"].endswith("/signin/code")


def test_enrol_a_passkey_in_the_pages_then_sign_in_with_password_and_passkey(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = portal_gw
    user = f"factors{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    dovecot.add_user(user, password)
    otp = pyotp.TOTP(json.loads(gw.cli("totp", "enroll", user, "--json").stdout)["secret"])
    key = SoftKey(rp_id="localhost", origin=f"https://localhost:{port}")

    with client(gw, port) as web:
        password_step(web, user, password)
        code_page = web.get("/signin/code")
        done = web.post("/signin/code", data={"csrf": csrf(code_page), "code": otp.now()})
        assert done.status_code == 303, done.text
        # Just signed in: the second factor is fresh, the page opens.
        page = web.get("/security/passkeys/new")
        assert page.status_code == 200, page.text
        options = web.post("/security/passkeys/options", headers={"X-CSRF-Token": csrf(page)})
        assert options.status_code == 200, options.text
        assert json.loads(options.text)["rp"]["id"] == "localhost"
        credential = key.register(options.text).decode()
        added = web.post(
            "/security/passkeys",
            data={"csrf": csrf(page), "name": "Soft key", "credential": credential},
        )
        assert added.status_code == 303, added.text
        overview = web.get("/security")
        assert "Soft key" in overview.text
        # With the passkey besides, the authenticator app can go: the passkey
        # alone is then the account's second factor.
        removed = web.post("/security/totp/remove", data={"csrf": csrf(overview)})
        assert removed.headers["location"] == "/security?done=totp_removed"
        assert "Not set up." in web.get("/security").text

    with client(gw, port) as web:
        password_step(web, user, password)
        code_page = web.get("/signin/code")
        assert 'data-webauthn="get"' in code_page.text
        assert 'name="code"' not in code_page.text  # no TOTP any more
        options = web.post("/signin/passkey-options", headers={"X-CSRF-Token": csrf(code_page)})
        assert options.status_code == 200, options.text
        allowed = [c["id"] for c in json.loads(options.text)["allowCredentials"]]
        assert len(allowed) == 1
        answer = key.sign(options.text).decode()
        done = web.post(
            "/signin/code",
            data={"csrf": csrf(code_page), "method": "passkey", "credential": answer},
        )
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/"
        home = web.get("/")
        assert home.status_code == 200
        assert user in home.text

    # The same assertion again, against a new challenge (a replay), signs nobody in.
    with client(gw, port) as web:
        password_step(web, user, password)
        code_page = web.get("/signin/code")
        web.post("/signin/passkey-options", headers={"X-CSRF-Token": csrf(code_page)})
        replay = web.post(
            "/signin/code",
            data={"csrf": csrf(code_page), "method": "passkey", "credential": answer},
        )
        assert replay.status_code == 200
        assert web.get("/").status_code == 303

    steps = [
        (e["mechanism"], e["result"])
        for e in gw.events("auth")
        if e.get("user") == user and e.get("listener") == "portal"
    ]
    assert steps == [
        ("PORTAL-PASSWORD", "ok"),
        ("PORTAL-TOTP", "ok"),
        ("PORTAL-PASSWORD", "ok"),
        ("PORTAL-PASSKEY", "ok"),
        ("PORTAL-PASSWORD", "ok"),
        ("PORTAL-PASSKEY", "missing_factor"),  # right password, wrong factor
    ]
    actions = [(e["action"], e["result"]) for e in gw.events("portal") if e.get("user") == user]
    assert ("passkey_add", "ok") in actions
    audit = gw.audit_path.read_text()
    assert password not in audit
    assert credential not in audit


def test_a_stolen_session_ends_when_the_owner_replaces_the_authenticator_app(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    """A thief holds a full portal session of the account (password and a
    recovery code, as good as a stolen cookie); the owner replaces the
    authenticator app in their own session: the thief's session ends at once,
    the owner's stays, and the audit log says what ended and why."""
    gw, port = portal_gw
    user = f"stolen{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    dovecot.add_user(user, password)
    otp = pyotp.TOTP(json.loads(gw.cli("totp", "enroll", user, "--json").stdout)["secret"])
    with client(gw, port) as owner, client(gw, port) as thief:
        password_step(owner, user, password)
        code_page = owner.get("/signin/code")
        done = owner.post("/signin/code", data={"csrf": csrf(code_page), "code": otp.now()})
        assert done.status_code == 303, done.text
        page = owner.get("/security/recovery")
        made = owner.post("/security/recovery", data={"csrf": csrf(page)})
        codes = re.findall(r"<code>([0-9A-Z-]{11})</code>", made.text)
        assert codes, made.text

        password_step(thief, user, password)
        code_page = thief.get("/signin/code")
        stolen = thief.post(
            "/signin/code",
            data={"csrf": csrf(code_page), "method": "recovery", "recovery": codes[0]},
        )
        assert stolen.headers["location"] == "/", stolen.text
        assert thief.get("/").status_code == 200

        page = owner.get("/security/totp")
        secret = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', page.text)
        assert secret, page.text
        pending = re.search(r'name="pending" value="([^"]+)"', page.text)
        assert pending, page.text
        new_code = pyotp.TOTP(secret.group(1).replace(" ", "")).now()
        replaced = owner.post(
            "/security/totp",
            data={"csrf": csrf(page), "pending": pending.group(1), "code": new_code},
        )
        assert replaced.headers["location"] == "/security?done=totp", replaced.text

        assert thief.get("/").headers["location"] == "/signin"
        assert owner.get("/").status_code == 200
    ended = [
        (e["result"], e.get("reason"))
        for e in gw.events("portal")
        if e.get("user") == user and e["action"] == "session_revoke_others"
    ]
    assert ended == [("ok", "1 ended: totp_replaced")]


def test_the_pages_script_registers_and_uses_a_passkey_in_chromium(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    """static/webauthn.js in a real browser, with the CDP virtual authenticator:
    register a passkey on the page, sign out, sign in with password + passkey.
    No console error, no CSP violation."""
    gw, port = portal_gw
    user = f"browser{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    dovecot.add_user(user, password)
    otp = pyotp.TOTP(json.loads(gw.cli("totp", "enroll", user, "--json").stdout)["secret"])
    base = f"https://localhost:{port}"
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
        )
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            page.on(
                "console",
                lambda m: (
                    problems.append(f"{m.text} {m.location}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(str(e)))
            cdp = context.new_cdp_session(page)
            cdp.send("WebAuthn.enable", {"enableUI": False})
            cdp.send(
                "WebAuthn.addVirtualAuthenticator",
                {
                    "options": {
                        "protocol": "ctap2",
                        "transport": "internal",
                        "hasResidentKey": True,
                        "hasUserVerification": True,
                        "isUserVerified": True,
                        "automaticPresenceSimulation": True,
                    }
                },
            )
            page.goto(f"{base}/signin")
            page.get_by_label("User name").fill(user)
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Continue").click()
            page.get_by_label("Code").fill(otp.now())
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{base}/")
            page.goto(f"{base}/security/passkeys/new")
            page.get_by_label("Name (to tell your passkeys apart)").fill("Virtual key")
            page.get_by_role("button", name="Create the passkey").click()
            page.wait_for_url(f"{base}/security?done=passkey")
            assert "Virtual key" in page.content()
            page.get_by_role("button", name="Sign out").click()
            page.wait_for_url(f"{base}/signin")
            page.get_by_label("User name").fill(user)
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Continue").click()
            page.get_by_role("button", name="Use a passkey").click()
            page.wait_for_url(f"{base}/")
            assert user in page.content()
        finally:
            browser.close()
    # (The browser's own /favicon.ico request is not the page's: base.html links none.)
    assert [p for p in problems if "/favicon.ico" not in p] == []
    steps = [
        (e["mechanism"], e["result"])
        for e in gw.events("auth")
        if e.get("user") == user and e.get("listener") == "portal"
    ]
    assert steps[-1] == ("PORTAL-PASSKEY", "ok")
