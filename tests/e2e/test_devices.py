"""A new device in Chromium: a mail app (curl) logs in with the account password
alone from an address not seen before; the gateway refuses it and the devices
page shows it as waiting ("was this you?"); approved there, the same device
logs in from that address, and the page lists it as known ([auth]
new_device_approval, on by default).

Sources (tests/e2e/portal.py source_address): 20-29.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.browser import check_page
from tests.e2e.flows import sign_in
from tests.e2e.mail import LOGGED_IN, LOGIN_DENIED, curl_login
from tests.e2e.portal import PortalServer, source_address


def test_a_password_only_login_from_a_new_device_waits_until_approved_in_the_page(
    page: Page, portal: PortalServer
) -> None:
    user = portal.user_with_totp("maria")
    device = source_address(20)
    status, refusal = curl_login(portal, device, user.name, user.password)
    assert status == LOGIN_DENIED, refusal

    sign_in(page, user)
    expect(page.get_by_role("main")).to_contain_text("1 waiting for your approval")
    page.get_by_role("link", name="Devices", exact=True).first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Devices")
    waiting = page.locator("ul.devices > li", has_text=f"from {device}")
    expect(waiting).to_have_count(1)
    expect(waiting).to_contain_text("Was this you?")
    expect(page.get_by_role("main")).to_contain_text("No device is trusted yet.")
    check_page(page, "devices-pending")

    waiting.get_by_role("button", name=re.compile(r"^Yes, it was me")).click()
    expect(page.get_by_role("status")).to_have_text(
        "Approved. The device can now sign in from the address it used."
    )
    expect(page.get_by_role("main")).to_contain_text("No device is waiting.")
    known = page.locator("tbody tr", has_text="trusted")
    expect(known).to_have_count(1)
    check_page(page, "devices")

    status, listing = curl_login(portal, device, user.name, user.password)
    assert status == LOGGED_IN, listing
    status, refusal = curl_login(portal, source_address(21), user.name, user.password)
    assert status == LOGIN_DENIED, refusal  # the approval is for that address only
    steps = [
        (e["action"], e["result"])
        for e in portal.gw.events("portal")
        if e.get("user") == "maria" and e["action"].startswith("device")
    ]
    assert steps == [("device_approve", "ok")], steps
