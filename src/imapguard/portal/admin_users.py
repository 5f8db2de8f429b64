"""The admin pages about one account: its page as its owner sees it (factors,
devices, app passwords, portal sessions) with revoke buttons, and the policy
explainer as a form.

Rules: the account comes from the URL (`/admin/users/{name}`) and is looked
up in the store (an unknown one is 404); a record a form names is revoked
*within* that account (the store's `user, credential` calls), so an id of
another account's record changes nothing; a credential field is one of
`app-password:ID`, `device:ID`, `portal-session:ID` or `everything`, nothing
else. The policy explainer changes nothing, so it is a GET form.
"""

from __future__ import annotations

import ipaddress
import re
import time
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from imapguard.audit import events
from imapguard.defense.counters import TargetKind
from imapguard.defense.engine import Defense
from imapguard.errors import StateError
from imapguard.names import MAX_USER_BYTES, well_formed
from imapguard.policy.gate import PolicyGate
from imapguard.portal.kit import Kit, field, request_id, see_other, unavailable
from imapguard.portal.sessions import Current
from imapguard.vocab import FACTORS, METHODS

__all__ = ["AdminUsers", "emit_admin", "when"]

_CREDENTIAL = re.compile(r"(app-password|device|portal-session):([A-Za-z0-9_-]{1,64})")
EVERYTHING = "everything"
# A certificate subject, a listener: short printable text.
_MAX_TEXT = 256


def when(ts: float | None) -> str:
    """A time as the admin pages show it (UTC)."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def emit_admin(
    kit: Kit, request: Request, admin: Current, action: str, target: str, *, done: bool
) -> None:
    """The audit line of an admin's action (`admin_unblock`, `admin_unlock`,
    `admin_revoke`) on `target`: the acting admin is `user`."""
    kit.audit.emit(
        events.Portal(
            session=request_id(),
            src=kit.client(request).ip,
            user=admin.session.user,
            action=action,
            result="ok" if done else "not_found",
            target=target,
        )
    )


class AdminUsers:
    def __init__(self, kit: Kit, defense: Defense | None, policy: PolicyGate) -> None:
        self.kit = kit
        self.defense = defense
        self.policy = policy

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/admin/users", self.find, methods=["GET"]),
            Route("/admin/users/{name}", self.user_page, methods=["GET"]),
            Route("/admin/users/{name}/revoke", self.revoke, methods=["POST"]),
            Route("/admin/policy", self.explain, methods=["GET"]),
        ]

    @staticmethod
    def account(text: str) -> str | None:
        """An account name as the store keys it (lower case), or None."""
        name = text.strip().lower()
        return name if well_formed(name) and len(name.encode()) <= MAX_USER_BYTES else None

    @staticmethod
    def path_of(user: str) -> str:
        return "/admin/users/" + quote(user, safe="@")

    async def _known(self, request: Request, admin: Current) -> str | Response:
        """The account of the URL, if the store knows it; else a 404 page."""
        user = self.account(str(request.path_params.get("name", "")))
        if user is None or await self.kit.call(self.kit.store.get_user, user) is None:
            return self._unknown(request, admin, str(request.path_params.get("name", "")))
        return user

    def _unknown(self, request: Request, admin: Current, name: str) -> Response:
        return self.kit.render(
            request,
            admin,
            "admin_find.html",
            {"name": name[: MAX_USER_BYTES + 1], "error": "No account of that name is known."},
            status_code=404,
        )

    # -- finding an account ---------------------------------------------------------------

    async def find(self, request: Request) -> Response:
        admin = self.kit.admin(request)
        if not isinstance(admin, Current):
            return admin
        raw = request.query_params.get("name", "")[: MAX_USER_BYTES + 1]
        if not raw:
            return self.kit.render(request, admin, "admin_find.html", {"name": "", "error": ""})
        user = self.account(raw)
        try:
            known = user is not None and (
                await self.kit.call(self.kit.store.get_user, user) is not None
            )
        except StateError:
            return unavailable()
        if user is None or not known:
            return self._unknown(request, admin, raw)
        return see_other(self.path_of(user))

    # -- a user's page ----------------------------------------------------------------

    async def user_page(self, request: Request) -> Response:
        admin = self.kit.admin(request)
        if not isinstance(admin, Current):
            return admin
        kit, store, now = self.kit, self.kit.store, self.kit.clock()
        try:
            user = await self._known(request, admin)
            if isinstance(user, Response):
                return user
            totp = await kit.call(store.get_totp, user)
            passkeys = await kit.call(store.list_passkeys, user)
            codes = await kit.call(store.count_recovery_codes, user)
            devices = await kit.call(store.list_devices, user)
            passwords = await kit.call(store.list_app_passwords, user)
            sessions = await kit.call(store.list_portal_sessions, user, now)
            blocks = [] if self.defense is None else await kit.call(self.defense.blocks)
        except StateError:
            return unavailable()
        lockouts = [
            f"{b.target}: {b.reason} (until {when(b.expires)})"
            for b in blocks
            if (b.target.kind is TargetKind.ACCOUNT_UNFAMILIAR and b.target.value == user)
            or (
                b.target.kind is TargetKind.ACCOUNT_SOURCE
                and b.target.value.partition("|")[2] == user
            )
        ]
        if totp is not None and totp.locked_until is not None and totp.locked_until > now:
            lockouts.append(f"one-time codes locked until {when(totp.locked_until)}")
        return kit.render(
            request,
            admin,
            "admin_user.html",
            {
                "user": user,
                "path": self.path_of(user),
                "totp": None if totp is None else when(totp.created_at),
                "passkeys": [
                    {"name": p.name, "created": when(p.created_at), "used": when(p.last_used_at)}
                    for p in passkeys
                ],
                "codes": codes,
                "devices": [
                    {
                        "credential": f"device:{d.id}",
                        "client": f"{d.client_name} {d.client_version}".strip() or "(no name)",
                        "network": d.network,
                        "status": d.status,
                        "until": when(d.trusted_until),
                        "seen": when(d.last_seen_at),
                        "address": d.last_address or "-",
                    }
                    for d in devices
                ],
                "passwords": [
                    {
                        "credential": f"app-password:{p.id}",
                        "label": p.label,
                        "created": when(p.created_at),
                        "used": when(p.last_used_at),
                        "address": p.last_used_address or "-",
                        "client": p.last_used_client or "-",
                        "scope": ", ".join(
                            s
                            for s in (
                                p.network or "",
                                f"until {when(p.expires_at)}" if p.expires_at else "",
                            )
                            if s
                        )
                        or "any network, no expiry",
                    }
                    for p in passwords
                ],
                "sessions": [
                    {
                        "credential": f"portal-session:{s.id}",
                        "level": "signed in" if s.level == "full" else "password only",
                        "created": when(s.created_at),
                        "seen": when(s.last_seen_at),
                        "address": s.address,
                        "agent": s.user_agent or "-",
                        "yours": s.id == admin.session.id,
                    }
                    for s in sessions
                ],
                "lockouts": lockouts,
                "done": request.query_params.get("done", "")[:32],
            },
        )

    async def revoke(self, request: Request) -> Response:
        admin = self.kit.admin(request)
        if not isinstance(admin, Current):
            return admin
        kit, store = self.kit, self.kit.store
        form = await request.form()
        credential = field(form, "credential", 128)
        found = _CREDENTIAL.fullmatch(credential)
        if found is None and credential != EVERYTHING:
            return PlainTextResponse("Unknown credential", status_code=400)
        try:
            user = await self._known(request, admin)
            if isinstance(user, Response):
                return user
            if found is not None and found.group(1) == "portal-session":
                done = await kit.call(store.revoke_portal_session, user, found.group(2))
            else:
                which = None if found is None else credential
                done = await kit.call(store.revoke, user, which, kit.clock())
        except StateError:
            return unavailable()
        emit_admin(kit, request, admin, "admin_revoke", f"{user} {credential}", done=done)
        return see_other(self.path_of(user) + "?done=" + ("revoked" if done else "gone"))

    # -- the policy explainer -----------------------------------------------------------

    async def explain(self, request: Request) -> Response:
        admin = self.kit.admin(request)
        if not isinstance(admin, Current):
            return admin
        q = request.query_params
        asked = {
            k: q.get(k, "")[:_MAX_TEXT].strip()
            for k in ("user", "ip", "method", "factor", "cert_subject", "listener")
        }
        context: dict[str, object] = {
            "asked": asked,
            "methods": METHODS,
            "factors": FACTORS,
            "error": "",
            "lines": [],
            "decision": None,
        }
        if not asked["user"] and not asked["ip"]:
            return self.kit.render(request, admin, "admin_policy.html", context)
        user = self.account(asked["user"])
        problems = []
        if user is None:
            problems.append("Enter an account name.")
        try:
            ipaddress.ip_address(asked["ip"])
        except ValueError:
            problems.append("Enter the client's IP address.")
        if asked["method"] and asked["method"] not in METHODS:
            problems.append("Unknown method.")
        if asked["factor"] and asked["factor"] not in FACTORS:
            problems.append("Unknown factor.")
        if not all(v.isprintable() for v in asked.values()):
            problems.append("Control characters are not allowed.")
        if problems or user is None:
            context["error"] = " ".join(problems)
            return self.kit.render(request, admin, "admin_policy.html", context, status_code=400)
        explanation = self.policy.explain(
            self.policy.request(
                user,
                asked["ip"],
                method=asked["method"] or None,
                factor=asked["factor"] or None,
                listener=asked["listener"] or None,
                client_cert=bool(asked["cert_subject"]),
            )
        )
        decision = explanation.decision
        context["decision"] = {
            "kind": decision.kind.name,
            "rule": decision.rule,
            "reason": decision.reason,
        }
        context["lines"] = explanation.explanation_lines()
        return self.kit.render(request, admin, "admin_policy.html", context)
