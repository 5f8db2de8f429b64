"""Device passwords in Chromium, with the devices played by curl and imaplib
through the portal's gateway in front of Dovecot:

* made in the page and read from it (`<output id="new-password">`), the password
  logs in with curl; the Apple profile downloaded from the page (a real
  download) names port 993 with SSL and the same password, the Thunderbird
  document 993 with SSL; revoked in the page, a new login with it is refused
  and an open IDLE session ends with a BYE within 5 seconds;
* revoked with the CLI (`imapguard app-password revoke`, another process) while
  the gateway runs, the IDLE session ends within 5 seconds too and the page no
  longer lists it.

Sources (tests/e2e/portal.py source_address): 10-19.
"""

from __future__ import annotations

import json
import plistlib
import re
import time
from pathlib import Path
from xml.etree import ElementTree

from playwright.sync_api import Page, expect

from tests.e2e.browser import check_page
from tests.e2e.flows import reload_until, sign_in
from tests.e2e.mail import LOGGED_IN, LOGIN_DENIED, curl_login, ended, idle
from tests.e2e.portal import PortalServer, source_address
from tests.integration.conftest import close_imap

# What the issue promises for a revocation to reach a live session.
WITHIN = 5.0
# A device password as the page shows it: groups of letters and digits.
SHOWN = re.compile(r"[a-z0-9]{4}(-[a-z0-9]{4})+", re.IGNORECASE)


def download(page: Page, button: str) -> tuple[str, bytes]:
    """Click a download button of the page; the file's suggested name and bytes."""
    with page.expect_download() as started:
        page.get_by_role("button", name=button).click()
    got = started.value
    return got.suggested_filename, Path(got.path()).read_bytes()


def test_a_password_made_in_the_page_logs_in_sets_up_a_device_and_its_revocation_ends_idle(
    page: Page, portal: PortalServer
) -> None:
    user = portal.user_with_totp("nora")
    device = source_address(10)
    sign_in(page, user)
    nav = page.get_by_role("navigation", name="Portal")
    nav.get_by_role("link", name="Device passwords").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Device passwords")
    expect(nav.get_by_role("link", name="Device passwords")).to_have_attribute(
        "aria-current", "page"
    )
    expect(nav.locator("[aria-current]")).to_have_count(1)
    expect(page.get_by_role("main")).to_contain_text("You have no device passwords yet.")
    check_page(page, "app-passwords-empty")

    page.get_by_label("Device name", exact=True).fill("phone")
    page.get_by_role("button", name="Create a device password").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your new device password")
    shown = page.locator("output#new-password")
    password = shown.inner_text()
    assert SHOWN.fullmatch(password), password
    check_page(page, "app-password-new", mask=[shown])

    name, profile = download(page, "iPhone, iPad or Mac: download the profile")
    assert name.endswith(".mobileconfig"), name
    (mail,) = plistlib.loads(profile)["PayloadContent"]
    assert (mail["IncomingMailServerPortNumber"], mail["IncomingMailServerUseSSL"]) == (993, True)
    assert mail["IncomingMailServerUsername"] == "nora"
    assert mail["IncomingPassword"] == password
    assert (mail["OutgoingMailServerPortNumber"], mail["OutgoingMailServerUseSSL"]) == (465, True)
    name, settings = download(page, "Thunderbird: download the settings")
    incoming = ElementTree.fromstring(settings).find(  # noqa: S314 - the portal's own
        "emailProvider/incomingServer"
    )
    assert incoming is not None, settings
    assert (incoming.findtext("port"), incoming.findtext("socketType")) == ("993", "SSL")
    assert incoming.findtext("username") == "nora"
    assert password.encode() not in settings  # Thunderbird asks for it once

    status, listing = curl_login(portal, device, user.name, password)
    assert status == LOGGED_IN, listing
    assert "INBOX" in listing
    idler = idle(portal, device, user.name, password)
    try:
        page.get_by_role("link", name="Done: back to your device passwords").click()
        row = page.locator("tr", has_text="phone")
        reload_until(page, row, f"from {device}")  # last used: the curl and IMAP logins
        check_page(page, "app-passwords")
        assert password not in page.content()  # shown once, on its own page only

        page.get_by_role("button", name="Revoke the password of phone").click()
        revoked_at = time.monotonic()
        expect(page.get_by_role("status")).to_have_text(
            "Revoked. Mail clients using it are disconnected within seconds."
        )
        expect(row).to_have_count(0)
        lines, after = ended(idler, revoked_at, WITHIN)
    finally:
        close_imap(idler)
    _ended_with_a_bye_for_good(portal, device, user.name, password, lines, after)

    text = portal.gw.audit_path.read_text() + portal.gw.log_text()
    assert password not in text
    assert password.replace("-", "") not in text
    actions = [
        e["action"]
        for e in portal.gw.events("portal")
        if e.get("user") == "nora" and e["action"].startswith("app_password")
    ]
    assert actions == [
        "app_password_create",
        "app_password_setup",
        "app_password_setup",
        "app_password_revoke",
    ]


def _ended_with_a_bye_for_good(
    portal: PortalServer, device: str, user: str, password: str, lines: list[bytes], after: float
) -> None:
    """The revoked password's IDLE session ended with a BYE within WITHIN seconds
    (`lines` it got, `after` seconds), and the password logs in no more."""
    assert after < WITHIN, (after, lines)
    assert lines, "the session ended without a word"
    assert lines[-1].startswith(b"* BYE"), lines
    status, refusal = curl_login(portal, device, user, password)
    assert status == LOGIN_DENIED, refusal


def test_a_revocation_from_the_cli_in_another_process_ends_idle_and_leaves_the_page(
    page: Page, portal: PortalServer
) -> None:
    user = portal.user_with_totp("olga")
    device = source_address(11)
    sign_in(page, user)
    page.goto("/app-passwords")
    page.get_by_label("Device name", exact=True).fill("laptop")
    page.get_by_role("button", name="Create a device password").click()
    password = page.locator("output#new-password").inner_text()
    (record,) = json.loads(portal.gw.cli("app-password", "list", "olga", "--json").stdout)
    assert record["label"] == "laptop"

    idler = idle(portal, device, user.name, password)
    try:
        revoked_at = time.monotonic()  # before the CLI starts: its start-up counts too
        portal.gw.cli("app-password", "revoke", "olga", record["id"])
        lines, after = ended(idler, revoked_at, WITHIN)
    finally:
        close_imap(idler)
    _ended_with_a_bye_for_good(portal, device, user.name, password, lines, after)
    page.goto("/app-passwords")
    expect(page.get_by_role("main")).to_contain_text("You have no device passwords yet.")
