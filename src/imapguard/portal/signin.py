"""Signing in and out: the password step, the code step and sign-out.

Routes: `GET/POST /signin` (user name and password), `GET/POST /signin/code`
(the second factor: the 6-digit TOTP code, a passkey or a recovery code, as
`second_factor` reads them), `POST /signin/passkey-options` (the passkey
challenge, JSON, for the page's script), `POST /signout`. The first page behind
them, `GET /`, is `account`; the first access by invitation is `invite`, the
organisation's OpenID provider `oidc` (the sign-in page links to it when it is
configured).

Rules:

* The password and the code are checked only through `SignInService` (the
  auth service: the gateway's own password check, factors, defense counting
  and `auth` audit events); the portal never compares a credential itself.
* A wrong password and a wrong code (and a malformed or too long one) get the
  same page: status 200, the form again, and the one message `FAILED`, never
  which part failed. A right password of an account that has no second factor
  gets that same page too (the audit line says `no_second_factor`): a distinct
  answer would confirm the password to whoever typed it, and it may open other
  doors (SMTP, webmail). The sign-in page always says where an account without
  a factor starts: its invitation link.
* Every POST to `/signin` or `/signin/code` first passes the per-source rate
  limit (429 with `Retry-After`). Whatever the method, a wrong second factor
  counts toward the same `MAX_CODE_FAILURES`.
* A passkey's challenge is made by the auth service from the account's own
  passkeys and kept server-side for the "password" session, used once.
* A right password starts a new "password" session (a new cookie; whatever
  session the browser had is ended), which reaches only the code step and
  sign-out, for `PENDING_LIFETIME` and at most `MAX_CODE_FAILURES` wrong codes
  (then it ends: the next try starts with the password, which the defense
  counts); a right code replaces it with a new "full" session and a new cookie.
* A page that needs a full session answers 303 to `/signin` otherwise. A
  "password" session of an invitation that holds its enrolment cookie (a seal
  of this session that opens) belongs on `/invite/enroll`, not here: the code
  page sends it there. An account with no second factor at all is told so on
  the code page, not asked for a code it cannot have.
* Every step is one `portal` audit line, with the request id that the auth
  service's own `auth` line carries as its session.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from imapguard.audit import AuditLog, events
from imapguard.auth.model import AuthContext
from imapguard.portal.invite import ENROL_COOKIE, ENROL_PATH, enrolment_of
from imapguard.portal.kit import LISTENER, Kit, field, request_id, see_other
from imapguard.portal.pages import Pages
from imapguard.portal.ports import SignInService
from imapguard.portal.ratelimit import SlidingWindow
from imapguard.portal.second_factor import SecondFactor, methods_of
from imapguard.portal.sessions import COOKIE, Current, Sessions, clear_cookie, current, loaded
from imapguard.secret import Secret

__all__ = ["FAILED", "LISTENER", "SignIn", "request_id"]

FAILED = "The user name, password or code is not right."
# Longer input is refused before the auth service sees it (the same FAILED).
MAX_USERNAME = 256
MAX_PASSWORD = 1024
# Wrong codes a "password" session may send before it is ended.
MAX_CODE_FAILURES = 5
# Sessions whose wrong codes are counted (oldest forgotten first): memory bound.
_MAX_COUNTED = 10_000


class SignIn:
    def __init__(
        self,
        *,
        service: SignInService,
        sessions: Sessions,
        pages: Pages,
        limiter: SlidingWindow,
        audit: AuditLog,
        clock: Callable[[], float],
        kit: Kit,
        totp_key: bytes | None = None,
    ) -> None:
        self.kit = kit
        # Opens an invitation's enrolment cookie (None: no invitation pages).
        self.totp_key = totp_key
        self.service = service
        self.sessions = sessions
        self.pages = pages
        self.limiter = limiter
        self.audit = audit
        self.clock = clock
        self._code_failures: OrderedDict[str, int] = OrderedDict()
        self.factor = SecondFactor(service, clock)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/signin", self.password_form, methods=["GET"]),
            Route("/signin", self.password, methods=["POST"]),
            Route("/signin/code", self.code_form, methods=["GET"]),
            Route("/signin/code", self.code, methods=["POST"]),
            Route("/signin/passkey-options", self.passkey_options, methods=["POST"]),
            Route("/signout", self.sign_out, methods=["POST"]),
        ]

    # -- pages ------------------------------------------------------------------

    async def password_form(self, request: Request) -> Response:
        elsewhere = self._elsewhere(request)
        if elsewhere is not None:
            return elsewhere
        return self.pages.render(request, "signin.html", {"error": None, "username": ""})

    async def code_form(self, request: Request) -> Response:
        pending = self._pending(request)
        if pending is None:
            return self._elsewhere(request) or self._to_signin(request)
        if self._enrolling(request, pending):
            # In the middle of an invitation's enrolment (left for `/`, say).
            return see_other(ENROL_PATH)
        return await self._code_page(request, pending, None)

    async def _code_page(self, request: Request, pending: Current, error: str | None) -> Response:
        methods = await methods_of(self.kit, pending.session.user)
        # No factor and no recovery code: an invitation whose enrolment ended
        # (or an admin's reset meanwhile). There is no code to ask for.
        none = methods.factors == 0 and methods.recovery_codes == 0
        context = {"error": error, "methods": methods, "no_factor": none}
        return self.pages.render(request, "code.html", context)

    async def passkey_options(self, request: Request) -> Response:
        pending = self._pending(request)
        if pending is None:
            return self._elsewhere(request) or self._to_signin(request)
        options = await self.factor.options(pending.session, "sign_in")
        if options is None:
            return PlainTextResponse("No passkey is registered.", status_code=404)
        return Response(options, media_type="application/json")

    # -- steps ------------------------------------------------------------------

    async def password(self, request: Request) -> Response:
        rid = request_id()
        limited = self._limited(request, rid, "sign_in")
        if limited is not None:
            return limited
        elsewhere = self._elsewhere(request)
        if elsewhere is not None:
            return elsewhere
        form = await request.form()
        username, password = field(form, "username"), field(form, "password")
        ctx = AuthContext(
            client=Kit.client(request, rid), client_id=Kit.browser(request), listener=LISTENER
        )
        if not username or len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
            ok, user, has_factor = False, None, False
        else:
            check = await self.service.check_password(username, Secret(password), ctx)
            ok, user = check.ok and check.user is not None, check.user
            has_factor = check.has_totp or check.has_passkey
        if not ok or user is None:
            self._emit(rid, ctx, None, "sign_in", "failed")
            context = {"error": FAILED, "username": username[:MAX_USERNAME]}
            return self.pages.render(request, "signin.html", context)
        if not has_factor:
            # The same page as a wrong password (module docstring).
            self._emit(rid, ctx, user, "sign_in", "no_second_factor")
            context = {"error": FAILED, "username": username}
            return self.pages.render(request, "signin.html", context)
        pending = await self.sessions.start(request, user, ending=current(request))
        self._emit(rid, ctx, user, "sign_in", "ok")
        # An invitation's enrolment the browser was in is over: its session ended.
        enrolling = [clear_cookie(ENROL_COOKIE)] if ENROL_COOKIE in request.cookies else []
        return see_other("/signin/code", self.sessions.cookie(pending), *enrolling)

    async def code(self, request: Request) -> Response:
        rid = request_id()
        limited = self._limited(request, rid, "second_factor")
        if limited is not None:
            return limited
        pending = self._pending(request)
        if pending is None:
            return self._elsewhere(request) or self._to_signin(request)
        user = pending.session.user
        form = await request.form()
        ctx = AuthContext(
            client=Kit.client(request, rid), client_id=Kit.browser(request), listener=LISTENER
        )
        method, ok = await self.factor.check(pending.session, "sign_in", form, ctx)
        if not ok:
            if self._code_failed(pending.session.id) < MAX_CODE_FAILURES:
                self._emit(rid, ctx, user, "second_factor", "failed", method)
                return await self._code_page(request, pending, FAILED)
            await self.sessions.end(pending)
            self._emit(rid, ctx, user, "second_factor", "failed", f"{method}; too many wrong")
            context = {"error": FAILED, "username": ""}
            return self.pages.render(request, "signin.html", context, signed_out=True)
        self._code_failures.pop(pending.session.id, None)
        full = await self.sessions.raise_to_full(request, pending)
        if full is None:
            self._emit(rid, ctx, user, "second_factor", "failed", "the session ended meanwhile")
            return see_other("/signin", clear_cookie(COOKIE))
        self._emit(rid, ctx, user, "second_factor", "ok", method)
        return see_other("/", self.sessions.cookie(full))

    async def sign_out(self, request: Request) -> Response:
        signed_in = current(request)
        if signed_in is not None:
            await self.sessions.end(signed_in)
            ctx = AuthContext(
                client=Kit.client(request, request_id()), client_id=None, listener=LISTENER
            )
            self._emit(ctx.client.session, ctx, signed_in.session.user, "sign_out", "ok")
        # An invitation's enrolment cancelled: its sealed secret goes too.
        enrolling = [clear_cookie(ENROL_COOKIE)] if ENROL_COOKIE in request.cookies else []
        return see_other("/signin", clear_cookie(COOKIE), *enrolling)

    # -- helpers ------------------------------------------------------------------

    @staticmethod
    def _pending(request: Request) -> Current | None:
        signed_in = current(request)
        return (
            signed_in if signed_in is not None and signed_in.session.level == "password" else None
        )

    def _enrolling(self, request: Request, pending: Current) -> bool:
        """Does the request hold the enrolment cookie of this session's invitation?"""
        sealed = request.cookies.get(ENROL_COOKIE)
        if not sealed or self.totp_key is None:
            return False
        issuer = self.kit.settings.organisation
        return (
            enrolment_of(self.totp_key, pending.session, sealed, self.clock(), issuer) is not None
        )

    @staticmethod
    def _elsewhere(request: Request) -> Response | None:
        """Where a browser that already has a session belongs (None: nowhere else)."""
        signed_in = current(request)
        if signed_in is None:
            return None
        return see_other("/" if signed_in.session.level == "full" else "/signin/code")

    @staticmethod
    def _to_signin(request: Request) -> Response:
        stale = loaded(request).stale
        return see_other("/signin", *([clear_cookie(COOKIE)] if stale else []))

    def _code_failed(self, session_id: str) -> int:
        """Count a wrong code of a "password" session; how many it has sent."""
        failures = self._code_failures.pop(session_id, 0) + 1
        self._code_failures[session_id] = failures
        while len(self._code_failures) > _MAX_COUNTED:
            self._code_failures.popitem(last=False)
        return failures

    def _limited(self, request: Request, rid: str, action: str) -> Response | None:
        return self.kit.limited(request, self.limiter, rid, action)

    def _emit(
        self,
        rid: str,
        ctx: AuthContext,
        user: str | None,
        action: str,
        result: str,
        reason: str | None = None,
    ) -> None:
        self.audit.emit(
            events.Portal(
                session=rid,
                src=ctx.client.ip,
                user=user,
                action=action,
                result=result,
                reason=reason,
            )
        )
