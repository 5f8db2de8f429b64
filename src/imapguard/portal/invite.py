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
  and only one that names the same account (another account's link is not
  spent). So a leaked link alone opens nothing, a wrong password (a typo) does
  not burn the link, and a link works once. An account that already has a TOTP
  or a passkey is refused (the service's rule: an invitation never replaces a
  factor; an admin's `user invite --reset` removes them first), and so is the
  enrol step should one appear meanwhile. Every
  failure, whatever failed, is the one page with the one message `FAILED`: a
  distinct "link no longer valid" would confirm the password typed with it.
* After that the browser holds a "password" session and the new secret,
  sealed by `enrolment.begin_totp` for that session (binding `invitation
  <session id>`) and carried from the redirect to the enrol page in the
  `__Host-imapguard-enrol` cookie (HttpOnly, SameSite=Strict, sealed: the
  browser never holds the secret in the clear outside the page that shows it).
  The enrol page is `totp.html`, as on the security page; its POST reads the
  seal from the cookie again (the form's hidden copy is not needed). A
  "password" session from the ordinary
  sign-in has no such seal and cannot reach the enrol step; a seal from
  another session, account or purpose does not open. The secret is stored
  (sealed with the TOTP key) only when a code from the user's app confirms it,
  that code's step is spent (`enrolment.enrol_totp`), and the session is
  raised to "full" (a new token). Nothing is kept in the portal's memory (a
  restarted portal process finishes the enrolment). The enrol step is reached
  only while the password session lives (`sessions.PENDING_LIFETIME`, shorter
  than the seal's `enrolment.PENDING_LIFETIME`): past it the user needs a new
  invitation. A user who left the enrol page for another one (`/`) is sent
  back to it (`signin`'s code page does, for a session that holds the cookie);
  a cookie that no longer opens (expired, another session's) is cleared by the
  enrol page, so that detour is taken once.
* Every step is one `portal` audit line with the account (never the token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from imapguard.auth import invites
from imapguard.errors import StateError
from imapguard.portal.enrolment import PendingTotp, begin_totp, enrol_totp, pending_totp
from imapguard.portal.kit import Kit, request_id, see_other, unavailable
from imapguard.portal.kit import field as form_field
from imapguard.portal.ports import SignInService
from imapguard.portal.ratelimit import SlidingWindow
from imapguard.portal.sessions import (
    COOKIE,
    PENDING_LIFETIME,
    Current,
    clear_cookie,
    current,
    set_cookie,
)
from imapguard.secret import Secret
from imapguard.state.portal import PortalSession

__all__ = ["ENROL_COOKIE", "ENROL_PATH", "FAILED", "Invite", "enrolment_of"]

FAILED = "The invitation link, user name or password is not right."
CODE_FAILED = "That code is not right. Check the time on your phone and try again."
MAX_USERNAME = 256
MAX_PASSWORD = 1024
# The sealed new secret between the password step and the enrol page.
ENROL_COOKIE: Final = "__Host-imapguard-enrol"
ENROL_PATH = "/invite/enroll"


def _binding(session_id: str) -> str:
    """What an invitation's sealed secret is bound to besides the account: its
    "password" session, and a purpose the security page's seals do not have."""
    return f"invitation {session_id}"


def enrolment_of(
    totp_key: bytes, session: PortalSession, sealed: str, now: float, issuer: str
) -> PendingTotp | None:
    """The secret an invitation sealed for this "password" session (the
    enrolment cookie's value), while it is fresh; None for anything else."""
    if session.level != "password":
        return None
    return pending_totp(totp_key, _binding(session.id), session.user, sealed, now, issuer)


@dataclass
class Invite:
    kit: Kit
    service: SignInService
    invite_key: bytes
    totp_key: bytes
    limiter: SlidingWindow
    clock: Callable[[], float]

    def routes(self) -> list[BaseRoute]:
        return [
            Route(ENROL_PATH, self.enroll_form, methods=["GET"]),
            Route(ENROL_PATH, self.enroll, methods=["POST"]),
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
            # Spends the invitation: only after the password proved right, and
            # only an invitation of this account (another's stays good).
            return await self.kit.call(
                invites.redeem, store, self.invite_key, token, user, self.clock()
            )

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
        shown = self._begin(pending)
        self.kit.emit(request, user, "invite", "ok", rid=rid)
        enrol = set_cookie(ENROL_COOKIE, shown.token, int(PENDING_LIFETIME))
        return see_other(ENROL_PATH, self.kit.sessions.cookie(pending), enrol)

    # -- the new factor ----------------------------------------------------------

    async def enroll_form(self, request: Request) -> Response:
        try:
            found = self._enrolling_of(request, self._sealed(request))
            if found is None:
                # A seal that does not open is of no use: drop it (the code page
                # sends a session that holds one here).
                spent = [clear_cookie(ENROL_COOKIE)] if ENROL_COOKIE in request.cookies else []
                return see_other("/signin", *spent)
            shown = found[1]
            return self._enroll_page(request, shown, None)
        except StateError:
            return unavailable()

    async def enroll(self, request: Request) -> Response:
        try:
            return await self._enroll(request)
        except StateError:
            return unavailable()

    async def _enroll(self, request: Request) -> Response:
        rid = request_id()
        signed_in = current(request)
        if signed_in is None or signed_in.session.level != "password":
            return see_other("/signin")
        user = signed_in.session.user
        form = await request.form()
        found = self._enrolling_of(request, self._sealed(request))
        if found is None:
            # No invitation's seal for this session and account: expired, from
            # another session, or an ordinary password session.
            why = "secret expired or not ours"
            self.kit.emit(request, user, "enroll_totp", "failed", why, rid=rid)
            return see_other("/signin")
        pending, shown = found
        if await self._has_factor(user):
            # Enrolled meanwhile (another session): an invitation never replaces it.
            why = "the account has a second factor"
            self.kit.emit(request, user, "enroll_totp", "failed", why, rid=rid)
            await self.kit.call(self.kit.store.revoke_portal_session, user, pending.session.id)
            return see_other("/signin", clear_cookie(COOKIE), clear_cookie(ENROL_COOKIE))
        code = form_field(form, "code", 32)
        if not await enrol_totp(
            self.kit.call, self.kit.store, self.totp_key, user, shown, code, self.clock()
        ):
            self.kit.emit(request, user, "enroll_totp", "failed", "wrong code", rid=rid)
            return self._enroll_page(request, shown, CODE_FAILED)
        done = clear_cookie(ENROL_COOKIE)
        full = await self.kit.sessions.raise_to_full(request, pending)
        if full is None:
            self.kit.emit(request, user, "enroll_totp", "failed", "the session ended", rid=rid)
            return see_other("/signin", clear_cookie(COOKIE), done)
        self.kit.emit(request, user, "enroll_totp", "ok", rid=rid)
        return see_other("/", self.kit.sessions.cookie(full), done)

    # -- helpers -------------------------------------------------------------------

    def _form(self, request: Request, error: str | None, username: str) -> Response:
        # The form posts back to the link (no action: the token is not repeated).
        context = {"error": error, "username": username}
        return self.kit.pages.render(request, "invite.html", context)

    def _begin(self, pending: Current) -> PendingTotp:
        session = pending.session
        return begin_totp(
            self.totp_key,
            _binding(session.id),
            session.user,
            self.clock(),
            self.kit.settings.organisation,
        )

    def _enrolling_of(self, request: Request, sealed: str) -> tuple[Current, PendingTotp] | None:
        """The request's "password" session and the secret its invitation sealed."""
        signed_in = current(request)
        if signed_in is None:
            return None
        organisation = self.kit.settings.organisation
        shown = enrolment_of(self.totp_key, signed_in.session, sealed, self.clock(), organisation)
        return None if shown is None else (signed_in, shown)

    @staticmethod
    def _sealed(request: Request) -> str:
        # `pending_totp` refuses anything longer than a seal before decoding it.
        return request.cookies.get(ENROL_COOKIE, "")

    async def _has_factor(self, user: str) -> bool:
        store = self.kit.store
        if await self.kit.call(store.get_totp, user) is not None:
            return True
        return bool(await self.kit.call(store.list_passkeys, user))

    def _enroll_page(self, request: Request, shown: PendingTotp, error: str | None) -> Response:
        # `cancel` "": the page's Cancel signs out (there is no page to go back to).
        context = {
            "pending": shown,
            "error": error,
            "replacing": False,
            "action": ENROL_PATH,
            "cancel": "",
        }
        return self.kit.pages.render(request, "totp.html", context)

    def _limited(self, request: Request, rid: str) -> Response | None:
        return self.kit.limited(request, self.limiter, rid, "invite")
