"""The report "this wasn't me" in Chromium: a device password (the admin's CLI) logs in
through the gateway from an address of its own and idles; its owner finds that
sign-in on the recent sign-ins page and reports it. The IDLE session ends with
a BYE within 5 seconds, the password works from nowhere, the address is blocked
(even a fresh password is refused from it), and the page says all that.

The block falls on the reported address only (127.0.210.30), never on the
browser's 127.0.0.1, so the shared portal serves the other tests as before.

Sources (tests/e2e/portal.py source_address): 30-39.
"""

from __future__ import annotations

import json
import time

from playwright.sync_api import Page, expect

from tests.e2e.browser import check_page
from tests.e2e.flows import reload_until_true, sign_in
from tests.e2e.mail import LOGIN_DENIED, curl_login, ended, idle
from tests.e2e.portal import PortalServer, source_address
from tests.integration.conftest import close_imap

WITHIN = 5.0


def test_reporting_a_sign_in_ends_its_session_revokes_its_password_and_blocks_its_source(
    page: Page, portal: PortalServer
) -> None:
    user = portal.user_with_totp("june")
    thief = source_address(30)
    stolen = portal.app_password(user, "tablet")
    idler = idle(portal, thief, user.name, stolen)
    try:
        sign_in(page, user)
        page.get_by_role("navigation", name="Portal").get_by_role(
            "link", name="Recent sign-ins"
        ).click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Recent sign-ins")
        row = page.locator("tbody tr", has_text=thief)
        # The history is written behind each login: the IMAP one and the
        # portal's two steps (password, code) make three rows.
        rows = page.locator("tbody tr")
        reload_until_true(page, lambda: rows.count() == 3, "three sign-ins")
        expect(row).to_contain_text("Signed in")
        # The device password by its label, not its id; a mail app, not "PLAIN".
        expect(row).to_contain_text("device password “tablet”")
        expect(row).to_contain_text("Mail app (IMAP")
        expect(row).not_to_contain_text("app-password")
        portal_rows = page.locator("tbody tr", has_text="Web portal (browser: Chrome ")
        expect(portal_rows).to_have_count(2)  # the password and the code step
        expect(portal_rows.filter(has_text="account password")).to_have_count(1)
        expect(portal_rows.filter(has_text="one-time code")).to_have_count(1)
        expect(rows.filter(has_text="unknown")).to_have_count(0)
        reported = page.locator(f"#{row.get_attribute('id')}")
        check_page(page, "sign-ins", mask_text=[r"(?<=Chrome )[0-9]+"])

        row.get_by_role("button", name="This wasn't me: ").click()
        reported_at = time.monotonic()
        expect(page.get_by_role("heading", level=1)).to_have_text("Reported: it was not you")
        main = page.get_by_role("main")
        expect(main).to_contain_text(
            "The device password “tablet” it used no longer works, and its mail sessions are ended."
        )
        expect(main).to_contain_text(f"The address {thief} is blocked.")
        check_page(page, "sign-ins-reported")
        lines, after = ended(idler, reported_at, WITHIN)
    finally:
        close_imap(idler)
    assert after < WITHIN, (after, lines)
    assert lines, "the session ended without a word"
    assert lines[-1].startswith(b"* BYE"), lines

    status, refusal = curl_login(portal, source_address(31), user.name, stolen)
    assert status == LOGIN_DENIED, refusal  # revoked: from anywhere
    blocks = json.loads(portal.gw.cli("blocks", "list", "--json").stdout)
    assert f"source:{thief}" in {b.get("target") for b in blocks}, blocks
    assert "source:127.0.0.1" not in {b.get("target") for b in blocks}, blocks
    fresh = portal.app_password(user, "tablet again")
    status, refusal = curl_login(portal, thief, user.name, fresh)
    assert status == LOGIN_DENIED, refusal  # the address is blocked
    page.goto("/sign-ins")
    expect(reported).to_contain_text("reported as not you")
    (event,) = [e for e in portal.gw.events("disowned") if e.get("user") == "june"]
    # KIND:VALUE separated by spaces (docs/audit-events.md): for june, and for
    # everyone (no other account logged in from there).
    assert set(event["blocked"].split()) == {f"account-source:{thief}|june", f"source:{thief}"}
    assert event["revoked"].startswith("app-password:")
