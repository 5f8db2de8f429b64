"""Signing in to the portal through a real OpenID provider (oidc-provider, the
one of the OAuth tests) with `imapguard serve` in front of Dovecot: the
authorization code flow with PKCE over real HTTPS, the provider's own token
endpoint and signing keys. An ID token with MFA in `amr` gives a full session;
one without MFA asks for the account's own code; one for an account without a
factor, or one the mail server does not know, opens nothing."""

from __future__ import annotations

import json
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest

from tests.dovecot import DovecotServer, free_port
from tests.gateway import GatewayProcess
from tests.integration.portal_web import csrf, portal_gateway
from tests.oidc_provider import OidcProvider

CLIENT_ID = "imapguard-portal"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    with OidcProvider(tmp_path_factory.mktemp("oidc-portal")) as provider:
        yield provider


@pytest.fixture(scope="module")
def portal_gw(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer, idp: OidcProvider
) -> Iterator[tuple[GatewayProcess, int]]:
    base: Path = tmp_path_factory.mktemp("gw-oidc")
    port = free_port()
    secret = secrets.token_urlsafe(24)
    secret_file = base / "oidc-client-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    idp.register_client(CLIENT_ID, secret, f"https://localhost:{port}/signin/oidc/callback")
    # A token of the issuer is accepted only where auth.methods takes tokens.
    methods = ("app-password", "password+totp", "oauthbearer")
    extra = f"""oidc_client_id = "{CLIENT_ID}"
oidc_client_secret_file = "{secret_file}"

[oauth]
issuer = "{idp.issuer}"
audience = "imap"
ca_file = "{idp.ca_file}"
"""
    with portal_gateway(base, dovecot, extra, port, methods) as running:
        yield running


def browser(gw: GatewayProcess, port: int, idp: OidcProvider) -> httpx.Client:
    """One cookie jar across the portal and the provider, trusting both CAs,
    following redirects as a browser does."""
    ctx = ssl.create_default_context(cafile=str(gw.ca_cert))
    ctx.load_verify_locations(cafile=idp.ca_file)
    return httpx.Client(
        base_url=f"https://localhost:{port}",
        verify=ctx,
        timeout=30.0,
        follow_redirects=True,
        trust_env=False,
    )


def through_provider(web: httpx.Client) -> httpx.Response:
    """/signin/oidc, the provider's pages, and back to the portal's callback."""
    page = web.get("/signin/oidc")
    hosts = [r.url.host for r in page.history]
    assert "127.0.0.1" in hosts, hosts  # it went to the provider
    assert page.url.path == "/signin/oidc/callback", page.url
    return page


def mail_user(dovecot: DovecotServer) -> str:
    """A new account of the mail server, as the provider names it."""
    local = f"oidc{secrets.token_hex(3)}"
    dovecot.add_user(local, secrets.token_urlsafe(12))  # Dovecot looks up %n
    return f"{local}@example.org"


def test_mfa_at_the_provider_signs_in(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer, idp: OidcProvider
) -> None:
    gw, port = portal_gw
    user = mail_user(dovecot)
    idp.next_login(user, amr=["pwd", "mfa"])
    with browser(gw, port, idp) as web:
        page = through_provider(web)
        assert page.status_code == 200, page.text
        assert 'http-equiv="refresh" content="0; url=/"' in page.text
        home = web.get("/")
        assert home.status_code == 200
        assert home.url.path == "/"
        assert user in home.text
    (auth,) = [
        e for e in gw.events("auth") if e.get("mechanism") == "PORTAL-OIDC" and e["user"] == user
    ]
    assert (auth["user"], auth["result"], auth["factor"]) == (user, "ok", "oauth-mfa")
    log = gw.audit_path.read_text()
    assert "eyJ" not in log  # no token
    assert "code=" not in log


def test_no_mfa_at_the_provider_asks_for_the_accounts_code(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer, idp: OidcProvider
) -> None:
    gw, port = portal_gw
    user = mail_user(dovecot)
    enrolled = json.loads(gw.cli("totp", "enroll", user, "--json").stdout)
    otp = pyotp.TOTP(enrolled["secret"])
    idp.next_login(user, amr=["pwd"])
    with browser(gw, port, idp) as web:
        page = through_provider(web)
        assert 'url=/signin/code"' in page.text
        with_redirects = web.get("/")
        assert with_redirects.url.path == "/signin/code"  # no full session yet
        form = web.get("/signin/code")
        done = web.post(
            "/signin/code",
            data={"csrf": csrf(form), "code": otp.now()},
            headers={"Origin": f"https://localhost:{port}"},
        )
        assert done.url.path == "/", done.text
        assert user in done.text


def test_no_mfa_and_no_factor_opens_nothing(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer, idp: OidcProvider
) -> None:
    gw, port = portal_gw
    user = mail_user(dovecot)
    idp.next_login(user, amr=["pwd"])
    with browser(gw, port, idp) as web:
        page = through_provider(web)
        assert "did not use a second factor" in page.text
        assert web.get("/").url.path == "/signin"
    results = [
        e["result"]
        for e in gw.events("portal")
        if e.get("action") == "oidc" and e.get("user") == user
    ]
    assert results == ["no_second_factor"]


def test_an_account_the_mail_server_does_not_know_opens_nothing(
    portal_gw: tuple[GatewayProcess, int], idp: OidcProvider
) -> None:
    """As over OAUTHBEARER: the mail server's master login decides whether the
    token's account exists; the provider's word alone opens no session."""
    gw, port = portal_gw
    user = f"ghost{secrets.token_hex(3)}@example.org"
    idp.next_login(user, amr=["pwd", "mfa"])
    with browser(gw, port, idp) as web:
        page = through_provider(web)
        assert "did not work" in page.text
        assert web.get("/").url.path == "/signin"
    (auth,) = [
        e for e in gw.events("auth") if e.get("mechanism") == "PORTAL-OIDC" and e["user"] == user
    ]
    # Dovecot's NO [AUTHORIZATIONFAILED] to the master login: this account, not an outage.
    assert auth["result"] == "denied"
    assert auth["reason"].startswith("upstream refused the account")
