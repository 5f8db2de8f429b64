"""The harness's own checks can fail: axe-core reports a serious violation by rule
and element, the label check finds a field labelled only for screen readers, the
watch catches an inline script the CSP refused, and the virtual authenticator
answers a WebAuthn ceremony on the portal's origin (what the passkey tests need:
a secure context at `localhost` despite the test certificate), an IMAP client
beside the browser logs in through the same gateway and an IDLE session nobody
ends is reported open; the stylesheet hides [hidden] and the pages' icon link
spares the browser a /favicon.ico.

Sources (tests/e2e/portal.py source_address): 1-9."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.browser import VirtualAuthenticator, Watch, axe, axe_violations, unlabelled_fields
from tests.e2e.mail import ended, idle
from tests.e2e.portal import PortalServer, source_address
from tests.integration.conftest import close_imap, open_imap


def test_axe_fails_a_page_with_an_unlabelled_field_naming_rule_and_element(page: Page) -> None:
    page.goto("/signin")
    assert [v for v in axe_violations(page) if v.impact in ("serious", "critical")] == []
    page.evaluate(
        """() => {
        const field = document.createElement("input");
        field.id = "stray";
        document.querySelector("main").append(field);
    }"""
    )
    with pytest.raises(AssertionError) as failed:
        axe(page)
    message = str(failed.value)
    assert "label (critical): Form elements must have labels" in message
    assert "at #stray" in message
    assert "https://dequeuniversity.com/rules/axe/" in message


def test_a_field_with_only_an_aria_label_or_a_hidden_label_has_no_visible_label(
    page: Page,
) -> None:
    page.goto("/signin")
    assert unlabelled_fields(page) == []
    # Styles set through the DOM, not markup: the CSP refuses inline style attributes.
    page.evaluate(
        """() => {
        const main = document.querySelector("main");
        const field = (id, label, hide) => {
            const input = document.createElement("input");
            input.id = id;
            if (label === null) {
                input.setAttribute("aria-label", id);
                input.placeholder = id;
                main.append(input);
                return;
            }
            const text = document.createElement("label");
            text.htmlFor = id;
            text.textContent = label;
            hide(text.style);
            main.append(text, input);
        };
        field("named", null);
        field("gone", "Gone", s => { s.display = "none"; });
        field("clipped", "Clipped", s => {
            Object.assign(s, {position: "absolute", width: "1px", height: "1px",
                              overflow: "hidden", clip: "rect(0 0 0 0)"});
        });
        field("aside", "Aside", s => {
            Object.assign(s, {position: "absolute", left: "-9999px"});
        });
        field("seen", "Seen", s => {});
    }"""
    )
    found = unlabelled_fields(page)
    ids = [
        next(i for i in ("named", "gone", "clipped", "aside", "seen") if f'id="{i}"' in f)
        for f in found
    ]
    assert ids == ["named", "gone", "clipped", "aside"], found


def test_the_watch_reports_an_inline_script_the_csp_refused(page: Page, watch: Watch) -> None:
    page.goto("/signin")
    page.evaluate(
        """() => {
        const script = document.createElement("script");
        script.textContent = "document.title = 'injected'";
        document.head.append(script);
    }"""
    )
    page.wait_for_timeout(200)  # the console message is delivered asynchronously
    assert page.title() != "injected"
    assert any("Content Security Policy" in p for p in watch.problems), watch.problems
    watch.problems.clear()  # seen; the page fixture checks the rest


def test_the_virtual_authenticator_answers_webauthn_on_the_portal_origin(page: Page) -> None:
    page.goto("/signin")
    assert page.evaluate("window.isSecureContext") is True
    authenticator = VirtualAuthenticator.add(page)
    created = page.evaluate(
        """async () => {
        const random = n => crypto.getRandomValues(new Uint8Array(n));
        const credential = await navigator.credentials.create({publicKey: {
            rp: {id: "localhost", name: "imapguard test"},
            user: {id: random(16), name: "ada", displayName: "ada"},
            challenge: random(32),
            pubKeyCredParams: [{type: "public-key", alg: -7}],
            authenticatorSelection: {residentKey: "required", userVerification: "required"},
        }});
        const asserted = await navigator.credentials.get({publicKey: {
            rpId: "localhost", challenge: random(32), userVerification: "required",
            allowCredentials: [{type: "public-key", id: credential.rawId}],
        }});
        return {created: credential.id, asserted: asserted.id,
                uv: (new Uint8Array(asserted.response.authenticatorData)[32] & 4) !== 0};
    }"""
    )
    assert created["created"] == created["asserted"]
    assert created["uv"] is True  # user verification reported, as passkeys need
    (held,) = authenticator.credentials()
    assert held["rpId"] == "localhost"
    assert held["isResidentCredential"] is True
    assert held["signCount"] >= 1
    authenticator.remove()


def test_an_idle_session_nobody_ends_is_reported_open_after_the_wait(
    portal: PortalServer,
) -> None:
    # Source 127.0.210.2: what the revocation tests' `after < WITHIN` rests on.
    user = portal.new_user()
    password = portal.app_password(user, "harness")
    conn = idle(portal, source_address(2), user.name, password)
    try:
        started = time.monotonic()
        lines, after = ended(conn, started, 0.5)
    finally:
        close_imap(conn)
    assert lines == []
    assert 1.5 <= after < 3.0, after


def test_an_imap_client_beside_the_browser_logs_in_through_the_portals_gateway(
    portal: PortalServer,
) -> None:
    # Source 127.0.210.1 (tests/e2e/portal.py source_address).
    user = portal.new_user()
    password = portal.app_password(user, "harness")
    imap = open_imap(portal.gw, "implicit", source_address(1))
    try:
        assert imap.login(user.name, password)[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
    finally:
        close_imap(imap)
    (login,) = [e for e in portal.gw.events("auth") if e.get("user") == user.name]
    assert (login["result"], login["src"]) == ("ok", "127.0.210.1")


def test_the_portals_pages_name_their_icon_so_the_browser_asks_for_no_favicon(
    page: Page, watch: Watch
) -> None:
    # Chromium fetches /favicon.ico by itself (no "request" event); a 404 for it
    # shows only as a console error whose location is that address.
    icons: list[str] = []
    page.on(
        "console",
        lambda message: (
            icons.append(message.text)
            if message.location.get("url", "").endswith("/favicon.ico")
            else None
        ),
    )
    page.goto("/signin", wait_until="networkidle")
    assert icons == []
    # What spares the request: the page names its icon (a data: URL, which the
    # CSP's img-src allows). Whether Chromium then asks for /favicon.ico of a page
    # without one varies with its favicon cache, so that is not asserted here.
    expect(page.locator('head link[rel="icon"]')).to_have_attribute("href", "data:,")


def test_the_stylesheet_hides_a_hidden_element_its_own_display_rules_would_show(
    page: Page,
) -> None:
    # .secret is inline-block and ul.devices li flex: without `[hidden] {display:
    # none !important}` an author rule beats the browser's own [hidden] rule.
    page.goto("/signin")
    page.evaluate(
        """() => {
        const main = document.querySelector("main");
        const secret = Object.assign(document.createElement("output"), {id: "s"});
        secret.className = "secret";
        secret.textContent = "abcd-efgh";
        const list = document.createElement("ul");
        list.className = "devices";
        const item = Object.assign(document.createElement("li"), {id: "d"});
        item.textContent = "a device";
        list.append(item);
        main.append(secret, list);
    }"""
    )
    assert page.locator("#s").is_visible()
    assert page.locator("#d").is_visible()
    page.evaluate(
        "() => { for (const id of ['s', 'd']) document.getElementById(id).hidden = true; }"
    )
    assert not page.locator("#s").is_visible()
    assert not page.locator("#d").is_visible()
