"""What every page of the portal needs: the store on its thread, the signed-in
user, the fresh-factor and admin checks, the audit line, the request's client.

Rules for a page module (`account`, `factors`, `app_passwords`, `admin`, ...):

* A page behind sign-in starts with `kit.full(request)` (or `kit.fresh` before
  adding or removing a factor or creating an app password, `kit.admin` for the
  admin pages) and returns the response it gets instead of a session, if any.
* The account a page shows or changes is always the session's user (or, on an
  admin page, the one the admin named); never a user name taken from a form or
  a URL of a user page. A record's id from a form is looked up *within* that
  account (the stores' `user, id` calls), so another account's id changes
  nothing (IDOR).
* Every store call goes through `kit.call` (the store's thread, never the event
  loop the gateway shares); `StateError` from it answers 503 (`unavailable`).
* Every action that changes something is one `portal` audit line with the
  acting user (`kit.emit`); no secret is ever put in one.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from imapguard.audit import AuditLog, events
from imapguard.auth.model import AuthContext, ClientAddress
from imapguard.config.portal import PortalConfig
from imapguard.net import normalize
from imapguard.portal.pages import Pages
from imapguard.portal.ratelimit import SlidingWindow
from imapguard.portal.sessions import COOKIE, Current, Sessions, clear_cookie, current, loaded
from imapguard.state.on_thread import on_thread
from imapguard.state.portal import PortalStore

__all__ = ["LISTENER", "Kit", "field", "request_id", "see_other"]

T = TypeVar("T")
P = ParamSpec("P")

# The listener name the portal's requests carry in the auth service and the audit log.
LISTENER = "portal"
# The longest User-Agent an `auth` event of the portal keeps (Kit.browser).
MAX_USER_AGENT = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Where a page sends a session whose second factor is too old for what it asks.
CONFIRM_PATH = "/confirm"


def request_id() -> str:
    """An id for one request, in the form of the gateway's connection ids."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


def field(form: FormData, name: str, limit: int = 64 * 1024) -> str:
    """A text field of a form ("" when absent, a file, or longer than `limit`)."""
    value = form.get(name)
    return value if isinstance(value, str) and len(value) <= limit else ""


def see_other(path: str, *cookies: str) -> Response:
    response = RedirectResponse(path, status_code=303)
    for cookie in cookies:
        response.headers.append("set-cookie", cookie)
    return response


def unavailable() -> Response:
    return PlainTextResponse(
        "The portal cannot reach its state store. Try again in a minute.", status_code=503
    )


@dataclass(frozen=True)
class Kit:
    settings: PortalConfig
    store: PortalStore
    sessions: Sessions
    pages: Pages
    audit: AuditLog
    clock: Callable[[], float]
    executor: Executor | None
    # Is this account a member of `portal.admin_group`?
    is_admin: Callable[[str], bool]

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn` on the store's thread (inline when the portal has no executor)."""
        return await on_thread(self.executor, fn, *args, **kwargs)

    # -- who is asking ---------------------------------------------------------

    def full(self, request: Request) -> Current | Response:
        """The request's signed-in (both factors) session, or where to send it."""
        signed_in = current(request)
        if signed_in is not None and signed_in.session.level == "full":
            return signed_in
        if signed_in is not None:
            return see_other("/signin/code")
        stale = loaded(request).stale
        return see_other("/signin", *([clear_cookie(COOKIE)] if stale else []))

    def fresh(self, request: Request) -> Current | Response:
        """As `full`, and its last second-factor check at most
        `portal.fresh_factor` seconds old; else to the confirm page, back here after."""
        signed_in = self.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        proved = signed_in.session.second_factor_at
        if proved is not None and self.clock() - proved <= self.settings.fresh_factor:
            return signed_in
        back = request.url.path
        return see_other(f"{CONFIRM_PATH}?next={quote(back, safe='/')}")

    def admin(self, request: Request) -> Current | Response:
        """As `full`, and a member of the admin group; anyone else gets 404 (an
        admin page is not even confirmed to exist)."""
        signed_in = self.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        if not self.is_admin(signed_in.session.user):
            return PlainTextResponse("Not found", status_code=404)
        return signed_in

    def render(
        self,
        request: Request,
        signed_in: Current,
        name: str,
        context: Mapping[str, object] | None = None,
        *,
        status_code: int = 200,
    ) -> Response:
        """A page of a signed-in user, with the navigation (`nav`) of `base.html`."""
        user = signed_in.session.user
        nav = {"user": user, "admin": self.is_admin(user)}
        return self.pages.render(
            request, name, {**(context or {}), "nav": nav}, status_code=status_code
        )

    def limited(
        self,
        request: Request,
        limiter: SlidingWindow,
        rid: str,
        action: str,
        *,
        what: str = "sign-in attempts",
        reason: bool = True,
    ) -> Response | None:
        """None while the request's source is within `limiter`; else the 429 to
        answer (with Retry-After), and one `rate_limited` audit line per window."""
        refusal = limiter.hit(self.client(request, rid).ip, self.clock())
        if refusal is None:
            return None
        if refusal.first:
            why = f"more than {limiter.limit} attempts a minute" if reason else None
            self.emit(request, None, action, "rate_limited", why, rid=rid)
        return PlainTextResponse(
            f"Too many {what} from your address. Try again in {refusal.retry_after} seconds.",
            status_code=429,
            headers={"Retry-After": str(refusal.retry_after)},
        )

    def is_fresh(self, signed_in: Current) -> bool:
        proved = signed_in.session.second_factor_at
        return proved is not None and self.clock() - proved <= self.settings.fresh_factor

    # -- what it is ------------------------------------------------------------

    @staticmethod
    def client(request: Request, rid: str | None = None) -> ClientAddress:
        client, server = request.scope.get("client"), request.scope.get("server")
        ip, port = (normalize(str(client[0])), int(client[1])) if client else ("", 0)
        local_ip, local_port = (str(server[0]), int(server[1] or 0)) if server else ("", 0)
        return ClientAddress(ip, port, local_ip, local_port, rid or request_id())

    @staticmethod
    def browser(request: Request) -> str | None:
        """The browser's User-Agent as the `auth` event's client (what the
        sign-in history shows): one line of at most `MAX_USER_AGENT` characters,
        None when absent. The browser's own words, never trusted for anything."""
        agent = " ".join(_CONTROL.sub(" ", request.headers.get("user-agent", "")).split())
        return agent[:MAX_USER_AGENT] or None

    def context(self, request: Request, rid: str | None = None) -> AuthContext:
        return AuthContext(client=self.client(request, rid), client_id=None, listener=LISTENER)

    def emit(
        self,
        request: Request,
        user: str | None,
        action: str,
        result: str = "ok",
        reason: str | None = None,
        *,
        rid: str | None = None,
    ) -> None:
        """One `portal` audit line for an action of `user` (never a secret)."""
        self.audit.emit(
            events.Portal(
                session=rid or request_id(),
                src=self.client(request, rid).ip,
                user=user,
                action=action,
                result=result,
                reason=reason,
            )
        )
