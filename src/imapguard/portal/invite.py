"""The first access: an invitation link, the account's password, a new TOTP
factor, and only then a full session.

Routes: `GET/POST /invite/{token}` (user name and password), `GET/POST
/invite/enroll` (the QR code, the secret as text, a code to confirm it).

The order, and why:

* `GET /invite/{token}` looks at nothing: it renders the same form for every
  token (known, unknown, used, expired, malformed). Mail scanners and link
  previews follow links; a GET must not spend the invitation, and the page must
  not tell whoever holds a link whether it is still good.
* `POST /invite/{token}` checks the password through the auth service
  (`SignInService.check_invited_password`: the defense counts it, the audit log
  has its `auth` line, failures wait out the same time as any sign-in) and only
  a right password spends the invitation (`auth.invites.redeem`: atomic, once),
  which must name the same account. So a leaked link alone opens nothing, a
  wrong password (a typo) does not burn the link, and a link works once. Every
  failure, whatever failed, is the one page with the one message `FAILED`: a
  distinct "link no longer valid" would confirm the password typed with it.
* After that the browser holds a "password" session that this module also
  remembers as *enrolling* (in memory, with the new secret; a "password" session
  from the ordinary sign-in is not enrolling and cannot reach the enrol step).
  The secret is stored (sealed with the TOTP key) only when a code from the
  user's app confirms it; then the session is raised to "full" (a new token).
  If the enrolment is not finished within the password session's life
  (`sessions.PENDING_LIFETIME`) the user needs a new invitation.
* Every step is one `portal` audit line with the account (never the token).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from imapguard.auth import invites, totp
from imapguard.errors import StateError
from imapguard.portal.kit import Kit, request_id, see_other, unavailable
from imapguard.portal.kit import field as form_field
from imapguard.portal.ports import SignInService
from imapguard.portal.ratelimit import SlidingWindow
from imapguard.portal.sessions import COOKIE, Current, clear_cookie, current
from imapguard.secret import Secret

__all__ = ["FAILED", "Invite"]

FAILED = "The invitation link, user name or password is not right."
CODE_FAILED = "That code is not right. Check the time on your phone and try again."
MAX_USERNAME = 256
MAX_PASSWORD = 1024
_CODE = re.compile(r"[0-9]{6}")
# Enrolments kept in memory (oldest forgotten first): each is a password session
# of PENDING_LIFETIME, at most max_sign_ins_per_minute a minute per source.
_MAX_ENROLLING = 10_000


@dataclass
class _Enrolling:
    user: str
    secret: Secret


@dataclass
class Invite:
    kit: Kit
    service: SignInService
    invite_key: bytes
    totp_key: bytes
    limiter: SlidingWindow
    clock: Callable[[], float]
    _enrolling: OrderedDict[str, _Enrolling] = field(default_factory=OrderedDict)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/invite/enroll", self.enroll_form, methods=["GET"]),
            Route("/invite/enroll", self.enroll, methods=["POST"]),
            Route("/invite/{token}", self.form, methods=["GET"]),
            Route("/invite/{token}", self.password, methods=["POST"]),
        ]

    # -- the link and the password ---------------------------------------------

    async def form(self, request: Request) -> Response:
        return self._form(request, None, "")

    async def password(self, request: Request) -> Response:
        try:
            return await self._password(request)
        except StateError:
            return unavailable()

    async def _password(self, request: Request) -> Response:
        rid = request_id()
        limited = self._limited(request, rid)
        if limited is not None:
            return limited
        token = str(request.path_params.get("token", ""))
        form = await request.form()
        username = form_field(form, "username", MAX_USERNAME)
        password = form_field(form, "password", MAX_PASSWORD)
        ctx = self.kit.context(request, rid)
        store = self.kit.store

        async def redeem(user: str) -> bool:
            # Spends the invitation: only after the password proved right.
            named = await self.kit.call(invites.redeem, store, self.invite_key, token, self.clock())
            if named is not None and named != user:
                self.kit.emit(
                    request, user, "invite", "failed", f"the invitation names {named}", rid=rid
                )
            return named == user

        user: str | None = None
        if username and password and invites.is_token(token):
            check = await self.service.check_invited_password(
                username, Secret(password), redeem, ctx
            )
            user = check.user if check.ok else None
        if user is None:
            self.kit.emit(request, None, "invite", "failed", rid=rid)
            return self._form(request, FAILED, username)
        pending = await self.kit.sessions.start(request, user, ending=current(request))
        self._remember(pending.session.id, _Enrolling(user, totp.new_secret()))
        self.kit.emit(request, user, "invite", "ok", rid=rid)
        return see_other("/invite/enroll", self.kit.sessions.cookie(pending))

    # -- the new factor ----------------------------------------------------------

    async def enroll_form(self, request: Request) -> Response:
        found = self._enrolling_of(request)
        if found is None:
            return see_other("/signin")
        return self._enroll_page(request, found[1], None)

    async def enroll(self, request: Request) -> Response:
        try:
            return await self._enroll(request)
        except StateError:
            return unavailable()

    async def _enroll(self, request: Request) -> Response:
        rid = request_id()
        found = self._enrolling_of(request)
        if found is None:
            return see_other("/signin")
        pending, enrolling = found
        user = enrolling.user
        form = await request.form()
        code = "".join(form_field(form, "code", 16).split())
        now = self.clock()
        step = (
            totp.verify(enrolling.secret, code, now, last_step=None)
            if _CODE.fullmatch(code)
            else None
        )
        if step is None:
            self.kit.emit(request, user, "enroll_totp", "failed", "wrong code", rid=rid)
            return self._enroll_page(request, enrolling, CODE_FAILED)
        sealed = totp.seal(self.totp_key, user, enrolling.secret)
        await self.kit.call(self.kit.store.set_totp, user, sealed, now)
        # The code that confirmed the secret is spent: it cannot sign in again.
        await self.kit.call(self.kit.store.use_totp_step, user, step)
        self._enrolling.pop(pending.session.id, None)
        full = await self.kit.sessions.raise_to_full(request, pending)
        if full is None:
            self.kit.emit(request, user, "enroll_totp", "failed", "the session ended", rid=rid)
            return see_other("/signin", clear_cookie(COOKIE))
        self.kit.emit(request, user, "enroll_totp", "ok", rid=rid)
        return see_other("/", self.kit.sessions.cookie(full))

    # -- helpers -------------------------------------------------------------------

    def _form(self, request: Request, error: str | None, username: str) -> Response:
        # The form posts back to the link (no action: the token is not repeated).
        context = {"error": error, "username": username}
        return self.kit.pages.render(request, "invite.html", context)

    def _enroll_page(self, request: Request, enrolling: _Enrolling, error: str | None) -> Response:
        issuer = self.kit.settings.organisation
        uri = totp.provisioning_uri(enrolling.secret, enrolling.user, issuer)
        secret = enrolling.secret.reveal().decode("ascii")
        context = {
            "error": error,
            "user": enrolling.user,
            "qr": Markup(totp.qr_svg(uri)),  # noqa: S704 - segno's own SVG, no user text
            "secret": " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
        }
        return self.kit.pages.render(request, "invite_enroll.html", context)

    def _enrolling_of(self, request: Request) -> tuple[Current, _Enrolling] | None:
        """The request's "password" session and its enrolment, if it has one."""
        signed_in = current(request)
        if signed_in is None or signed_in.session.level != "password":
            return None
        enrolling = self._enrolling.get(signed_in.session.id)
        if enrolling is None or enrolling.user != signed_in.session.user:
            return None
        return signed_in, enrolling

    def _remember(self, session_id: str, enrolling: _Enrolling) -> None:
        self._enrolling[session_id] = enrolling
        while len(self._enrolling) > _MAX_ENROLLING:
            self._enrolling.popitem(last=False)

    def _limited(self, request: Request, rid: str) -> Response | None:
        ip = Kit.client(request, rid).ip
        refusal = self.limiter.hit(ip, self.clock())
        if refusal is None:
            return None
        if refusal.first:
            reason = f"more than {self.limiter.limit} attempts a minute"
            self.kit.emit(request, None, "invite", "rate_limited", reason, rid=rid)
        return PlainTextResponse(
            "Too many sign-in attempts from your address. "
            f"Try again in {refusal.retry_after} seconds.",
            status_code=429,
            headers={"Retry-After": str(refusal.retry_after)},
        )
