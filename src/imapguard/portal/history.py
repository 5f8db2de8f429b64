"""Recent sign-ins, successful and failed, each with "this wasn't me".

Routes: `GET /sign-ins` (the account's sign-in history of the last
`HISTORY_DAYS`, newest first, at most `HISTORY_ROWS`), `POST /sign-ins/disown`
(one of them, by id).

Rules:

* "This wasn't me" is `auth.disown.disown` on the store's thread: the sign-in
  marked, the credential it used revoked (its live sessions end), its source
  blocked for this account, and for everyone only when no other account logged
  in from it (`Defense.owner_report`: one user cannot shut a shared address for
  all); then the admins are told (the notifier runs on the event loop); the
  page says what was done. Past the account's few reports per window the
  credential is still revoked but nothing is blocked, and the page says so.
* The id names a sign-in of the signed-in account only: another account's id
  does nothing (`get_sign_in(user, id)`).
* A sign-in from the address the owner uses right now is disowned only after a
  second, explicit confirmation: its block would shut the owner's own devices
  out too. One already disowned is not disowned again (no second block).
* The page doing it survives (`keep_session`); the owner's other portal
  sessions end when the disowned sign-in used no revocable credential.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from imapguard.auth.disown import disown
from imapguard.auth.model import NoticeHook
from imapguard.defense.engine import Defense
from imapguard.defense.owner import OWNER_REPORTS
from imapguard.errors import StateError
from imapguard.portal.account import RECORD_ID, utc
from imapguard.portal.history_text import (
    Labels,
    client_text,
    credential_text,
    labels_of,
    result_text,
)
from imapguard.portal.kit import Kit, field, request_id, unavailable
from imapguard.portal.sessions import Current
from imapguard.state.portal import SignInRecord

__all__ = ["HISTORY_DAYS", "HISTORY_ROWS", "History"]

HISTORY_DAYS = 30
HISTORY_ROWS = 200


def _row(record: SignInRecord, labels: Labels) -> dict[str, object]:
    return {
        "id": record.id,
        "at": utc(record.at),
        "address": record.address or "unknown",
        "how": client_text(record.method, record.client),
        "credential": credential_text(record.credential, labels),
        "result": result_text(record.ok, record.reason),
        "disowned": record.disowned,
    }


class History:
    def __init__(self, kit: Kit, defense: Defense | None, notice: NoticeHook | None) -> None:
        self.kit = kit
        self.defense = defense
        self.notice = notice

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/sign-ins", self.list, methods=["GET"]),
            Route("/sign-ins/disown", self.disown, methods=["POST"]),
        ]

    async def list(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        since = self.kit.clock() - HISTORY_DAYS * 86400.0
        try:
            records = await self.kit.call(
                self.kit.store.list_sign_ins, signed_in.session.user, since, HISTORY_ROWS
            )
            labels = await self._labels(signed_in.session.user)
        except StateError:
            return unavailable()
        context = {"rows": [_row(r, labels) for r in records], "days": HISTORY_DAYS}
        return self.kit.render(request, signed_in, "signins.html", context)

    async def _labels(self, user: str) -> Labels:
        """The labels of `user`'s own device passwords and devices (StateError)."""
        passwords = await self.kit.call(self.kit.store.list_app_passwords, user)
        devices = await self.kit.call(self.kit.store.list_devices, user)
        return labels_of(passwords, devices)

    async def disown(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user = signed_in.session.user
        form = await request.form()
        sign_in_id = field(form, "id", 64)
        confirmed = field(form, "confirm", 8) == "yes"
        rid = request_id()
        ctx = self.kit.context(request, rid)
        try:
            record = (
                await self.kit.call(self.kit.store.get_sign_in, user, sign_in_id)
                if RECORD_ID.fullmatch(sign_in_id)
                else None
            )
            # Before the revocation: the page names what it revoked by its label.
            labels = await self._labels(user) if record is not None else {}
            if record is None or record.disowned:
                result = "not_found" if record is None else "already"
                self.kit.emit(request, user, "disown", result, sign_in_id, rid=rid)
                context = {"row": None if record is None else _row(record, labels)}
                return self.kit.render(
                    request, signed_in, "signins_done.html", context, status_code=404
                )
            if record.address == ctx.client.ip and not confirmed:
                context = {"row": _row(record, labels)}
                return self.kit.render(request, signed_in, "signins_confirm.html", context)
            done = await self.kit.call(
                disown,
                self.kit.store,
                self.defense,
                self.kit.audit,
                user,
                record.id,
                ctx,
                keep_session=signed_in.session.id,
                clock=self.kit.clock,
            )
        except StateError:
            return unavailable()
        if done is not None and self.notice is not None:
            # The notifier is called on the event loop's thread, not the store's.
            self.notice("disowned", user, ctx, None)
        reason = sign_in_id
        if done is not None and done.limited:
            reason = f"{sign_in_id} not blocked: {OWNER_REPORTS} reports in the window"
        self.kit.emit(request, user, "disown", "ok" if done else "not_found", reason, rid=rid)
        done_context: dict[str, object] = {
            "row": _row(record, labels),
            "revoked": None if done is None else done.revoked,
            "revoked_text": None
            if done is None or done.revoked is None
            else credential_text(done.revoked, labels),
            "blocked": record.address if done is not None and done.blocked else None,
            "everyone": done is not None and done.everyone,
            "limited": done is not None and done.limited,
            "told": self.notice is not None,
        }
        return self.kit.render(request, signed_in, "signins_done.html", done_context)
