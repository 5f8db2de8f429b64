"""Signing in through the organisation's OpenID provider (`[oauth]` issuer,
`[portal] oidc_client_id`): the authorization code flow with PKCE.

Routes: `GET /signin/oidc` (start: to the provider), `GET /signin/oidc/callback`
(the provider sends the browser back with `code` and `state`).

Rules:

* The flow's state, nonce, PKCE verifier and start time travel sealed in the
  `__Host-imapguard-oidc` cookie (AES-256-GCM under a key of this purpose
  only, `flow_key`): the browser can neither read the nonce and verifier nor
  change any of them, and the portal keeps nothing in memory (no table to
  fill or evict, any portal process finishes a flow another began). The
  callback's `state` must equal the sealed one: a callback that another
  browser was sent to (login CSRF: an attacker's own code and state in a link)
  finds no cookie with that state and is refused. The cookie is cleared by
  every callback, the seal opens for `FLOW_LIFETIME` only, and the provider
  takes an authorization code once, so a flow is finished once.
  The cookie is SameSite=Lax, not Strict like the session's: the provider's
  redirect back is a cross-site navigation, on which browsers send no Strict
  cookie. It is HttpOnly, Secure and `__Host-`.
* The code is exchanged and the ID token verified by `auth.oauth.relying_party`
  (signature with the issuer's keys, iss, aud = this client, exp, nonce; the
  username claim under the gateway's account-name rule).
* What the token is worth is the auth service's decision
  (`SignInService.check_oidc`), made as for an OAUTHBEARER login: the
  account-name rule, `auth.methods`, the defense (a blocked source or account
  is refused, the attempt counted), the mail server knowing the account, the
  policy, the `auth` line. A token whose `amr`/`acr` shows MFA
  (`[oauth] require_amr`/`require_acr`, as for IMAP) that `auth.sufficient`
  and the policy accept counts as both factors: a full session. Otherwise the
  provider's sign-in is one factor, like a password: an account with a TOTP or
  a passkey gets a "password" session and gives its second factor
  (`/signin/code`); one without any is refused (it starts with an invitation).
  Nothing is opened on one factor.
* After the callback the browser is sent on by a page of ours (a same-site
  navigation), not by a redirect: the session cookie is SameSite=Strict and a
  browser would not send it at the end of a redirect chain that began at the
  provider.
* Every callback is one `portal` audit line (`action` "oidc") and one `auth`
  line (mechanism PORTAL-OIDC, listener "portal", so it is in the owner's
  sign-in history: the service's, or this module's for a callback refused
  before a token was verified); the code and the tokens are in neither.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from imapguard.audit import events
from imapguard.auth.model import AuthContext
from imapguard.auth.oauth.errors import IssuerUnavailable, TokenRejected
from imapguard.auth.oauth.relying_party import FLOW_LIFETIME, Pending
from imapguard.auth.oauth.tokens import VerifiedToken
from imapguard.errors import StateError
from imapguard.portal.kit import LISTENER, Kit, request_id, see_other, unavailable
from imapguard.portal.ports import SignInService
from imapguard.portal.ratelimit import SlidingWindow
from imapguard.portal.sessions import current

__all__ = ["FLOW_COOKIE", "Oidc", "OidcSetup", "RelyingPartyPort", "flow_key"]

FLOW_COOKIE = "__Host-imapguard-oidc"
# A sealed flow is about 250 characters; anything longer is not ours.
MAX_FLOW_COOKIE = 1024
_FLOW_LABEL = b"imapguard/portal-oidc-flow/v1"
_NONCE_BYTES = 12  # AES-GCM's standard nonce (NIST SP 800-38D)
MECHANISM = "PORTAL-OIDC"
FAILED = "Signing in through your organisation's account did not work. Try again."
NO_FACTOR = (
    "Your organisation's sign-in did not use a second factor, and this account has "
    "none here yet. Sign in there with a second factor, or use your invitation link."
)
UNAVAILABLE = "Your organisation's sign-in service cannot be reached. Try again in a minute."


class RelyingPartyPort(Protocol):
    """What this module needs of `auth.oauth.relying_party.RelyingParty`."""

    async def start(self) -> tuple[Pending, str]: ...

    async def finish(self, code: str, pending: Pending) -> VerifiedToken: ...


@dataclass(frozen=True)
class OidcSetup:
    """What compose hands over: the client, and the gateway's account-name rule
    for ID tokens. The auth service applies that rule itself (`check_oidc`);
    `canonical` is what a `SignInService` without the gateway's names (the
    unit tests' fake) maps a token's user with."""

    rp: RelyingPartyPort
    canonical: Callable[[str], str | None]


def flow_key(session_key: bytes) -> bytes:
    """The key that seals a flow, derived from the portal's session key (a
    PRF of it under a label of its own: neither key says anything of the other)."""
    return hmac.new(session_key, _FLOW_LABEL, hashlib.sha256).digest()


def seal_flow(key: bytes, pending: Pending) -> str:
    """`pending` as a cookie value: base64url(nonce || AES-GCM(json))."""
    plain = json.dumps(
        [pending.state, pending.nonce, pending.verifier, pending.started_at],
        separators=(",", ":"),
    ).encode()
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = nonce + AESGCM(key).encrypt(nonce, plain, _FLOW_LABEL)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def open_flow(key: bytes, value: str) -> Pending | None:
    """The flow `seal_flow` sealed into `value`; None for anything else."""
    if not value or len(value) > MAX_FLOW_COOKIE:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        plain = AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _FLOW_LABEL)
        state, nonce, verifier, started_at = json.loads(plain)
    except (binascii.Error, ValueError, InvalidTag, TypeError):
        return None
    if not all(isinstance(v, str) for v in (state, nonce, verifier)):
        return None
    if not isinstance(started_at, int | float):
        return None
    return Pending(state, nonce, verifier, float(started_at))


@dataclass
class Oidc:
    kit: Kit
    setup: OidcSetup
    service: SignInService
    flow_key: bytes
    limiter: SlidingWindow
    clock: Callable[[], float]

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/signin/oidc", self.start, methods=["GET"]),
            Route("/signin/oidc/callback", self.callback, methods=["GET"]),
        ]

    async def start(self, request: Request) -> Response:
        signed_in = current(request)
        if signed_in is not None and signed_in.session.level == "full":
            return see_other("/")
        limited = self._limited(request, request_id())
        if limited is not None:
            return limited
        try:
            pending, url = await self.setup.rp.start()
        except IssuerUnavailable as exc:
            self.kit.emit(request, None, "oidc", "failed", f"issuer: {exc.reason}")
            return self._page(request, UNAVAILABLE, status_code=503)
        sealed = seal_flow(self.flow_key, pending)
        return see_other(url, _flow_cookie(sealed, int(FLOW_LIFETIME)))

    async def callback(self, request: Request) -> Response:
        try:
            return await self._callback(request)
        except StateError:
            return unavailable()

    async def _callback(self, request: Request) -> Response:
        rid = request_id()
        limited = self._limited(request, rid)
        if limited is not None:
            return limited
        pending = self._take(request)
        params = request.query_params
        if pending is None:
            return self._failed(request, rid, None, "state does not match this browser's sign-in")
        error = params.get("error")
        if error is not None:
            return self._failed(request, rid, None, f"the provider answered error={error[:64]}")
        if pending.expired(self.clock()):
            return self._failed(request, rid, None, "the sign-in took too long")
        try:
            verified = await self.setup.rp.finish(params.get("code", ""), pending)
        except TokenRejected as exc:
            return self._failed(request, rid, None, exc.reason)
        except IssuerUnavailable as exc:
            self._audit(request, rid, None, "unavailable", f"issuer: {exc.reason}")
            return self._page(request, UNAVAILABLE, status_code=503)
        ctx = AuthContext(client=Kit.client(request, rid), client_id=None, listener=LISTENER)
        check = await self.service.check_oidc(verified, ctx)
        user = check.user
        how = f"amr {','.join(verified.amr) or '-'}, acr {verified.acr or '-'}"
        if not check.ok or user is None:
            # The service wrote the `auth` line (with the real reason).
            if check.no_factor:
                self.kit.emit(request, check.user, "oidc", "no_second_factor", how, rid=rid)
                return self._page(request, NO_FACTOR)
            self.kit.emit(request, None, "oidc", "failed", how, rid=rid)
            return self._page(request, FAILED)
        if check.full:
            pending_session = await self.kit.sessions.start(request, user, ending=current(request))
            full = await self.kit.sessions.raise_to_full(request, pending_session)
            if full is None:
                return self._failed(request, rid, user, "the session ended meanwhile")
            self.kit.emit(request, user, "oidc", "ok", how, rid=rid)
            return self._continue(request, "/", self.kit.sessions.cookie(full))
        half = await self.kit.sessions.start(request, user, ending=current(request))
        self.kit.emit(request, user, "oidc", "password_only", how, rid=rid)
        return self._continue(request, "/signin/code", self.kit.sessions.cookie(half))

    # -- helpers -------------------------------------------------------------------

    def _take(self, request: Request) -> Pending | None:
        """The flow this browser started, if the callback names it."""
        state = request.query_params.get("state", "")
        if not state or len(state) > 64 or not state.isascii():
            return None
        pending = open_flow(self.flow_key, request.cookies.get(FLOW_COOKIE, ""))
        if pending is None or not hmac.compare_digest(state.encode(), pending.state.encode()):
            return None
        return pending

    def _failed(self, request: Request, rid: str, user: str | None, reason: str) -> Response:
        self._audit(request, rid, user, "invalid", reason)
        self.kit.emit(request, user, "oidc", "failed", reason, rid=rid)
        return self._page(request, FAILED)

    def _page(self, request: Request, message: str, *, status_code: int = 200) -> Response:
        response = self.kit.pages.render(
            request, "oidc_failed.html", {"error": message}, status_code=status_code
        )
        response.headers.append("set-cookie", _flow_cookie("", 0))
        return response

    def _continue(self, request: Request, to: str, session_cookie: str) -> Response:
        response = self.kit.pages.render(request, "oidc_continue.html", {"next": to})
        response.headers.append("set-cookie", session_cookie)
        response.headers.append("set-cookie", _flow_cookie("", 0))
        return response

    def _audit(
        self,
        request: Request,
        rid: str,
        user: str | None,
        result: str,
        reason: str,
    ) -> None:
        self.kit.audit.emit(
            events.Auth(
                session=rid,
                src=self.kit.client(request, rid).ip,
                listener=LISTENER,
                mechanism=MECHANISM,
                user=user,
                method="portal",
                credential="oauth" if user is not None else None,
                result=result,
                reason=reason,
            )
        )

    def _limited(self, request: Request, rid: str) -> Response | None:
        return self.kit.limited(request, self.limiter, rid, "oidc")


def _flow_cookie(value: str, max_age: int) -> str:
    # Lax, not Strict: the module docstring says why.
    return f"{FLOW_COOKIE}={value}; Max-Age={max_age}; Path=/; SameSite=Lax; Secure; HttpOnly"
