"""Passkeys on the security page: register, rename, remove.

Routes:

    GET  /security/passkeys/new        the registration page                fresh
    POST /security/passkeys/options    the creation options (JSON)           fresh
    POST /security/passkeys            the browser's credential: stored      fresh
    POST /security/passkeys/rename     a passkey's name                      full
    POST /security/passkeys/remove     remove one                            fresh

Rules (beyond `kit`'s and `auth.passkeys`'):

* The creation options go to the page's script (`static/webauthn.js`) as JSON
  from a POST with the X-CSRF-Token header; their challenge stays on the
  server, bound to the session, for one use within `challenges.LIFETIME`. The
  script puts the browser's credential into the form and submits it, so the
  answer is an ordinary page (errors included).
* A passkey id from a form is looked up within the session's account only
  (`rename_passkey`/`remove_passkey` take the user): another account's id
  changes nothing and says so no differently than an unknown one.
* A name is 1 to `MAX_NAME` printable characters (`text.first_unsafe`).
* The last second factor is not removed (see `factors`: the store counts and
  removes in one transaction). At most `state.portal.MAX_PASSKEYS` per account
  (the store refuses more).
* Adding or removing one ends the account's other portal sessions and tells the
  owner (`changes`); renaming does neither.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from imapguard.auth.model import NoticeHook
from imapguard.auth.passkeys import MAX_RESPONSE_BYTES, PasskeyRefused, Passkeys
from imapguard.portal.challenges import Challenges
from imapguard.portal.changes import PASSKEY_ADDED, PASSKEY_REMOVED, Changes
from imapguard.portal.confirm import to_confirm
from imapguard.portal.kit import CONFIRM_PATH, Kit, field, see_other
from imapguard.portal.sessions import Current
from imapguard.state.portal import MAX_PASSKEYS
from imapguard.text import first_unsafe

__all__ = ["MAX_NAME", "PasskeyPages"]

MAX_NAME = 64
# A WebAuthn user handle: random, at most 64 bytes (WebAuthn §5.4.3); 32 here.
HANDLE_BYTES = 32
NEW_PAGE = "/security/passkeys/new"


def _name(text: str) -> str | None:
    name = text.strip()
    if not name or len(name) > MAX_NAME or first_unsafe(name) is not None:
        return None
    return name


class PasskeyPages:
    def __init__(self, kit: Kit, passkeys: Passkeys, notice: NoticeHook | None = None) -> None:
        self.kit = kit
        self.passkeys = passkeys
        self.challenges = Challenges()
        self.changes = Changes(kit, notice)

    def routes(self) -> list[BaseRoute]:
        return [
            Route(NEW_PAGE, self.new_form, methods=["GET"]),
            Route("/security/passkeys/options", self.options, methods=["POST"]),
            Route("/security/passkeys", self.register, methods=["POST"]),
            Route("/security/passkeys/rename", self.rename, methods=["POST"]),
            Route("/security/passkeys/remove", self.remove, methods=["POST"]),
        ]

    def _fresh(self, request: Request, back: str) -> Current | Response:
        signed_in = self.kit.full(request)
        if isinstance(signed_in, Current) and not self.kit.is_fresh(signed_in):
            return to_confirm(back)
        return signed_in

    async def new_form(self, request: Request) -> Response:
        signed_in = self.kit.fresh(request)
        if not isinstance(signed_in, Current):
            return signed_in
        return await self._page(request, signed_in, None, "")

    async def _page(
        self, request: Request, signed_in: Current, error: str | None, name: str
    ) -> Response:
        existing = await self.kit.call(self.kit.store.list_passkeys, signed_in.session.user)
        context = {
            "error": error,
            "name": name[:MAX_NAME],
            "full": len(existing) >= MAX_PASSKEYS,
            "max_name": MAX_NAME,
        }
        return self.kit.render(request, signed_in, "passkey_new.html", context)

    async def options(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        if not self.kit.is_fresh(signed_in):
            # The script sends the browser there (a fetch would follow a 303 silently).
            location = f"{CONFIRM_PATH}?next={NEW_PAGE}"
            return JSONResponse({"location": location}, status_code=401)
        user, kit = signed_in.session.user, self.kit
        handle = await kit.call(
            kit.store.user_handle, user, secrets.token_bytes(HANDLE_BYTES), kit.clock()
        )
        existing = await kit.call(kit.store.list_passkeys, user)
        made = self.passkeys.registration(user, handle, existing)
        self.challenges.keep(signed_in.session.id, "register", made.challenge, kit.clock())
        return Response(made.options, media_type="application/json")

    async def register(self, request: Request) -> Response:
        signed_in = self._fresh(request, NEW_PAGE)
        if not isinstance(signed_in, Current):
            return signed_in
        user, kit = signed_in.session.user, self.kit
        form = await request.form()
        typed = field(form, "name", 4 * MAX_NAME)
        challenge = self.challenges.take(signed_in.session.id, "register", kit.clock())
        existing = await kit.call(kit.store.list_passkeys, user)
        name = _name(typed) if typed.strip() else f"Passkey {len(existing) + 1}"
        if name is None:
            error = f"A name is 1 to {MAX_NAME} letters, digits, spaces or signs."
            return await self._page(request, signed_in, error, typed)
        credential = field(form, "credential", MAX_RESPONSE_BYTES)
        if challenge is None or not credential:
            kit.emit(request, user, "passkey_add", "failed", "no or a spent challenge")
            error = "The passkey was not created in time. Try again."
            return await self._page(request, signed_in, error, name)
        try:
            response = credential.encode("utf-8", "replace")
            new = self.passkeys.verify_registration(response, challenge)
        except PasskeyRefused as exc:
            kit.emit(request, user, "passkey_add", "failed", exc.reason)
            return await self._page(request, signed_in, "The passkey was refused.", name)
        record = await kit.call(
            kit.store.add_passkey,
            user,
            new.credential_id,
            new.public_key,
            new.sign_count,
            name,
            new.aaguid,
            kit.clock(),
        )
        if record is None:
            reason = f"already registered, or {MAX_PASSKEYS} passkeys"
            kit.emit(request, user, "passkey_add", "failed", reason)
            error = f"This passkey is already registered, or you have {MAX_PASSKEYS} already."
            return await self._page(request, signed_in, error, name)
        kit.emit(request, user, "passkey_add", "ok", f"passkey {record.id}")
        await self.changes.made(request, signed_in, PASSKEY_ADDED)
        return see_other("/security?done=passkey")

    async def rename(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user, kit = signed_in.session.user, self.kit
        form = await request.form()
        passkey_id, name = field(form, "id", 64), _name(field(form, "name", 4 * MAX_NAME))
        if name is None:
            return see_other("/security")
        if not passkey_id or not await kit.call(kit.store.rename_passkey, user, passkey_id, name):
            kit.emit(request, user, "passkey_rename", "failed", "no such passkey of the account")
            return see_other("/security")
        kit.emit(request, user, "passkey_rename", "ok", f"passkey {passkey_id}")
        return see_other("/security?done=passkey_renamed")

    async def remove(self, request: Request) -> Response:
        signed_in = self._fresh(request, "/security")
        if not isinstance(signed_in, Current):
            return signed_in
        user, kit = signed_in.session.user, self.kit
        form = await request.form()
        passkey_id = field(form, "id", 64)
        # Looked up within the account, counted and removed in one transaction.
        removed = await kit.call(kit.store.remove_second_factor, user, f"passkey:{passkey_id}")
        if removed == "absent":
            kit.emit(request, user, "passkey_remove", "failed", "no such passkey of the account")
            return see_other("/security")
        if removed == "last":
            kit.emit(request, user, "passkey_remove", "refused", "the last second factor")
            return see_other("/security?done=last")
        kit.emit(request, user, "passkey_remove", "ok", f"passkey {passkey_id}")
        await self.changes.made(request, signed_in, PASSKEY_REMOVED)
        return see_other("/security?done=passkey_removed")
