"""The user's sign-in methods: the overview, TOTP (enrol, replace, remove) and
recovery codes. Passkeys are `passkey_pages`; the fresh-factor check is `confirm`.

Routes:

    GET  /security                 the methods: TOTP, passkeys, recovery codes left
    GET  /security/totp            a new secret (QR code and text)       fresh
    POST /security/totp            its current code: stored               fresh
    POST /security/totp/remove     remove TOTP                            fresh
    GET  /security/recovery        what recovery codes are
    POST /security/recovery        a new set, shown once                  fresh

Rules (beyond `kit`'s):

* Adding, replacing or removing a factor and making recovery codes need a
  fresh second-factor check; a POST without one is sent to `/confirm` and back
  to the page it came from (nothing is changed by the refused POST).
* The last second factor cannot be removed: an account without TOTP and
  without a passkey can no longer sign in to the portal (the password step
  refuses it), and only a new invitation would set it up again. Recovery codes
  are no factor of their own: they stand in for one. The store counts and
  removes in one transaction (`remove_second_factor`), so two removals at once
  (two tabs, the TOTP here and the last passkey there) cannot both pass.
* Every change (TOTP set up, replaced or removed, new recovery codes) ends the
  account's other portal sessions and tells the owner (`changes`).
* A TOTP secret is stored only once a current code of it was typed
  (`enrolment`); a wrong code stores nothing and the same secret can be tried
  again. Recovery codes are shown once, on the answer to the POST that made them
  (never stored in the clear, the page is `no-store`), and replace every earlier
  set.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from imapguard.auth import recovery
from imapguard.auth.model import NoticeHook
from imapguard.portal.changes import (
    RECOVERY_CODES,
    TOTP_ADDED,
    TOTP_REMOVED,
    TOTP_REPLACED,
    Changes,
)
from imapguard.portal.confirm import to_confirm
from imapguard.portal.enrolment import begin_totp, enrol_totp, pending_totp
from imapguard.portal.kit import Kit, field, see_other
from imapguard.portal.sessions import Current
from imapguard.state.portal import PortalStore

__all__ = ["Factors"]


class Factors:
    def __init__(
        self,
        kit: Kit,
        *,
        totp_key: bytes,
        recovery_key: bytes,
        notice: NoticeHook | None = None,
    ) -> None:
        self.kit = kit
        self.totp_key = totp_key
        self.recovery_key = recovery_key
        self.changes = Changes(kit, notice)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/security", self.overview, methods=["GET"]),
            Route("/security/totp", self.totp_form, methods=["GET"]),
            Route("/security/totp", self.totp_enrol, methods=["POST"]),
            Route("/security/totp/remove", self.totp_remove, methods=["POST"]),
            Route("/security/recovery", self.recovery_form, methods=["GET"]),
            Route("/security/recovery", self.recovery_new, methods=["POST"]),
        ]

    @property
    def store(self) -> PortalStore:
        return self.kit.store

    def _fresh(self, request: Request, back: str) -> Current | Response:
        """The fresh session, or to the confirm page and then `back`."""
        signed_in = self.kit.full(request)
        if isinstance(signed_in, Current) and not self.kit.is_fresh(signed_in):
            return to_confirm(back)
        return signed_in

    # -- the overview ------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user, kit = signed_in.session.user, self.kit
        totp_record = await kit.call(self.store.get_totp, user)
        passkeys = await kit.call(self.store.list_passkeys, user)
        codes = await kit.call(self.store.count_recovery_codes, user)
        context = {
            "totp": totp_record,
            "totp_since": _when(totp_record.created_at) if totp_record is not None else "",
            "totp_locked": totp_record is not None
            and totp_record.locked_until is not None
            and totp_record.locked_until > kit.clock(),
            "passkeys": [
                {
                    "id": p.id,
                    "name": p.name,
                    "created": _when(p.created_at),
                    "last_used": _when(p.last_used_at) if p.last_used_at else "never",
                }
                for p in passkeys
            ],
            "codes": codes,
            "only_factor": (totp_record is not None) + len(passkeys) <= 1,
            "notice": _NOTICES.get(request.query_params.get("done", "")),
        }
        return kit.render(request, signed_in, "security.html", context)

    # -- TOTP --------------------------------------------------------------------

    async def totp_form(self, request: Request) -> Response:
        signed_in = self.kit.fresh(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user = signed_in.session.user
        pending = begin_totp(
            self.totp_key,
            signed_in.session.id,
            user,
            self.kit.clock(),
            self.kit.settings.organisation,
        )
        return await self._totp_page(request, signed_in, pending, None)

    async def totp_enrol(self, request: Request) -> Response:
        signed_in = self._fresh(request, "/security/totp")
        if not isinstance(signed_in, Current):
            return signed_in
        user, kit, now = signed_in.session.user, self.kit, self.kit.clock()
        form = await request.form()
        pending = pending_totp(
            self.totp_key,
            signed_in.session.id,
            user,
            field(form, "pending", 256),
            now,
            kit.settings.organisation,
        )
        if pending is None:
            # Expired, from another session, or tampered with: start again.
            kit.emit(request, user, "totp_enrol", "failed", "secret expired or not ours")
            return see_other("/security/totp")
        replacing = await kit.call(self.store.get_totp, user) is not None
        if not await enrol_totp(
            kit.call, self.store, self.totp_key, user, pending, field(form, "code", 32), now
        ):
            kit.emit(request, user, "totp_enrol", "failed", "wrong code")
            error = "That code is not right. Check the app's clock and enter the current code."
            return await self._totp_page(request, signed_in, pending, error)
        kit.emit(request, user, "totp_enrol", "ok", "replaced" if replacing else None)
        await self.changes.made(request, signed_in, TOTP_REPLACED if replacing else TOTP_ADDED)
        return see_other("/security?done=totp")

    async def _totp_page(
        self, request: Request, signed_in: Current, pending: object, error: str | None
    ) -> Response:
        user = signed_in.session.user
        replacing = await self.kit.call(self.store.get_totp, user) is not None
        context = {
            "pending": pending,
            "error": error,
            "replacing": replacing,
            "action": "/security/totp",
            "cancel": "/security",
        }
        return self.kit.render(request, signed_in, "totp.html", context)

    async def totp_remove(self, request: Request) -> Response:
        signed_in = self._fresh(request, "/security")
        if not isinstance(signed_in, Current):
            return signed_in
        user, kit = signed_in.session.user, self.kit
        removed = await kit.call(self.store.remove_second_factor, user, "totp")
        if removed == "absent":
            return see_other("/security")
        if removed == "last":
            kit.emit(request, user, "totp_remove", "refused", "the last second factor")
            return see_other("/security?done=last")
        kit.emit(request, user, "totp_remove", "ok")
        await self.changes.made(request, signed_in, TOTP_REMOVED)
        return see_other("/security?done=totp_removed")

    # -- recovery codes ------------------------------------------------------------

    async def recovery_form(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        codes = await self.kit.call(self.store.count_recovery_codes, signed_in.session.user)
        return self.kit.render(request, signed_in, "recovery.html", {"left": codes})

    async def recovery_new(self, request: Request) -> Response:
        signed_in = self._fresh(request, "/security/recovery")
        if not isinstance(signed_in, Current):
            return signed_in
        user, kit = signed_in.session.user, self.kit
        codes = recovery.generate()
        digests = [recovery.digest(self.recovery_key, user, code) for code in codes]
        await kit.call(self.store.set_recovery_codes, user, digests, kit.clock())
        kit.emit(request, user, "recovery_codes", "ok", f"{len(codes)} new codes")
        await self.changes.made(request, signed_in, RECOVERY_CODES)
        shown = [recovery.shown(code) for code in codes]
        return kit.render(request, signed_in, "recovery_codes.html", {"codes": shown})


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


# What the overview says after an action (`?done=`): fixed texts only, so the
# query string cannot put words on the page.
_NOTICES = {
    "totp": "Your authenticator app is set up.",
    "totp_removed": "The authenticator app was removed.",
    "passkey": "Your passkey was added.",
    "passkey_removed": "The passkey was removed.",
    "passkey_renamed": "The passkey was renamed.",
    "last": (
        "That is your last second factor: add another one (an authenticator app or a "
        "passkey) before you remove it. Without one you could no longer sign in here."
    ),
}
