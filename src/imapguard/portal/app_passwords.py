"""App passwords: one per device, made in the page, shown once, revoked in one click.

Routes: `GET /app-passwords` (the list and the form), `POST /app-passwords`
(create: a fresh second factor first), `POST /app-passwords/revoke` (by id),
`POST /app-passwords/setup` (a device's configuration, from the page that
showed the new password: `device_setup`).

Rules:

* A new password is made by `auth.app_passwords.create` (as the CLI makes
  one), shown once in the response to the POST that made it, and never again:
  not in the list, not in the audit line (its id only), not in a log. The
  page's downloads carry it sealed, for a few minutes, for this session, each
  document once (`device_setup`).
* The scope is checked before anything is stored: a client network in CIDR
  form (an address alone is its /32 or /128), an expiry date (UTC, the password
  works through that day), in the future and at most `MAX_EXPIRY_DAYS` ahead.
* An id from a form names an app password of the signed-in account only
  (`store.revoke(user, "app-password:ID")`): another account's id revokes
  nothing. A revocation is published with it, so the gateways end the sessions
  that used it within seconds.
* A new one ends the account's other portal sessions and tells the owner
  (`changes`): a password that reads mail without the second factor is what a
  thief with a session makes first.
* An account has at most `MAX_APP_PASSWORDS`: a stolen session cannot grow the
  store without bound. The store checks it in the insert's transaction
  (`max_count`), so concurrent creates cannot go past it together.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from imapguard.auth import app_passwords
from imapguard.auth.model import NoticeHook
from imapguard.errors import StateError
from imapguard.portal.account import RECORD_ID, notice_of, utc
from imapguard.portal.changes import APP_PASSWORD_CREATED, Changes
from imapguard.portal.device_setup import (
    KINDS,
    MAX_SEALED,
    SETUP_LIFETIME,
    Downloads,
    ServerSettings,
    SetupSeal,
    autoconfig,
    mobileconfig,
)
from imapguard.portal.kit import Kit, field, see_other, unavailable
from imapguard.portal.sessions import Current
from imapguard.state.accounts import AppPasswordLimit

__all__ = ["MAX_APP_PASSWORDS", "MAX_EXPIRY_DAYS", "AppPasswords"]

# App passwords per account: one per device, and people have a handful.
MAX_APP_PASSWORDS = 50
# The furthest expiry a form may set (about five years).
MAX_EXPIRY_DAYS = 1830
_MAX_NETWORK = 64


def _text(form: FormData, name: str) -> str:
    """A scope field as sent: too long is refused, never read as "no scope"."""
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    return value if len(value) <= _MAX_NETWORK else "\0"


@dataclass(frozen=True)
class Problem:
    """A field of the create form that cannot be used, and what to tell the user."""

    field: str
    text: str


_NETWORK_HELP = "Write a network like 192.0.2.0/24 or 2001:db8::/48, or an address."


def _network(text: str) -> str | Problem | None:
    if not text.strip():
        return None
    try:
        return app_passwords.scope_network(text)
    except ValueError:
        return Problem("network", _NETWORK_HELP)


def _expiry(text: str, now: float) -> float | Problem | None:
    """The end of the day `text` names (UTC): the password works through that day."""
    if not text.strip():
        return None
    try:
        day = dt.date.fromisoformat(text.strip())
    except ValueError:
        return Problem("expires", "Write the date as YYYY-MM-DD.")
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    if day < today:
        return Problem("expires", "That day is over: pick today or a later day.")
    if (day - today).days > MAX_EXPIRY_DAYS:
        return Problem("expires", f"Pick a day at most {MAX_EXPIRY_DAYS} days ahead.")
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()


def _scope(
    label: str, network_text: str, expires_text: str, now: float
) -> tuple[str | None, float | None] | Problem:
    """The create form's network and expiry, or the first field that is wrong."""
    if app_passwords.label_problem(label) is not None:
        return Problem("label", f"Name the device in 1 to {app_passwords.MAX_LABEL} characters.")
    network = _network(network_text)
    if isinstance(network, Problem):
        return network
    expires_at = _expiry(expires_text, now)
    if isinstance(expires_at, Problem):
        return expires_at
    return network, expires_at


class AppPasswords:
    def __init__(self, kit: Kit, app_password_key: bytes, notice: NoticeHook | None = None) -> None:
        self.kit = kit
        self.changes = Changes(kit, notice)
        self.key = app_password_key
        self.seal = SetupSeal(app_password_key)
        self.downloads = Downloads()
        self.server = ServerSettings.of(kit.settings)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/app-passwords", self.list, methods=["GET"]),
            Route("/app-passwords", self.create, methods=["POST"]),
            Route("/app-passwords/revoke", self.revoke, methods=["POST"]),
            Route("/app-passwords/setup", self.setup, methods=["POST"]),
        ]

    # -- the list ------------------------------------------------------------------

    async def _page(
        self,
        request: Request,
        signed_in: Current,
        *,
        error: Problem | None = None,
        form: dict[str, str] | None = None,
        status_code: int = 200,
    ) -> Response:
        user = signed_in.session.user
        try:
            records = await self.kit.call(self.kit.store.list_app_passwords, user)
        except StateError:
            return unavailable()
        now = self.kit.clock()
        rows = [
            {
                "id": r.id,
                "label": r.label,
                "created": utc(r.created_at),
                "last_used": utc(r.last_used_at),
                "address": r.last_used_address or "",
                "client": r.last_used_client or "",
                "network": r.network or "any network",
                "expires": "never" if r.expires_at is None else utc(r.expires_at),
                "expired": r.expires_at is not None and now >= r.expires_at,
            }
            for r in records
        ]
        context = {
            "rows": rows,
            "notice": notice_of(request),
            "error": error,
            "form": form or {"label": "", "network": "", "expires": ""},
            "full": len(records) >= MAX_APP_PASSWORDS,
            "limit": MAX_APP_PASSWORDS,
        }
        return self.kit.render(
            request, signed_in, "app_passwords.html", context, status_code=status_code
        )

    async def list(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        return await self._page(request, signed_in)

    # -- create --------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        signed_in = self.kit.fresh(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user = signed_in.session.user
        form = await request.form()
        label = field(form, "label", 256).strip()
        values = {
            "label": label[: app_passwords.MAX_LABEL],
            "network": field(form, "network", _MAX_NETWORK),
            "expires": field(form, "expires", 32),
        }
        now = self.kit.clock()
        scope = _scope(label, _text(form, "network"), _text(form, "expires"), now)
        if isinstance(scope, Problem):
            self.kit.emit(request, user, "app_password_create", "invalid", scope.field)
            return await self._page(request, signed_in, error=scope, form=values, status_code=400)
        network, expires_at = scope
        store = self.kit.store
        try:
            # The store counts and inserts in one transaction: concurrent creates
            # (several tabs, a script) cannot go past the limit together.
            record, password = await self.kit.call(
                app_passwords.create,
                store,
                self.key,
                user,
                label,
                now,
                network=network,
                expires_at=expires_at,
                max_count=MAX_APP_PASSWORDS,
            )
        except AppPasswordLimit:
            reason = f"{MAX_APP_PASSWORDS} exist"
            self.kit.emit(request, user, "app_password_create", "limit", reason)
            return await self._page(request, signed_in, status_code=409)
        except StateError:
            return unavailable()
        self.kit.emit(request, user, "app_password_create", "ok", record.id)
        await self.changes.made(request, signed_in, APP_PASSWORD_CREATED)
        sealed = self.seal.seal(user, signed_in.session.id, record.id, label, password, now)
        context = {
            "label": record.label,
            "password": password.reveal().decode(),
            "user": user,
            "network": record.network,
            "expires": None if record.expires_at is None else utc(record.expires_at),
            "sealed": sealed,
            "minutes": int(SETUP_LIFETIME // 60),
            "server": self.server,
        }
        return self.kit.render(request, signed_in, "app_password_new.html", context)

    # -- revoke --------------------------------------------------------------------

    async def revoke(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user = signed_in.session.user
        record_id = field(await request.form(), "id", 64)
        revoked = False
        if RECORD_ID.fullmatch(record_id):
            try:
                revoked = await self.kit.call(
                    self.kit.store.revoke, user, f"app-password:{record_id}", self.kit.clock()
                )
            except StateError:
                return unavailable()
        result = "ok" if revoked else "not_found"
        self.kit.emit(request, user, "app_password_revoke", result, record_id)
        return see_other("/app-passwords?done=" + ("revoked" if revoked else "nothing"))

    # -- device setup --------------------------------------------------------------

    async def setup(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user = signed_in.session.user
        form = await request.form()
        asked = field(form, "kind", 32)
        kind = next((k for k in KINDS if k == asked), None)
        now = self.kit.clock()
        sealed = self.seal.open(field(form, "sealed", MAX_SEALED), user, signed_in.session.id, now)
        reason: str | None = None
        if kind is None:
            reason = "unknown document"
        elif sealed is None:
            reason = "not this session's, changed, or expired"
        else:
            try:
                records = await self.kit.call(self.kit.store.list_app_passwords, user)
            except StateError:
                return unavailable()
            if all(r.id != sealed.record_id for r in records):
                reason = "the app password is gone"
            elif not self.downloads.claim(sealed, kind, now):
                reason = "downloaded before"
        if reason is not None or sealed is None or kind is None:
            self.kit.emit(request, user, "app_password_setup", "refused", reason)
            return self.kit.render(
                request, signed_in, "app_password_gone.html", {}, status_code=410
            )
        self.kit.emit(request, user, "app_password_setup", "ok", f"{sealed.record_id} {kind}")
        name = f"mail-{sealed.record_id}"
        if kind == "apple":
            body = mobileconfig(self.server, user, sealed.record_id, sealed.label, sealed.password)
            media, name = "application/x-apple-aspen-config", f"{name}.mobileconfig"
        else:
            body = autoconfig(self.server, user)
            media, name = "application/xml", f"{name}-thunderbird.xml"
        return Response(
            body,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
