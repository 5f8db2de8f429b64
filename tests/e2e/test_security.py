"""The sign-in methods in Chromium: a passkey registered on /security with the
DevTools virtual authenticator signs in after the password; with the
authenticator app removed (a passkey-only account) the user sets up a new one
from the secret shown as text on the page and signs in with its code; recovery
codes are shown once and each signs in once; a stale second-factor check sends a
change to /confirm and back. Every page on the way passes axe-core and the label
check and is photographed.

A stale check is made by ageing the session's last second-factor time in the
portal's state database (what `portal.fresh_factor` seconds of waiting would do,
without the wait): the portal reads the session from the store on every request.
"""

from __future__ import annotations

import re
import sqlite3

import pyotp
from playwright.sync_api import Page, expect

from tests.e2e.browser import VirtualAuthenticator, assert_labelled, axe, shot
from tests.e2e.flows import FAILED, sign_in, sign_in_password
from tests.e2e.portal import PortalServer, User

# Older than any `portal.fresh_factor` (at most 600 s, config/portal.py).
STALE = 3600.0


def check_page(page: Page, name: str) -> None:
    axe(page)
    assert_labelled(page)
    shot(page, name)


def heading(page: Page, text: str) -> None:
    expect(page.get_by_role("heading", level=1)).to_have_text(text)


def go_to(page: Page, link: str) -> None:
    page.get_by_role("navigation", name="Portal").get_by_role("link", name=link).click()


def sign_out(page: Page) -> None:
    """The navigation's Sign out (the account page has more buttons of that name)."""
    page.get_by_role("navigation", name="Portal").get_by_role(
        "button", name="Sign out", exact=True
    ).click()
    expect(page).to_have_url(re.compile(r"/signin$"))


def notice(page: Page, text: str) -> None:
    expect(page.get_by_role("main").get_by_role("status")).to_have_text(text)


def steps(portal: PortalServer, user: User) -> list[tuple[str, str]]:
    return [
        (e["action"], e["result"]) for e in portal.gw.events("portal") if e.get("user") == user.name
    ]


def factors(portal: PortalServer, user: User) -> list[str]:
    """The second factor each check of `user` (sign-in or confirm) named."""
    return [
        str(e.get("reason"))
        for e in portal.gw.events("portal")
        if e.get("user") == user.name and e.get("action") in ("second_factor", "confirm")
    ]


def age_factor_check(portal: PortalServer, user: User) -> None:
    """Make every session of `user` look as if its second factor was proved
    `STALE` seconds earlier than it was."""
    with sqlite3.connect(portal.gw.base / "state.db", timeout=10) as db:
        aged = db.execute(
            "UPDATE portal_sessions SET second_factor_at = second_factor_at - ? WHERE user = ?",
            (STALE, user.name),
        ).rowcount
    db.close()
    assert aged >= 1, f"{user.name} has no session to age"


def test_a_passkey_registered_on_the_page_signs_in_and_a_passkey_only_account_sets_up_totp(
    page: Page, portal: PortalServer
) -> None:
    user = portal.user_with_totp("noether")
    page.goto("/signin")
    authenticator = VirtualAuthenticator.add(page)
    sign_in(page, user)

    go_to(page, "Sign-in methods")
    heading(page, "Sign-in methods")
    expect(page.get_by_role("main")).to_contain_text("No passkey yet.")
    check_page(page, "security-methods")

    page.get_by_role("link", name="Add a passkey").click()
    heading(page, "Add a passkey")
    check_page(page, "security-passkey-new")
    page.get_by_label("Name (to tell your passkeys apart)", exact=True).fill("Laptop")
    page.get_by_role("button", name="Create the passkey").click()
    expect(page).to_have_url(re.compile(r"/security\?done=passkey$"))
    notice(page, "Your passkey was added.")
    passkeys = page.get_by_role("table", name="Your passkeys")
    expect(passkeys.get_by_role("row", name=re.compile(r"^Laptop"))).to_have_count(1)
    (held,) = authenticator.credentials()
    assert (held["rpId"], held["isResidentCredential"]) == ("localhost", True)
    check_page(page, "security-passkey-added")

    # Password, then the passkey instead of a code.
    sign_out(page)
    sign_in_password(page, user)
    heading(page, "Enter your code")
    page.get_by_role("button", name="Use a passkey").click()
    heading(page, "Your account")
    assert authenticator.credentials()[0]["signCount"] > held["signCount"]

    # Without the app, the passkey is the only second factor.
    go_to(page, "Sign-in methods")
    page.get_by_role("button", name="Remove the authenticator app").click()
    notice(page, "The authenticator app was removed.")
    expect(page.get_by_role("main")).to_contain_text("Not set up.")
    sign_out(page)
    sign_in_password(page, user)
    heading(page, "Use your passkey")
    expect(page.get_by_label("Code", exact=True)).to_have_count(0)
    check_page(page, "security-signin-passkey")
    page.get_by_role("button", name="Use a passkey").click()
    heading(page, "Your account")

    # A passkey-only account sets up an authenticator app; the change needs a
    # fresh check, made with the passkey on the confirm page.
    age_factor_check(portal, user)
    go_to(page, "Sign-in methods")
    page.get_by_role("link", name="Set up an authenticator app").click()
    expect(page).to_have_url(re.compile(r"/confirm\?next=/security/totp$"))
    heading(page, "Confirm it is you")
    expect(page.get_by_label("Code", exact=True)).to_have_count(0)  # no app to ask
    check_page(page, "security-confirm-passkey")
    page.get_by_role("button", name="Use a passkey").click()
    heading(page, "Set up an authenticator app")
    check_page(page, "security-totp")
    secret = page.locator("code.secret").inner_text()
    app = User(user.name, user.password, pyotp.TOTP(re.sub(r"\s", "", secret)))
    page.get_by_label("Code from the app", exact=True).fill(app.code())
    page.get_by_role("button", name="Confirm").click()
    notice(page, "Your authenticator app is set up.")
    sign_out(page)
    sign_in(page, app)  # password, then the new app's code

    assert secret not in portal.gw.audit_path.read_text()
    assert steps(portal, user) == [
        ("sign_in", "ok"),
        ("second_factor", "ok"),
        ("passkey_add", "ok"),
        ("sign_out", "ok"),
        ("sign_in", "ok"),
        ("second_factor", "ok"),
        ("totp_remove", "ok"),
        ("sign_out", "ok"),
        ("sign_in", "ok"),
        ("second_factor", "ok"),
        ("confirm", "ok"),
        ("totp_enrol", "ok"),
        ("sign_out", "ok"),
        ("sign_in", "ok"),
        ("second_factor", "ok"),
    ]
    assert factors(portal, user) == ["totp", "passkey", "passkey", "passkey", "totp"]


def test_recovery_codes_are_shown_once_and_each_signs_in_once(
    page: Page, portal: PortalServer
) -> None:
    user = portal.user_with_totp("katherine")
    sign_in(page, user)
    go_to(page, "Sign-in methods")
    expect(page.get_by_role("main")).to_contain_text("0 unused recovery codes left.")
    page.get_by_role("link", name="Make recovery codes").click()
    heading(page, "Recovery codes")
    check_page(page, "security-recovery")
    page.get_by_role("button", name="Make a new set of codes").click()
    heading(page, "Your new recovery codes")
    codes = page.locator("ol.codes code").all_inner_texts()
    assert len(codes) == len(set(codes)) >= 8, codes
    check_page(page, "security-recovery-codes")

    # Shown once: no later page holds one.
    go_to(page, "Sign-in methods")
    expect(page.get_by_role("main")).to_contain_text(f"{len(codes)} unused recovery codes left.")
    page.get_by_role("link", name="Make a new set").click()
    heading(page, "Recovery codes")
    assert not [c for c in codes if c in page.content()]

    sign_out(page)
    sign_in_password(page, user)
    check_page(page, "security-signin-recovery")
    page.get_by_label("Recovery code", exact=True).fill(codes[0])
    page.get_by_role("button", name="Sign in with a recovery code").click()
    heading(page, "Your account")
    go_to(page, "Sign-in methods")
    expect(page.get_by_role("main")).to_contain_text(
        f"{len(codes) - 1} unused recovery codes left."
    )

    # Each code once.
    sign_out(page)
    sign_in_password(page, user)
    page.get_by_label("Recovery code", exact=True).fill(codes[0])
    page.get_by_role("button", name="Sign in with a recovery code").click()
    expect(page.get_by_role("alert")).to_have_text(FAILED)
    expect(page).to_have_url(re.compile(r"/signin/code$"))
    page.get_by_label("Recovery code", exact=True).fill(codes[1])
    page.get_by_role("button", name="Sign in with a recovery code").click()
    heading(page, "Your account")

    audit = portal.gw.audit_path.read_text()
    assert not [c for c in codes if c in audit]
    assert steps(portal, user) == [
        ("sign_in", "ok"),
        ("second_factor", "ok"),
        ("recovery_codes", "ok"),
        ("sign_out", "ok"),
        ("sign_in", "ok"),
        ("second_factor", "ok"),
        ("sign_out", "ok"),
        ("sign_in", "ok"),
        ("second_factor", "failed"),
        ("second_factor", "ok"),
    ]
    assert factors(portal, user) == ["totp", "recovery", "recovery", "recovery"]


def test_a_stale_factor_check_sends_a_change_to_confirm_and_back(
    page: Page, portal: PortalServer
) -> None:
    user = portal.user_with_totp("dorothy")
    sign_in(page, user)
    go_to(page, "Sign-in methods")
    age_factor_check(portal, user)
    page.get_by_role("link", name="Replace it (new phone or app)").click()
    expect(page).to_have_url(re.compile(r"/confirm\?next=/security/totp$"))
    heading(page, "Confirm it is you")
    check_page(page, "security-confirm")
    page.get_by_label("Code", exact=True).fill(user.wrong_code())
    page.get_by_role("button", name="Confirm", exact=True).click()
    expect(page.get_by_role("alert")).to_have_text("That did not work. Try again.")
    heading(page, "Confirm it is you")
    page.get_by_label("Code", exact=True).fill(user.code())
    page.get_by_role("button", name="Confirm", exact=True).click()
    expect(page).to_have_url(re.compile(r"/security/totp$"))
    heading(page, "Replace your authenticator app")
    assert steps(portal, user)[-2:] == [("confirm", "failed"), ("confirm", "ok")]
    assert factors(portal, user) == ["totp", "totp", "totp"]
