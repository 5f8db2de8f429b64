"""The overview page ("Your account", `GET /`) and the portal sessions list.

Routes: `GET /` (the account's factors and devices at a glance, with links, and
its portal sessions, this one marked), `POST /sessions/revoke` ("sign out" one
session by its id), `POST /sessions/revoke-others` (every session but this one).

Rules: a session id from a form is looked up within the signed-in account only
(`revoke_portal_session(user, id)`): another account's id ends nothing. Ending
the request's own session is signing out (its cookie is cleared). Each is one
`portal` audit line.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from imapguard.errors import StateError
from imapguard.portal.kit import Kit, field, see_other, unavailable
from imapguard.portal.sessions import COOKIE, Current, clear_cookie

__all__ = ["Account", "notice_of", "utc"]

# Record ids the stores hand out are short hex or base32 text.
RECORD_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")

# What a page may say after a POST (`?done=`): a fixed list, never text from the URL.
NOTICES = {
    "session-ended": "That session is signed out.",
    "others-ended": "Every other session is signed out.",
    "nothing": "Nothing changed: it was not found, or it was already gone.",
    "revoked": "Revoked. Mail clients using it are disconnected within seconds.",
    "approved": "Approved. The device can now sign in from the address it used.",
    "rejected": "Rejected. That device cannot sign in.",
}


def utc(ts: float | None) -> str:
    """A time for a page: "2026-12-07 14:30 UTC", or "never"."""
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def notice_of(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("done", ""))


class Account:
    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.overview, methods=["GET"]),
            Route("/sessions/revoke", self.revoke, methods=["POST"]),
            Route("/sessions/revoke-others", self.revoke_others, methods=["POST"]),
        ]

    async def overview(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user = signed_in.session.user
        store, now = self.kit.store, self.kit.clock()
        try:
            totp = await self.kit.call(store.get_totp, user)
            passkeys = await self.kit.call(store.list_passkeys, user)
            codes = await self.kit.call(store.count_recovery_codes, user)
            passwords = await self.kit.call(store.list_app_passwords, user)
            devices = await self.kit.call(store.list_devices, user)
            sessions = await self.kit.call(store.list_portal_sessions, user, now)
        except StateError:
            return unavailable()
        context = {
            "user": user,
            "notice": notice_of(request),
            "totp": totp is not None,
            "passkeys": len(passkeys),
            "recovery_codes": codes,
            "app_passwords": len(passwords),
            "trusted": sum(d.trusted_at(now) for d in devices),
            "pending": sum(d.status == "pending" for d in devices),
            "sessions": [
                {
                    "id": s.id,
                    "this": s.id == signed_in.session.id,
                    "created": utc(s.created_at),
                    "seen": utc(s.last_seen_at),
                    "address": s.address,
                    "agent": s.user_agent or "unknown browser",
                }
                for s in sessions
                if s.level == "full" and now - s.last_seen_at <= self.kit.settings.session_idle
            ],
        }
        return self.kit.render(request, signed_in, "account.html", context)

    async def revoke(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user = signed_in.session.user
        session_id = field(await request.form(), "session", 64)
        ended = False
        if RECORD_ID.fullmatch(session_id):
            try:
                ended = await self.kit.call(self.kit.store.revoke_portal_session, user, session_id)
            except StateError:
                return unavailable()
        self.kit.emit(
            request, user, "session_revoke", "ok" if ended else "not_found", session_id[:64]
        )
        if ended and session_id == signed_in.session.id:
            return see_other("/signin", clear_cookie(COOKIE))
        return see_other("/?done=session-ended" if ended else "/?done=nothing")

    async def revoke_others(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user = signed_in.session.user
        try:
            count = await self.kit.call(
                self.kit.store.revoke_portal_sessions, user, keep=signed_in.session.id
            )
        except StateError:
            return unavailable()
        self.kit.emit(request, user, "session_revoke_others", "ok", f"{count} ended")
        return see_other("/?done=others-ended")
