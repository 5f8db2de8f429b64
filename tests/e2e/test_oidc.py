"""Signing in through the organisation's OpenID provider in Chromium: the
oidc-provider of the OAuth tests (tests/oidc, over HTTPS on 127.0.0.1) and a
portal of this module's own with `[oauth]` and its client registered there.
The browser goes to the provider and back (the authorization code flow with
PKCE); an ID token with MFA in `amr` opens the account page; one without MFA
asks for the account's own code; one for an account with no factor shows the
one failure page and opens nothing. The provider's origin is the one other
origin the watch admits.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.dovecot import DovecotServer, free_port
from tests.e2e.browser import Watch, check_page
from tests.e2e.portal import PortalServer
from tests.oidc_provider import OidcProvider

CLIENT_ID = "imapguard-portal"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    with OidcProvider(tmp_path_factory.mktemp("e2e-oidc-idp")) as provider:
        yield provider


@pytest.fixture(scope="module")
def oidc_portal(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer, idp: OidcProvider
) -> Iterator[PortalServer]:
    base = tmp_path_factory.mktemp("e2e-oidc-portal")
    port = free_port()
    secret_file = base / "oidc-client-secret"
    client_secret = secrets.token_urlsafe(24)
    secret_file.write_text(client_secret + "\n")
    secret_file.chmod(0o600)
    idp.register_client(CLIENT_ID, client_secret, f"https://localhost:{port}/signin/oidc/callback")
    server = PortalServer.start(
        base,
        dovecot,
        port=port,
        methods=("app-password", "password+totp", "oauthbearer"),
        portal_toml=f"""
oidc_client_id = "{CLIENT_ID}"
oidc_client_secret_file = "{secret_file}"
""",
        extra_toml=f"""
[oauth]
issuer = "{idp.issuer}"
audience = "imap"
ca_file = "{idp.ca_file}"
""",
    )
    try:
        yield server
    finally:
        server.stop()


def on_mail_server(server: PortalServer, account: str) -> None:
    """Make `account` (name@example.org) known to the mail server, which the
    portal asks as the gateway asks it for a token login (a master login): the
    test Dovecot looks names up by their local part (%n)."""
    server.dovecot.add_user(account.partition("@")[0], secrets.token_urlsafe(12))


def through_provider(page: Page, idp: OidcProvider) -> None:
    """Start at the portal's OIDC link; the provider's pages send the browser back."""
    Watch.of(page).allow_origin(idp.issuer)
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.goto("/signin/oidc")  # redirects to the provider, and its to the callback
    expect(page).not_to_have_url(re.compile(r"/signin/oidc$"))
    assert any(url.startswith(idp.issuer + "/") for url in asked), asked  # it went there


def test_mfa_at_the_provider_opens_the_account_page(
    new_page: Callable[..., Page], oidc_portal: PortalServer, idp: OidcProvider
) -> None:
    page = new_page(oidc_portal)
    on_mail_server(oidc_portal, "mary@example.org")
    idp.next_login("mary@example.org", amr=["pwd", "mfa"])
    through_provider(page, idp)
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account")
    expect(page.get_by_role("main")).to_contain_text("You are signed in as mary@example.org.")
    (auth,) = [e for e in oidc_portal.gw.events("auth") if e.get("mechanism") == "PORTAL-OIDC"]
    assert (auth["user"], auth["result"], auth["factor"]) == ("mary@example.org", "ok", "oauth-mfa")
    log = oidc_portal.gw.audit_path.read_text() + oidc_portal.gw.log_text()
    assert "eyJ" not in log  # no token
    assert "code=" not in log


def test_no_mfa_at_the_provider_asks_for_the_accounts_own_code(
    new_page: Callable[..., Page], oidc_portal: PortalServer, idp: OidcProvider
) -> None:
    page = new_page(oidc_portal)
    user = oidc_portal.user_with_totp("ruth@example.org")
    on_mail_server(oidc_portal, user.name)
    idp.next_login(user.name, amr=["pwd"])
    through_provider(page, idp)
    expect(page).to_have_url(re.compile(r"/signin/code$"))
    page.get_by_label("Code", exact=True).fill(user.code())
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account")
    expect(page.get_by_role("main")).to_contain_text("You are signed in as ruth@example.org.")


def test_no_mfa_and_no_factor_shows_the_failure_page_and_opens_nothing(
    new_page: Callable[..., Page], oidc_portal: PortalServer, idp: OidcProvider
) -> None:
    page = new_page(oidc_portal)
    on_mail_server(oidc_portal, "sara@example.org")  # known there: refused for its factor
    idp.next_login("sara@example.org", amr=["pwd"])
    through_provider(page, idp)
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign-in did not work")
    expect(page.get_by_role("alert")).to_contain_text("did not use a second factor")
    check_page(page, "signin-oidc-failed")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin$"))
