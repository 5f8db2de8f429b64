"""The fresh second-factor check: `kit.fresh` sends a signed-in session whose
last second factor is too old here, with the page to go back to.

Routes:

    GET  /confirm?next=/path            the account's methods (code, passkey, recovery code)
    POST /confirm                        one of them; on success back to `next`
    POST /confirm/passkey-options        the passkey challenge (JSON; X-CSRF-Token)

Rules:

* The factor is checked by the auth service as at sign-in (the same defense
  counting, lockouts and audit events); the portal's own per-source rate limit
  applies, and a session that sends `MAX_CODE_FAILURES` wrong factors here is
  ended: a stolen session cookie cannot be used to grind codes.
* Success raises the session anew (`Sessions.raise_to_full`: a new session id
  and cookie token, the second factor's time now), so a token seen before the
  check does not carry its freshness; its absolute expiry stays (a confirm is
  no sign-in: it proves no password).
* `next` is only ever a path of this portal (`local_path`): anything else,
  a scheme, `//host`, a backslash, a control character, goes to `/` (no open
  redirect through the confirm page).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from imapguard.portal.kit import CONFIRM_PATH, Kit, field, request_id, see_other
from imapguard.portal.ports import SignInService
from imapguard.portal.ratelimit import SlidingWindow
from imapguard.portal.second_factor import SecondFactor, methods_of
from imapguard.portal.sessions import COOKIE, Current, clear_cookie

__all__ = ["MAX_CONFIRM_FAILURES", "Confirm", "local_path", "to_confirm"]

# Wrong factors a session may send to the confirm page before it is ended (as
# many as a "password" session may send at sign-in).
MAX_CONFIRM_FAILURES = 5
# Sessions whose wrong factors are counted (oldest forgotten first): memory bound.
_MAX_COUNTED = 10_000
# A path of the portal is short; a longer `next` is nobody's page.
MAX_NEXT = 512
# What a path may hold: no backslash (browsers read it as a slash), no control
# character, no space, nothing that starts a second authority.
_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*")
FAILED = "That did not work. Try again."


def local_path(text: str | None) -> str:
    """`text` if it is a path of this portal (with an optional query), else "/"."""
    if text is None or len(text) > MAX_NEXT or _PATH.fullmatch(text) is None:
        return "/"
    parts = urlsplit(text)
    if parts.scheme or parts.netloc or parts.fragment:
        return "/"
    return text


def to_confirm(back: str) -> Response:
    """To the confirm page, and then back to `back` (a local path)."""
    return see_other(f"{CONFIRM_PATH}?next={quote(local_path(back), safe='/')}")


class Confirm:
    def __init__(self, kit: Kit, service: SignInService) -> None:
        self.kit = kit
        self.factor = SecondFactor(service, kit.clock)
        self.limiter = SlidingWindow(kit.settings.max_sign_ins_per_minute)
        self._failures: OrderedDict[str, int] = OrderedDict()

    def routes(self) -> list[BaseRoute]:
        return [
            Route(CONFIRM_PATH, self.form, methods=["GET"]),
            Route(CONFIRM_PATH, self.check, methods=["POST"]),
            Route(f"{CONFIRM_PATH}/passkey-options", self.passkey_options, methods=["POST"]),
        ]

    async def form(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        return await self._page(request, signed_in, request.query_params.get("next"), None)

    async def _page(
        self, request: Request, signed_in: Current, back: str | None, error: str | None
    ) -> Response:
        methods = await methods_of(self.kit, signed_in.session.user)
        context = {"methods": methods, "next": local_path(back), "error": error}
        return self.kit.render(request, signed_in, "confirm.html", context)

    async def passkey_options(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        options = await self.factor.options(signed_in.session, "confirm")
        if options is None:
            return PlainTextResponse("No passkey is registered.", status_code=404)
        return Response(options, media_type="application/json")

    async def check(self, request: Request) -> Response:
        rid, kit = request_id(), self.kit
        limited = kit.limited(request, self.limiter, rid, "confirm", what="attempts", reason=False)
        if limited is not None:
            return limited
        signed_in = kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user, session = signed_in.session.user, signed_in.session
        form = await request.form()
        back = local_path(field(form, "next", MAX_NEXT))
        method, ok = await self.factor.check(session, "confirm", form, kit.context(request, rid))
        if not ok:
            if self._failed(session.id) < MAX_CONFIRM_FAILURES:
                kit.emit(request, user, "confirm", "failed", method, rid=rid)
                return await self._page(request, signed_in, back, FAILED)
            await kit.sessions.end(signed_in)
            kit.emit(request, user, "confirm", "failed", f"{method}; too many, signed out", rid=rid)
            context = {"error": "You were signed out. Sign in again.", "username": ""}
            return kit.pages.render(request, "signin.html", context, signed_out=True)
        self._failures.pop(session.id, None)
        raised = await kit.sessions.raise_to_full(request, signed_in, keep_expiry=True)
        if raised is None:
            kit.emit(request, user, "confirm", "failed", "the session ended meanwhile", rid=rid)
            return see_other("/signin", clear_cookie(COOKIE))
        kit.emit(request, user, "confirm", "ok", method, rid=rid)
        return see_other(back, kit.sessions.cookie(raised))

    def _failed(self, session_id: str) -> int:
        failures = self._failures.pop(session_id, 0) + 1
        self._failures[session_id] = failures
        while len(self._failures) > _MAX_COUNTED:
            self._failures.popitem(last=False)
        return failures
