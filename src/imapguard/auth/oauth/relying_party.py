"""The portal as an OpenID Connect relying party: the authorization code flow
with PKCE (RFC 7636, S256) against the `[oauth]` issuer.

    start()    -> Pending (state, nonce, PKCE verifier: kept by the caller,
                  server-side) and the authorization URL to send the browser to
    finish()   the code from the callback, the Pending it belongs to
               -> VerifiedToken (the ID token's user, amr, acr, mfa)

Rules:

* Endpoints come from the issuer's discovery document (OpenID Connect
  Discovery 1.0 §4), whose `issuer` must be the configured one and whose
  endpoints must be https; it is cached like the keys (`jwks_cache_seconds`).
  Every document and answer is capped at `MAX_DOCUMENT_BYTES`, every request
  bounded by `http_timeout`, no redirect is followed, nothing of the
  environment (proxies, CA variables) is trusted.
* The code is exchanged at the token endpoint with the PKCE verifier and the
  client's secret (`client_secret_basic`, RFC 6749 §2.3.1).
* The ID token is checked by the gateway's token verifier
  (`auth.oauth.tokens`: signature with the issuer's JWKS, `alg`, `kid`, `iss`,
  `exp`, `nbf`, `iat`, the username claim and `email_verified`, `amr`/`acr`
  and what counts as MFA) with the client id as the audience (an ID token's
  `aud`, OpenID Connect Core §2), then here: `nonce` must be the one this flow
  sent (Core §3.1.3.7 item 11) and, with several audiences, `azp` must be the
  client id (item 5). An access token of the IMAP resource is not an ID token
  for the portal: its `aud` is not the client id.
* A failure is `TokenRejected` (the flow proved nothing) or
  `IssuerUnavailable` (the issuer could not be asked); its reason is for the
  audit log and never holds the code or a token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from imapguard.auth.oauth.errors import IssuerUnavailable, TokenRejected, json_object, show
from imapguard.auth.oauth.keys import MAX_DOCUMENT_BYTES, Clock, issuer_client
from imapguard.auth.oauth.tokens import TokenVerifier, VerifiedToken
from imapguard.config.oauth import OAuthConfig
from imapguard.secret import Secret

__all__ = ["FLOW_LIFETIME", "Pending", "RelyingParty", "pkce_challenge"]

# How long a started sign-in may take at the issuer (typing a password, a code).
FLOW_LIFETIME = 600.0
# An authorization code is a short opaque string (oidc-provider: 43 characters;
# others up to a few hundred); anything longer is not sent to the issuer.
MAX_CODE = 2048


def _random() -> str:
    """256 random bits, base64url without padding."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2, S256: BASE64URL(SHA256(ASCII(verifier)))."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Pending:
    """One started flow: what the callback must match and prove."""

    state: str
    nonce: str
    verifier: str  # the PKCE code verifier (43 characters, RFC 7636 §4.1)
    started_at: float

    def expired(self, now: float) -> bool:
        return not 0 <= now - self.started_at <= FLOW_LIFETIME


@dataclass(frozen=True)
class _Endpoints:
    authorization: str
    token: str
    fetched_at: float


class RelyingParty:
    """The portal's OpenID Connect client for the `[oauth]` issuer.

    `transport` replaces httpx's network transport (tests). Close with `aclose()`."""

    def __init__(
        self,
        settings: OAuthConfig,
        *,
        client_id: str,
        client_secret: Secret,
        redirect_uri: str,
        scope: str = "openid email",
        clock: Clock = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._secret = client_secret
        self.redirect_uri = redirect_uri
        self.scope = scope
        self._clock = clock
        # The ID token's audience is this client (not the IMAP resource).
        id_settings = settings.model_copy(update={"audience": client_id})
        self._verifier = TokenVerifier(id_settings, clock=clock, transport=transport)
        self._client = issuer_client(settings, transport)
        self._endpoints: _Endpoints | None = None
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._verifier.aclose()

    # -- the two halves ------------------------------------------------------------

    async def start(self) -> tuple[Pending, str]:
        """A new flow and the URL of the issuer's authorization endpoint for it."""
        endpoints = await self._discover()
        pending = Pending(_random(), _random(), _random(), self._clock())
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": self.scope,
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": pkce_challenge(pending.verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if urlsplit(endpoints.authorization).query else "?"
        return pending, f"{endpoints.authorization}{separator}{query}"

    async def finish(self, code: str, pending: Pending) -> VerifiedToken:
        """Exchange `code` (from the callback of `pending`'s flow) and verify the
        ID token it brings (module docstring)."""
        if not code or len(code) > MAX_CODE or not code.isascii() or not code.isprintable():
            raise TokenRejected("malformed authorization code")
        endpoints = await self._discover()
        answer = await self._post_json(
            endpoints.token,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.redirect_uri,
                "code_verifier": pending.verifier,
            },
        )
        id_token = answer.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise TokenRejected("the token endpoint sent no id_token")
        raw = Secret(id_token)
        verified = await self._verifier.verify(raw, None)
        claims = _payload(raw)
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(
            nonce.encode("utf-8", "replace"), pending.nonce.encode("ascii")
        ):
            raise TokenRejected("nonce is not the one this sign-in sent")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.client_id:
            raise TokenRejected(f"azp {show(claims.get('azp'))} is not this client")
        return verified

    # -- the issuer ------------------------------------------------------------------

    async def _discover(self) -> _Endpoints:
        now = self._clock()
        known = self._endpoints
        if known is not None and 0 <= now - known.fetched_at < self.settings.jwks_cache_seconds:
            return known
        async with self._lock:
            known = self._endpoints
            if known is not None and 0 <= now - known.fetched_at < self.settings.jwks_cache_seconds:
                return known
            document = await self._request("GET", self.settings.discovery_url, "discovery")
            if document.get("issuer") != self.settings.issuer:
                raise IssuerUnavailable(
                    f"discovery document names issuer {show(document.get('issuer'))}"
                )
            urls = [document.get(k) for k in ("authorization_endpoint", "token_endpoint")]
            for url in urls:
                if not isinstance(url, str) or urlsplit(url).scheme != "https":
                    raise IssuerUnavailable(f"endpoint {show(url)} is not an https:// URL")
            self._endpoints = _Endpoints(str(urls[0]), str(urls[1]), now)
            return self._endpoints

    async def _post_json(self, url: str, form: dict[str, str]) -> dict[str, Any]:
        return await self._request("POST", url, "token endpoint", form)

    async def _request(
        self, method: str, url: str, what: str, form: dict[str, str] | None = None
    ) -> dict[str, Any]:
        auth = (self.client_id, self._secret.reveal().decode("utf-8")) if form else None
        status = 0
        try:
            async with (
                asyncio.timeout(self.settings.http_timeout),
                self._client.stream(method, url, data=form, auth=auth) as response,
            ):
                status = response.status_code
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise IssuerUnavailable(f"{what}: over {MAX_DOCUMENT_BYTES} bytes")
        except TimeoutError:
            raise IssuerUnavailable(
                f"{what}: no answer in {self.settings.http_timeout:g} s"
            ) from None
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            raise IssuerUnavailable(f"{what}: {type(exc).__name__}") from None
        if form is not None and status == 400:
            # RFC 6749 §5.2: the code was refused (used, expired, another client's,
            # or the PKCE verifier does not match): the flow proved nothing.
            raise TokenRejected(f"{what} refused the code: {_error_of(bytes(body))}")
        if status != 200:
            raise IssuerUnavailable(f"{what}: HTTP {status}")
        try:
            return json_object(bytes(body), what)
        except TokenRejected as exc:
            raise IssuerUnavailable(exc.reason) from None


def _payload(token: Secret) -> dict[str, Any]:
    """The claims of a JWS whose signature was already verified."""
    segment = token.reveal().split(b".")[1]
    return json_object(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)), "payload")


def _error_of(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):
        error = None
    return show(error) if error is not None else "no error code"
