"""Signing in through the organisation's OpenID provider (`[oauth]` issuer,
`[portal] oidc_client_id`): the authorization code flow with PKCE.

Routes: `GET /signin/oidc` (start: to the provider), `GET /signin/oidc/callback`
(the provider sends the browser back with `code` and `state`).

Rules:

* The flow's state, nonce and PKCE verifier stay on the server (in memory,
  `MAX_PENDING` at most, each for `FLOW_LIFETIME`); the browser gets only the
  state, in the `__Host-imapguard-oidc` cookie, which the callback's `state`
  must equal. A callback that another browser was sent to (login CSRF: an
  attacker's own code and state in a link) finds no cookie with that state and
  is refused; a state is used once, whatever the outcome.
  The cookie is SameSite=Lax, not Strict like the session's: the provider's
  redirect back is a cross-site navigation, on which browsers send no Strict
  cookie. It is HttpOnly, Secure, `__Host-`, and holds nothing but the state.
* The code is exchanged and the ID token verified by `auth.oauth.relying_party`
  (signature with the issuer's keys, iss, aud = this client, exp, nonce; the
  username claim under the gateway's account-name rule).
* A token whose `amr`/`acr` shows MFA (`[oauth] require_amr`/`require_acr`, as
  for IMAP) counts as both factors: a full session. Without MFA the provider's
  sign-in is one factor, like a password: an account with a TOTP factor gets a
  "password" session and must give its code (`/signin/code`); one without any
  is refused (it starts with an invitation). Nothing is opened on one factor.
* After the callback the browser is sent on by a page of ours (a same-site
  navigation), not by a redirect: the session cookie is SameSite=Strict and a
  browser would not send it at the end of a redirect chain that began at the
  provider.
* Every callback is one `portal` audit line (`action` "oidc") and one `auth`
  line (mechanism PORTAL-OIDC, listener "portal", so it is in the owner's
  sign-in history); the code and the tokens are in neither.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from imapguard.audit import events
from imapguard.auth.oauth.errors import IssuerUnavailable, TokenRejected
from imapguard.auth.oauth.relying_party import FLOW_LIFETIME, Pending
from imapguard.auth.oauth.tokens import VerifiedToken
from imapguard.errors import StateError
from imapguard.portal.kit import LISTENER, Kit, request_id, see_other, unavailable
from imapguard.portal.ratelimit import SlidingWindow
from imapguard.portal.sessions import current
from imapguard.vocab import Factor

__all__ = ["FLOW_COOKIE", "MAX_PENDING", "Oidc", "OidcSetup", "RelyingPartyPort"]

FLOW_COOKIE = "__Host-imapguard-oidc"
# Flows started and not finished, kept at most (oldest forgotten first): each
# start costs a rate-limited request, so this bounds memory, not honest users.
MAX_PENDING = 10_000
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
    """What compose hands over: the client, and the gateway's account-name rule."""

    rp: RelyingPartyPort
    canonical: Callable[[str], str | None]


@dataclass
class Oidc:
    kit: Kit
    setup: OidcSetup
    limiter: SlidingWindow
    clock: Callable[[], float]
    _pending: OrderedDict[str, Pending] = field(default_factory=OrderedDict)

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
        self._pending[pending.state] = pending
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        return see_other(url, _flow_cookie(pending.state, int(FLOW_LIFETIME)))

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
            self._audit(request, rid, None, "unavailable", f"issuer: {exc.reason}", None)
            return self._page(request, UNAVAILABLE, status_code=503)
        user = self.setup.canonical(verified.user)
        if user is None:
            return self._failed(request, rid, None, "the token's user is no account name")
        how = f"amr {','.join(verified.amr) or '-'}, acr {verified.acr or '-'}"
        if verified.mfa:
            pending_session = await self.kit.sessions.start(request, user, ending=current(request))
            full = await self.kit.sessions.raise_to_full(request, pending_session)
            if full is None:
                return self._failed(request, rid, user, "the session ended meanwhile")
            self._audit(request, rid, user, "ok", f"MFA at the provider ({how})", Factor.OAUTH_MFA)
            self.kit.emit(request, user, "oidc", "ok", how, rid=rid)
            return self._continue(request, "/", self.kit.sessions.cookie(full))
        if await self.kit.call(self.kit.store.get_totp, user) is None:
            self._audit(request, rid, user, "missing_factor", f"no MFA ({how})", Factor.OAUTH)
            self.kit.emit(request, user, "oidc", "no_second_factor", how, rid=rid)
            return self._page(request, NO_FACTOR)
        half = await self.kit.sessions.start(request, user, ending=current(request))
        self._audit(request, rid, user, "ok", f"no MFA ({how}): code next", Factor.OAUTH)
        self.kit.emit(request, user, "oidc", "password_only", how, rid=rid)
        return self._continue(request, "/signin/code", self.kit.sessions.cookie(half))

    # -- helpers -------------------------------------------------------------------

    def _take(self, request: Request) -> Pending | None:
        """The flow this browser started and the callback names (used once)."""
        state = request.query_params.get("state", "")
        cookie = request.cookies.get(FLOW_COOKIE, "")
        if not state or not cookie or len(state) > 64:
            return None
        if not hmac.compare_digest(state.encode(), cookie.encode()):
            return None
        return self._pending.pop(state, None)

    def _failed(self, request: Request, rid: str, user: str | None, reason: str) -> Response:
        self._audit(request, rid, user, "invalid", reason, None)
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
        factor: Factor | None,
    ) -> None:
        self.kit.audit.emit(
            events.Auth(
                session=rid,
                src=self.kit.client(request, rid).ip,
                listener=LISTENER,
                mechanism=MECHANISM,
                user=user,
                method="portal",
                factor=factor.value if factor is not None else None,
                credential="oauth" if user is not None else None,
                result=result,
                reason=reason,
            )
        )

    def _limited(self, request: Request, rid: str) -> Response | None:
        ip = Kit.client(request, rid).ip
        refusal = self.limiter.hit(ip, self.clock())
        if refusal is None:
            return None
        if refusal.first:
            reason = f"more than {self.limiter.limit} attempts a minute"
            self.kit.emit(request, None, "oidc", "rate_limited", reason, rid=rid)
        return PlainTextResponse(
            "Too many sign-in attempts from your address. "
            f"Try again in {refusal.retry_after} seconds.",
            status_code=429,
            headers={"Retry-After": str(refusal.retry_after)},
        )


def _flow_cookie(value: str, max_age: int) -> str:
    # Lax, not Strict: the module docstring says why.
    return f"{FLOW_COOKIE}={value}; Max-Age={max_age}; Path=/; SameSite=Lax; Secure; HttpOnly"
