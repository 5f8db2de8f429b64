"""First access in Chromium: the admin's `imapguard user invite U --json` (the
CLI, another process) prints a link; its page takes the account's password, the
next one shows a QR code and the key as text, the test computes the code from
that key (as an authenticator app would) and the user is signed in. After
signing out, the user signs in with password and code. Every page on the way
passes axe-core and the label check and is photographed (the QR code and the
key masked: they differ on every run)."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pyotp
from playwright.sync_api import Page, expect

from tests.e2e.browser import check_page
from tests.e2e.flows import sign_in, sign_out
from tests.e2e.portal import PortalServer


def test_an_invitation_enrols_totp_in_the_page_then_password_and_code_sign_in(
    page: Page, portal: PortalServer
) -> None:
    user = portal.new_user("lin")  # a mail account with no second factor yet
    (invited,) = json.loads(
        portal.gw.cli("user", "invite", user.name, "--ttl", "1h", "--json").stdout
    )
    link = urlsplit(invited["link"])
    assert f"{link.scheme}://{link.netloc}" == portal.url  # the link names the portal
    token = link.path.rsplit("/", 1)[1]

    page.goto(link.path)
    expect(page.get_by_role("heading", level=1)).to_have_text("Set up your account")
    check_page(page, "invite")
    page.get_by_label("User name", exact=True).fill(user.name)
    page.get_by_label("Password", exact=True).fill(user.password)
    page.get_by_role("button", name="Continue").click()

    expect(page).to_have_url(re.compile(r"/invite/enroll$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Set up an authenticator app")
    qr = page.get_by_role("figure", name="QR code for lin")
    expect(qr.locator("svg")).to_be_visible()
    key = page.locator("code.secret")
    user.totp = pyotp.TOTP(key.inner_text().replace(" ", ""))
    check_page(page, "invite-enroll", mask=[qr.locator("svg"), key])
    # The password alone opens no account page: a user who leaves for the start
    # page is sent back to the enrolment, with the same key (not to a code page
    # asking for a code of a factor not set up yet).
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/invite/enroll$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Set up an authenticator app")
    assert page.locator("code.secret").inner_text().replace(" ", "") == user.totp.secret
    page.get_by_label("Code from the app", exact=True).fill(user.code())
    page.get_by_role("button", name="Confirm", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account")
    expect(page.get_by_role("main")).to_contain_text("You are signed in as lin.")
    expect(page.get_by_role("main")).to_contain_text("One-time codes (authenticator app): set up.")

    sign_out(page)
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin$"))
    sign_in(page, user)  # password, then a code of a later step than the enrolment's

    auth = [
        (e["mechanism"], e["result"])
        for e in portal.gw.events("auth")
        if e.get("user") == user.name and e.get("listener") == "portal"
    ]
    assert auth[0] == ("PORTAL-INVITE", "ok")
    assert auth[-2:] == [("PORTAL-PASSWORD", "ok"), ("PORTAL-TOTP", "ok")]
    log = portal.gw.audit_path.read_text() + portal.gw.log_text()
    assert token not in log
    assert user.password not in log
    assert user.totp.secret not in log
