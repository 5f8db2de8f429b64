"""Signing in through the organisation's OpenID provider: the real portal app
and the real relying party (`auth.oauth.relying_party`) against a fake
provider (httpx.MockTransport: discovery, JWKS, token endpoint; ID tokens
signed here), and the auth service's own `TwoStepSignIn.check_oidc` behind
the portal (support's `real_sign_in`). What must not open a session: a callback another browser was
sent to, a state used twice, a token for another nonce, audience, key or time,
a code the provider refuses (PKCE), a token without MFA for an account with
no factor of its own."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from imapguard.auth import totp
from imapguard.auth.oauth import OAuthConfig
from imapguard.auth.oauth.relying_party import FLOW_LIFETIME, RelyingParty, pkce_challenge
from imapguard.portal.oidc import FLOW_COOKIE, OidcSetup
from imapguard.portal.sessions import COOKIE
from imapguard.secret import Secret
from tests.unit.portal.support import Portal, portal
from tests.unit.test_oauth import RSA_A, RSA_B, SigningKey

pytestmark = pytest.mark.asyncio

ISSUER = "https://idp.example.org"
CLIENT_ID = "imapguard-portal"
CLIENT_SECRET = "client-secret-0123456789"
REDIRECT = "https://portal.test/signin/oidc/callback"


@dataclass
class Provider:
    """A fake OpenID provider: `authorize()` plays the user signing in there."""

    clock: Any
    key: SigningKey = field(default_factory=lambda: RSA_A)
    grants: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    # What the next ID token says beyond the usual; DROP-free overrides.
    overrides: dict[str, Any] = field(default_factory=dict)

    def handle(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url == f"{ISSUER}/.well-known/openid-configuration":
            return httpx.Response(
                200,
                json={
                    "issuer": ISSUER,
                    "authorization_endpoint": f"{ISSUER}/auth",
                    "token_endpoint": f"{ISSUER}/token",
                    "jwks_uri": f"{ISSUER}/jwks",
                },
            )
        if url == f"{ISSUER}/jwks":
            return httpx.Response(200, json={"keys": [RSA_A.jwk()]})
        if url == f"{ISSUER}/token" and request.method == "POST":
            return self._token(request)
        return httpx.Response(404)

    def _token(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.token_requests.append(form)
        basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {basic}":
            return httpx.Response(401, json={"error": "invalid_client"})
        grant = self.grants.pop(form.get("code", ""), None)
        if (
            grant is None
            or form.get("redirect_uri") != REDIRECT
            or pkce_challenge(form.get("code_verifier", "")) != grant["challenge"]
        ):
            return httpx.Response(400, json={"error": "invalid_grant"})
        now = self.clock()
        claims = {
            "iss": ISSUER,
            "aud": CLIENT_ID,
            "exp": now + 300,
            "iat": now,
            "sub": "u-1",
            "nonce": grant["nonce"],
            "email": grant["email"],
            "email_verified": True,
            "amr": grant["amr"],
            **self.overrides,
        }
        id_token = jwt.encode(claims, self.key.private, algorithm="RS256", headers={"kid": "rsa-a"})
        return httpx.Response(200, json={"id_token": id_token, "token_type": "Bearer"})

    def authorize(self, location: str, email: str, amr: list[str]) -> str:
        """The provider's side of the redirect: the user signed in; the callback URL."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert query["client_id"] == CLIENT_ID
        assert query["redirect_uri"] == REDIRECT
        assert query["code_challenge_method"] == "S256"
        assert query["response_type"] == "code"
        assert "openid" in query["scope"].split()
        code = f"code-{len(self.grants)}-{email}"
        self.grants[code] = {
            "nonce": query["nonce"],
            "challenge": query["code_challenge"],
            "email": email,
            "amr": amr,
        }
        return f"/signin/oidc/callback?code={code}&state={query['state']}"


class _PortalClock:
    """The portal's clock, once the portal exists (one clock for the portal,
    the provider and the verifier)."""

    def __init__(self) -> None:
        self.clock: Any = None

    def __call__(self) -> float:
        return float(self.clock())


@contextlib.asynccontextmanager
async def oidc_portal(tmp_path: Path, **kw: Any) -> AsyncIterator[tuple[Portal, Provider]]:
    clock = _PortalClock()
    provider = Provider(clock)
    settings = OAuthConfig(issuer=ISSUER, audience="imap")
    rp = RelyingParty(
        settings,
        client_id=CLIENT_ID,
        client_secret=Secret(CLIENT_SECRET),
        redirect_uri=REDIRECT,
        clock=clock,
        transport=httpx.MockTransport(provider.handle),
    )
    setup = OidcSetup(rp, lambda name: name.lower())
    try:
        # The auth service's own check_oidc (its defense, policy and name rule).
        async with portal(tmp_path, oidc=setup, **{"real_sign_in": True, **kw}) as p:
            clock.clock = p.clock
            yield p, provider
    finally:
        await rp.aclose()


async def _start(p: Portal) -> str:
    started = await p.client.get("/signin/oidc")
    assert started.status_code == 303, started.text
    location = started.headers["location"]
    assert location.startswith(f"{ISSUER}/auth?")
    cookie = started.headers["set-cookie"]
    assert cookie.startswith(f"{FLOW_COOKIE}=")
    for attribute in ("SameSite=Lax", "Secure", "HttpOnly", "Path=/"):
        assert attribute in cookie
    return location


async def _sign_in(
    p: Portal, idp: Provider, email: str = "alice", amr: tuple[str, ...] = ("pwd", "mfa")
) -> httpx.Response:
    callback = idp.authorize(await _start(p), email, list(amr))
    return await p.client.get(callback)


def _oidc_events(p: Portal) -> list[tuple[str, str | None]]:
    return [(e["result"], e.get("user")) for e in p.events() if e["action"] == "oidc"]


async def test_mfa_at_the_provider_gives_a_full_session(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        done = await _sign_in(p, idp, "Alice")
        assert done.status_code == 200
        # On by a page of ours (a same-site navigation), not a redirect.
        assert '<meta http-equiv="refresh" content="0; url=/">' in done.text
        assert done.text.count("<h1>") == 1
        assert (await p.client.get("/")).status_code == 200
        assert [s.level for s in p.store.live()] == ["full"]
        assert _oidc_events(p) == [("ok", "alice")]
        (auth,) = p.events("auth")
        assert (auth["mechanism"], auth["result"], auth["factor"]) == (
            "PORTAL-OIDC",
            "ok",
            "oauth-mfa",
        )
        # PKCE: the verifier sent to the token endpoint is the one the challenge named.
        (request,) = idp.token_requests
        assert request["grant_type"] == "authorization_code"
        assert len(request["code_verifier"]) >= 43


async def test_token_without_mfa_gives_no_full_session(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        refused = await _sign_in(p, idp, "bob", amr=("pwd",))
        assert refused.status_code == 200
        assert "did not use a second factor" in refused.text
        assert p.store.live() == []
        assert (await p.client.get("/")).status_code == 303
        assert _oidc_events(p) == [("no_second_factor", "bob")]


async def test_token_without_mfa_asks_for_the_accounts_own_code(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        key = p.deps.services.totp_key  # type: ignore[union-attr]
        p.store.set_totp("alice", totp.seal(key, "alice", totp.new_secret()), p.clock())
        half = await _sign_in(p, idp, "alice", amr=("pwd",))
        assert half.status_code == 200
        assert 'url=/signin/code"' in half.text
        assert [s.level for s in p.store.live()] == ["password"]
        assert (await p.client.get("/")).status_code == 303
        assert (await p.client.get("/signin/code")).status_code == 200
        assert _oidc_events(p) == [("password_only", "alice")]


async def test_login_csrf_a_callback_from_another_browser_is_refused(tmp_path: Path) -> None:
    """The attacker starts a flow, signs in as themselves at the provider, and
    sends the victim the callback link: the victim's browser has no such state."""
    async with oidc_portal(tmp_path) as (attacker, idp):
        callback = idp.authorize(await _start(attacker), "mallory", ["pwd", "mfa"])
        async with attacker.browser("198.51.100.20") as victim:
            page = await victim.client.get(callback)
            assert page.status_code == 200
            assert "did not work" in page.text
            assert victim.client.cookies.get(COOKIE) is None
        # ... also when the victim's browser is in a sign-in flow of its own.
        callback = idp.authorize(await _start(attacker), "mallory", ["pwd", "mfa"])
        async with attacker.browser("198.51.100.20") as victim:
            await _start(victim)
            page = await victim.client.get(callback)
            assert "did not work" in page.text
            assert victim.client.cookies.get(COOKIE) is None
        assert attacker.store.live() == []
        assert _oidc_events(attacker) == [("failed", None), ("failed", None)]


async def test_state_replay_a_callback_works_once(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        location = await _start(p)
        callback = idp.authorize(location, "alice", ["mfa"])
        cookie = p.client.cookies.get(FLOW_COOKIE)
        assert (await p.client.get(callback)).status_code == 200
        await p.client.post("/signout", headers={"Origin": "https://portal.test"})
        p.client.cookies.set(FLOW_COOKIE, cookie or "", domain="portal.test")
        state = parse_qs(urlsplit(location).query)["state"][0]
        again = await p.client.get(f"/signin/oidc/callback?code=whatever&state={state}")
        assert "did not work" in again.text


async def test_state_mismatch_is_refused(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        callback = idp.authorize(await _start(p), "alice", ["mfa"])
        forged = callback.rsplit("state=", 1)[0] + "state=" + "x" * 43
        page = await p.client.get(forged)
        assert "did not work" in page.text
        assert p.store.live() == []
        assert idp.token_requests == []  # the code was not even exchanged


async def test_nonce_mismatch_is_refused(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        idp.overrides["nonce"] = "another flow's nonce"
        page = await _sign_in(p, idp)
        assert "did not work" in page.text
        assert p.store.live() == []
        (auth,) = p.events("auth")
        assert auth["reason"] == "nonce is not the one this sign-in sent"


async def test_pkce_a_code_without_the_right_verifier_is_refused(tmp_path: Path) -> None:
    """A code intercepted on its way back cannot be redeemed by another flow:
    the provider wants the verifier of the flow that asked for it."""
    async with oidc_portal(tmp_path) as (p, idp):
        victim_location = await _start(p)
        stolen = idp.authorize(victim_location, "alice", ["mfa"])
        code = parse_qs(urlsplit(stolen).query)["code"][0]
        async with p.browser("198.51.100.21") as attacker:
            own = await _start(attacker)
            state = parse_qs(urlsplit(own).query)["state"][0]
            page = await attacker.client.get(f"/signin/oidc/callback?code={code}&state={state}")
            assert "did not work" in page.text
        assert p.store.live() == []
        assert "invalid_grant" in p.events("auth")[0]["reason"]


async def test_token_of_another_audience_is_refused(tmp_path: Path) -> None:
    """An IMAP access token (aud "imap") is no ID token for the portal."""
    async with oidc_portal(tmp_path) as (p, idp):
        idp.overrides["aud"] = "imap"
        page = await _sign_in(p, idp)
        assert "did not work" in page.text
        assert p.store.live() == []
        assert "does not name 'imapguard-portal'" in p.events("auth")[0]["reason"]


async def test_token_for_several_audiences_needs_azp(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        idp.overrides["aud"] = [CLIENT_ID, "other-client"]
        idp.overrides["azp"] = "other-client"
        page = await _sign_in(p, idp)
        assert "did not work" in page.text
        assert p.store.live() == []


async def test_token_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        idp.key = RSA_B  # signs, claiming kid rsa-a
        page = await _sign_in(p, idp)
        assert "did not work" in page.text
        assert p.store.live() == []


async def test_expired_token_and_a_slow_flow_are_refused(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        idp.overrides["exp"] = p.clock() - 3600
        assert "did not work" in (await _sign_in(p, idp)).text
        idp.overrides.clear()
        callback = idp.authorize(await _start(p), "alice", ["mfa"])
        p.clock.now += FLOW_LIFETIME + 1
        assert "did not work" in (await p.client.get(callback)).text
        assert p.store.live() == []


async def test_provider_error_and_unverified_email_are_refused(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        location = await _start(p)
        state = parse_qs(urlsplit(location).query)["state"][0]
        page = await p.client.get(f"/signin/oidc/callback?error=access_denied&state={state}")
        assert "did not work" in page.text
        idp.overrides["email_verified"] = False
        assert "did not work" in (await _sign_in(p, idp)).text
        assert p.store.live() == []


async def test_code_and_tokens_in_no_log(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        location = await _start(p)
        callback = idp.authorize(location, "alice", ["mfa"])
        code = parse_qs(urlsplit(callback).query)["code"][0]
        await p.client.get(callback)
        log = p.audit_path.read_text()
        assert code not in log
        assert parse_qs(urlsplit(location).query)["nonce"][0] not in log
        assert "eyJ" not in log  # no JWT


async def test_oidc_start_is_rate_limited(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path, max_sign_ins_per_minute=2) as (p, _):
        codes = [(await p.client.get("/signin/oidc")).status_code for _ in range(3)]
        assert codes == [303, 303, 429]


async def test_pkce_challenge_is_rfc_7636_s256() -> None:
    # RFC 7636 Appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


_OIDC_LINK = '<a href="/signin/oidc">Sign in with your organisation\'s account</a>'


async def test_signin_page_links_to_the_organisations_sign_in_when_it_is_configured(
    tmp_path: Path,
) -> None:
    async with oidc_portal(tmp_path) as (p, _idp):
        page = await p.client.get("/signin")
        assert page.status_code == 200
        assert page.text.count(_OIDC_LINK) == 1
        # The page after a wrong password offers it too, and the link starts the flow.
        wrong = await p.password_step("alice", "wrong")
        assert _OIDC_LINK in wrong.text
        await _start(p)


async def test_signin_page_has_no_organisation_link_without_oidc(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        page = await p.client.get("/signin")
        assert page.status_code == 200
        assert "/signin/oidc" not in page.text
        assert "organisation" not in page.text
        assert (await p.client.get("/signin/oidc")).status_code == 404
