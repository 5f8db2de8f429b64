"""The admin pages in Chromium: an admin watches a password spray, run by the test
through the real gateway, arrive in the live events page without a reload, lifts
the sprayer's block with the Unblock button, and the source logs in again; the
other admin pages (overview, lockouts, charts, accounts, the policy explainer
submitted, a user's page with an app password revoked there) pass axe-core and
the label check and are photographed; someone outside the admin group gets 404.

The spray needs a defense that blocks, so the test starts a portal of its own
(the shared one forgives on purpose), whose gateway takes app passwords only, as
the deployments the portal is for do: a sprayed password is then refused by the
gateway itself. With passwords checked by Dovecot, each refusal from one address
would take 2, 6, 10, 17 s (its penalty, auth/penalty.py) and the spray a minute.

Source addresses (tests/e2e/portal.py source_address): 120 (the sprayer) and
121 (the client of the app password revoked on the user's page).
"""

from __future__ import annotations

import imaplib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.dovecot import DovecotServer
from tests.e2e.browser import Watch, assert_labelled, axe, shot
from tests.e2e.flows import sign_in
from tests.e2e.portal import ADMINS, PortalServer, User, source_address
from tests.gateway import GatewayProcess
from tests.integration.conftest import close_imap, open_imap, wait_for

SPRAYER = source_address(120)
CLIENT = source_address(121)
# The spray is detected at the fourth account (the defense then blocks the
# password's fingerprint and the source that sprayed it); the delays before each
# failure stay short.
DEFENSE = """
[defense]
spray_accounts = 4
source_free = 3
delay_base = 0.05
delay_max = 0.2
"""
# A policy for the explainer to explain: loopback only (every login of the test
# comes from 127.0.0.0/8).
POLICY = """
[[policy.rules]]
name = "campus-only"
action = "deny"
not_networks = ["127.0.0.0/8"]

[[policy.rules]]
name = "everyone-else"
action = "allow"
"""
# One password, five accounts: fixed readable names, so the pages photographed
# show the same accounts every run.
VICTIMS = ("spray-amber", "spray-basil", "spray-cedar", "spray-delia", "spray-ember")
SPRAYED = "Winter2026!"
LIVE = "Live: new events appear at the top of the table."
# Chromium's console line for a page or resource answered 404.
NOT_FOUND = r"status of 404"
ADMIN_PAGES = (
    "/admin",
    "/admin/events",
    "/admin/events/stream",
    "/admin/blocks",
    "/admin/lockouts",
    "/admin/charts",
    "/admin/users",
    "/admin/policy",
)


@pytest.fixture
def own_portal(
    tmp_path: Path, dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PortalServer]:
    """A portal whose defense blocks a sprayer and whose gateway takes app
    passwords only (its own state and audit log)."""
    create = GatewayProcess.create

    def app_passwords_only(base: Path, dovecot: DovecotServer, **options: Any) -> GatewayProcess:
        return create(base, dovecot, **{**options, "methods": ("app-password",)})

    # PortalServer.start names its gateway's methods itself: this start only.
    monkeypatch.setattr(GatewayProcess, "create", app_passwords_only)
    server = PortalServer.start(tmp_path / "portal", dovecot, defense=DEFENSE, extra_toml=POLICY)
    monkeypatch.undo()
    try:
        yield server
    finally:
        server.stop()


def new_admin(server: PortalServer) -> User:
    """A member of the admin group not yet in Dovecot: the shared portal and
    other tests take admins from the same list, and a name is one account."""
    free = [n for n in ADMINS if n not in server.dovecot.users]
    if not free:
        raise AssertionError(f"all of {ADMINS} are taken: add names to ADMINS")
    return server.user_with_totp(free[0])


def check_page(page: Page, name: str) -> None:
    axe(page)
    assert_labelled(page)
    shot(page, name)


def heading(page: Page, text: str) -> None:
    expect(page.get_by_role("heading", level=1)).to_have_text(text)


def admin_link(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Admin").get_by_role("link", name=name, exact=True).click()


def imap_login(server: PortalServer, src: str, user: str, password: str) -> str:
    """LOGIN through the portal's gateway from `src`: "OK", or the refusal's text."""
    imap = open_imap(server.gw, "implicit", src)
    try:
        try:
            typ, _ = imap.login(user, password)
        except imaplib.IMAP4.error as refused:
            return str(refused)
        return str(typ)
    finally:
        close_imap(imap)


def blocks(server: PortalServer) -> list[str]:
    """The targets of the blocks in force, as the admin's CLI lists them."""
    listed: list[dict[str, Any]] = json.loads(server.gw.cli("blocks", "list", "--json").stdout)
    return [str(b["target"]) for b in listed]


def events_rows(page: Page) -> list[list[str]]:
    """The cells of the live events table, newest first."""
    rows: list[list[str]] = page.locator("#events tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    return rows


def test_an_admin_sees_a_spray_live_unblocks_the_source_and_it_logs_in_again(
    own_portal: PortalServer, new_page: Callable[..., Page], dovecot: DovecotServer
) -> None:
    server = own_portal
    for name in VICTIMS[:-1]:
        # Dovecot re-reads its users file at most once a second: the last add
        # writes them all (and waits for that second once).
        dovecot.users[name] = f"{name}-mailbox-password"
    dovecot.add_user(VICTIMS[-1], f"{VICTIMS[-1]}-mailbox-password")
    device = server.app_password(User(VICTIMS[0], ""), "phone")
    admin = new_admin(server)

    page = new_page(server)
    sign_in(page, admin)
    page.get_by_role("navigation", name="Portal").get_by_role("link", name="Admin").click()
    heading(page, "Admin")
    expect(page.get_by_role("main")).to_contain_text("defense posture is normal")
    check_page(page, "admin-overview")

    admin_link(page, "Live events")
    heading(page, "Live authentication events")
    expect(page.get_by_role("status")).to_have_text(LIVE)  # the event stream is open
    page.evaluate("window.loadedOnce = true")  # gone if the page were loaded again

    # The spray: one password, five accounts, one source, through the gateway.
    answers = [imap_login(server, SPRAYER, victim, SPRAYED) for victim in VICTIMS]
    assert all("AUTHENTICATIONFAILED" in a for a in answers), answers

    table = page.locator("#events tbody")
    for victim in VICTIMS:
        expect(table.locator("tr", has_text=victim)).not_to_have_count(0)
    assert page.evaluate("window.loadedOnce") is True, "the page was loaded again"
    sprayed = [row for row in events_rows(page) if row[1] in VICTIMS]
    assert {row[1] for row in sprayed} == set(VICTIMS)
    assert {row[2] for row in sprayed} == {SPRAYER}
    assert "ok" not in {row[3] for row in sprayed}
    assert SPRAYED not in page.content()
    check_page(page, "admin-events")

    # The defense blocked the sprayer: even a valid app password is refused.
    wait_for(lambda: f"source:{SPRAYER}" in blocks(server), 10.0, "the sprayer's block")
    assert "AUTHENTICATIONFAILED" in imap_login(server, SPRAYER, VICTIMS[0], device)

    admin_link(page, "Blocks and spraying")
    heading(page, "Blocks and spraying")
    main = page.get_by_role("main")
    in_force = main.get_by_role("table", name=re.compile(r"^Blocks in force"))
    expect(in_force.get_by_role("row", name=f"{SPRAYER} source")).to_have_count(1)
    alerts = main.get_by_role("table", name="Recent spraying alerts, newest first")
    expect(alerts.get_by_role("row", name=SPRAYER)).not_to_have_count(0)
    check_page(page, "admin-blocks")
    unblock = main.get_by_role("button", name=f"Unblock source:{SPRAYER}", exact=True)
    unblock.click()
    expect(main.get_by_role("status")).to_have_text("The block was lifted.")
    expect(unblock).to_have_count(0)
    assert f"source:{SPRAYER}" not in blocks(server)

    assert imap_login(server, SPRAYER, VICTIMS[0], device) == "OK"
    unblocks = [e for e in server.gw.events("portal") if e.get("action") == "admin_unblock"]
    assert [(e["user"], e["target"], e["result"]) for e in unblocks] == [
        (admin.name, f"source:{SPRAYER}", "ok")
    ]
    assert SPRAYED not in server.gw.audit_path.read_text()

    visit_the_other_admin_pages(page, server, admin)


def visit_the_other_admin_pages(page: Page, server: PortalServer, admin: User) -> None:
    """Lockouts, charts, accounts, a user's page (revoking an app password there)
    and the policy explainer, after the spray: each passes axe and the label check."""
    main = page.get_by_role("main")
    admin_link(page, "Lockouts")
    heading(page, "Accounts with lockouts")
    check_page(page, "admin-lockouts")

    admin_link(page, "Charts")
    heading(page, "Sign-ins over time")
    hour = main.get_by_role("table", name=re.compile(r"^Sign-ins in the last hour"))
    # The spray's five failures and more are in the hour's table.
    failed = hour.locator("tbody tr td:nth-child(3)").all_inner_texts()
    assert sum(int(n) for n in failed) >= len(VICTIMS), failed
    check_page(page, "admin-charts")

    owner = server.new_user("lovelace")
    tablet = server.app_password(owner, "tablet")
    assert imap_login(server, CLIENT, owner.name, tablet) == "OK"
    admin_link(page, "Accounts")
    heading(page, "Accounts")
    check_page(page, "admin-accounts")
    page.get_by_label("Account name", exact=True).fill(owner.name)
    page.get_by_role("button", name="Open the account's page").click()
    heading(page, f"Account {owner.name}")
    passwords = main.get_by_role("table", name="App passwords")
    expect(passwords.get_by_role("row", name="tablet")).to_have_count(1)
    check_page(page, "admin-user")
    main.get_by_role("button", name="Revoke the app password tablet", exact=True).click()
    expect(main.get_by_role("status")).to_have_text(
        "Revoked. Its live sessions end within seconds."
    )
    expect(main).to_contain_text("No app passwords.")
    assert "AUTHENTICATIONFAILED" in imap_login(server, CLIENT, owner.name, tablet)
    (revoked,) = [e for e in server.gw.events("portal") if e.get("action") == "admin_revoke"]
    assert (revoked["user"], revoked["result"]) == (admin.name, "ok")
    assert revoked["target"].startswith(f"{owner.name} app-password:")

    admin_link(page, "Policy explainer")
    heading(page, "Policy explainer")
    page.get_by_label("Account", exact=True).fill(owner.name)
    page.get_by_label("Client IP address", exact=True).fill("192.0.2.7")
    page.get_by_label("Method", exact=True).select_option("app-password")
    page.get_by_role("button", name="Explain").click()
    expect(main.get_by_role("heading", level=2)).to_have_text("Decision: DENY")
    expect(main).to_contain_text("By campus-only")
    check_page(page, "admin-policy")
    page.get_by_label("Client IP address", exact=True).fill(CLIENT)
    page.get_by_role("button", name="Explain").click()
    expect(main.get_by_role("heading", level=2)).to_have_text("Decision: ALLOW")


def test_a_user_outside_the_admin_group_gets_404_on_every_admin_page(
    page: Page, watch: Watch, portal: PortalServer
) -> None:
    user = portal.user_with_totp("edsger")
    sign_in(page, user)
    nav = page.get_by_role("navigation", name="Portal")
    expect(nav.get_by_role("link", name="Admin")).to_have_count(0)
    watch.expect_console(NOT_FOUND)
    for path in (*ADMIN_PAGES, f"/admin/users/{user.name}"):
        response = page.goto(path)
        assert response is not None
        assert response.status == 404, path
        assert "Not found" in page.content()
    assert [e for e in portal.gw.events("portal") if e.get("action", "").startswith("admin_")] == []
