"""Signing in to the portal in Chromium: password, then the TOTP code the test
computes, the account page, sign-out; a wrong code gets the one failure message.
Every page on the way passes axe-core, has a visible label on each field and is
photographed for docs/screenshots/."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.e2e.browser import check_page
from tests.e2e.flows import FAILED, sign_in, sign_in_password, sign_out
from tests.e2e.portal import PortalServer


def test_password_and_code_sign_in_show_the_account_and_sign_out_ends_it(
    page: Page, portal: PortalServer
) -> None:
    user = portal.user_with_totp("ada")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin$"))  # no session: the sign-in page
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    check_page(page, "signin")

    sign_in_password(page, user)
    expect(page.get_by_role("heading", level=1)).to_have_text("Enter your code")
    check_page(page, "signin-code")

    page.get_by_label("Code", exact=True).fill(user.code())
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account")
    expect(page.get_by_role("main")).to_contain_text("You are signed in as ada.")
    nav = page.get_by_role("navigation", name="Portal")
    for link in ("Your account", "Sign-in methods", "Device passwords", "Devices"):
        expect(nav.get_by_role("link", name=link)).to_be_visible()
    expect(nav.get_by_role("link", name="Admin")).to_have_count(0)  # ada is no admin
    (session,) = [c for c in page.context.cookies() if c["name"] == "__Host-imapguard"]
    assert (session["secure"], session["httpOnly"], session["sameSite"]) == (True, True, "Strict")
    check_page(page, "account")

    sign_out(page)
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin$"))  # the session is gone
    steps = [
        (e["action"], e["result"]) for e in portal.gw.events("portal") if e.get("user") == "ada"
    ]
    assert steps == [("sign_in", "ok"), ("second_factor", "ok"), ("sign_out", "ok")]
    assert user.password not in portal.gw.audit_path.read_text()


def test_a_wrong_code_gets_the_one_failure_message_and_no_session(
    page: Page, portal: PortalServer
) -> None:
    user = portal.user_with_totp("ben")
    sign_in_password(page, user)
    page.get_by_label("Code", exact=True).fill(user.wrong_code())
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text(FAILED)
    expect(page.get_by_role("heading", level=1)).to_have_text("Enter your code")
    check_page(page, "signin-code-failed")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin/code$"))  # still one factor only

    page.get_by_label("Code", exact=True).fill(user.code())
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account")
    steps = [
        (e["action"], e["result"]) for e in portal.gw.events("portal") if e.get("user") == "ben"
    ]
    assert steps == [("sign_in", "ok"), ("second_factor", "failed"), ("second_factor", "ok")]


def test_an_admin_and_a_user_signed_in_side_by_side_see_their_own_navigation(
    page: Page, new_page: Callable[..., Page], portal: PortalServer
) -> None:
    admin, user = portal.new_admin(), portal.user_with_totp()
    sign_in(page, admin)
    beside = new_page()
    sign_in(beside, user)
    for who, tab, admin_links in ((admin, page, 1), (user, beside, 0)):
        tab.reload()
        expect(tab.get_by_role("main")).to_contain_text(f"You are signed in as {who.name}.")
        nav = tab.get_by_role("navigation", name="Portal")
        expect(nav.get_by_role("link", name="Admin")).to_have_count(admin_links)
    sign_out(beside)
    page.reload()  # the other profile's sign-out ended only its own session
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account")
