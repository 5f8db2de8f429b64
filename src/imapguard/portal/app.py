"""The portal's ASGI application: routes, middleware, templates, static files.

`create_app(PortalDeps)` builds it from what `compose` hands over; nothing here
opens a file, a socket or a store of its own. The middleware, outermost first:

    SecurityHeaders      every response, Starlette's own 500 included
    ServerErrorMiddleware  (Starlette) a bug answers 500, no traceback to the browser
    body limit           (Starlette `max_body_size`) 413 past MAX_BODY
    TrustedHost          only the host of `portal.url` (no DNS rebinding)
    SessionLoader        the cookie's session, before anything uses it
    CsrfGuard            Origin and token on every unsafe method
    routes               signin.py, account.py, app_passwords.py, devices.py,
                         history.py; /static/ from portal/static/

Rules: every asset is served by the portal itself (no CDN); no debug pages;
no route that changes state answers a GET.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from imapguard.audit import AuditLog, events
from imapguard.auth.model import NoticeHook
from imapguard.auth.passkeys import Passkeys
from imapguard.config.portal import PortalConfig
from imapguard.defense.engine import Defense
from imapguard.net import normalize
from imapguard.policy.gate import PolicyGate
from imapguard.portal.account import Account
from imapguard.portal.admin import Admin
from imapguard.portal.admin_feed import LiveFeed
from imapguard.portal.admin_users import AdminUsers
from imapguard.portal.app_passwords import AppPasswords
from imapguard.portal.confirm import Confirm
from imapguard.portal.csrf import CsrfGuard
from imapguard.portal.devices import Devices
from imapguard.portal.factors import Factors
from imapguard.portal.headers import SecurityHeaders
from imapguard.portal.history import History
from imapguard.portal.invite import Invite
from imapguard.portal.kit import Kit, request_id
from imapguard.portal.oidc import Oidc, OidcSetup, flow_key
from imapguard.portal.pages import Pages
from imapguard.portal.passkey_pages import PasskeyPages
from imapguard.portal.ports import SignInService
from imapguard.portal.ratelimit import SlidingWindow
from imapguard.portal.sessions import SessionLoader, Sessions
from imapguard.portal.signin import SignIn
from imapguard.state.portal import PortalStore

__all__ = ["MAX_BODY", "PortalApp", "PortalDeps", "PortalKeys", "PortalServices", "create_app"]

# The largest request body: the portal's forms are a few hundred bytes.
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class PortalKeys:
    """The purpose keys the portal uses (imapguard.keys), each 32 bytes."""

    session: bytes  # PORTAL_SESSION: digests of session cookie tokens
    csrf: bytes  # PORTAL_CSRF: CSRF tokens
    invite: bytes  # PORTAL_INVITE: digests of invitation links
    recovery: bytes  # RECOVERY_CODE: digests of recovery codes


@dataclass(frozen=True)
class PortalDeps:
    settings: PortalConfig
    store: PortalStore
    keys: PortalKeys
    sign_in: SignInService
    audit: AuditLog
    clock: Callable[[], float] = field(default=time.time)
    # The store's one thread: every store call runs there, never on the event
    # loop the gateway shares. None: called inline (tests).
    executor: Executor | None = None
    # Is this account a member of `portal.admin_group`? (Default: nobody is.)
    is_admin: Callable[[str], bool] = field(default=lambda user: False)
    # What the factor, app password and admin pages use beyond sign-in; None
    # where a test builds only the sign-in part.
    services: PortalServices | None = None


@dataclass(frozen=True)
class PortalServices:
    """The auth and defense pieces the pages beyond sign-in use (compose fills them)."""

    # TOTP secrets are sealed with this key (TOTP_SEAL), app passwords keyed with this.
    totp_key: bytes
    app_password_key: bytes
    # WebAuthn ceremonies for `portal.url` (`auth.passkeys`).
    passkeys: Passkeys
    # The defense engine (blocks, unblock, lockouts, posture) and the policy
    # (the explainer), the gateway's own when both run in one process.
    defense: Defense | None
    policy: PolicyGate
    # Tells the owner and the admins (a disowned sign-in); None without [notify].
    notice: NoticeHook | None
    # The audit log's file, which the admin pages follow (every process writes it).
    audit_path: str
    # Sign-in through the [oauth] issuer (portal.oidc); None when not configured.
    oidc: OidcSetup | None = None
    # Where the admin's live events come from (None: the audit log file above;
    # the composition root gives the cluster's stream when there is one).
    live_events: LiveFeed | None = None
    # How long a device the owner approved in the page stays trusted (seconds;
    # `auth.approved_device_days`, as `imapguard device approve`).
    approved_device_trust: float = 7 * 86400.0


class PortalApp(Starlette):
    """Starlette, with the security headers outside its error middleware too."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def create_app(deps: PortalDeps) -> Starlette:
    settings = deps.settings
    sessions = Sessions(
        deps.store,
        deps.keys.session,
        idle=settings.session_idle,
        lifetime=settings.session_lifetime,
        clock=deps.clock,
        executor=deps.executor,
    )
    pages = Pages(deps.keys.csrf)
    # signin.html (rendered by `signin` and `confirm`) links to the organisation's
    # OpenID sign-in only when its routes exist (`_pages`).
    offers_oidc = deps.services is not None and deps.services.oidc is not None
    pages.templates.env.globals["oidc"] = offers_oidc
    # One limit per source for every sign-in step (password, code, invitation, OIDC).
    limiter = SlidingWindow(settings.max_sign_ins_per_minute)
    kit = Kit(
        settings=settings,
        store=deps.store,
        sessions=sessions,
        pages=pages,
        audit=deps.audit,
        clock=deps.clock,
        executor=deps.executor,
        is_admin=deps.is_admin,
    )
    signin = SignIn(
        service=deps.sign_in,
        sessions=sessions,
        pages=pages,
        limiter=limiter,
        audit=deps.audit,
        clock=deps.clock,
        kit=kit,
        totp_key=deps.services.totp_key if deps.services is not None else None,
    )
    static = StaticFiles(packages=[("imapguard.portal", "static")])
    return PortalApp(
        routes=[
            *signin.routes(),
            *_pages(kit, deps, limiter),
            Mount("/static", static, name="static"),
        ],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=[settings.host], www_redirect=False),
            Middleware(SessionLoader, sessions=sessions),
            Middleware(
                CsrfGuard,
                key=deps.keys.csrf,
                origin=settings.origin,
                on_refused=_csrf_audit(deps.audit),
            ),
        ],
        max_body_size=MAX_BODY,
    )


def _pages(kit: Kit, deps: PortalDeps, limiter: SlidingWindow) -> list[BaseRoute]:
    """The routes of the pages beyond sign-in (they need `deps.services`)."""
    account = Account(kit).routes()
    services = deps.services
    if services is None:
        return account
    invite = Invite(
        kit=kit,
        service=deps.sign_in,
        invite_key=deps.keys.invite,
        totp_key=services.totp_key,
        limiter=limiter,
        clock=deps.clock,
    )
    routes = [
        *account,
        *invite.routes(),
        *AppPasswords(kit, services.app_password_key, services.notice).routes(),
        *Devices(kit, services.defense, services.approved_device_trust).routes(),
        *History(kit, services.defense, services.notice).routes(),
        *Factors(
            kit,
            totp_key=services.totp_key,
            recovery_key=deps.keys.recovery,
            notice=services.notice,
        ).routes(),
        *PasskeyPages(kit, services.passkeys, services.notice).routes(),
        *Confirm(kit, deps.sign_in).routes(),
        *Admin(
            kit,
            services.defense,
            services.audit_path,
            AdminUsers(kit, services.defense, services.policy),
            services.live_events,
        ).routes(),
    ]
    if services.oidc is not None:
        oidc = Oidc(
            kit=kit,
            setup=services.oidc,
            service=deps.sign_in,
            flow_key=flow_key(deps.keys.session),
            limiter=limiter,
            clock=deps.clock,
        )
        routes += oidc.routes()
    return routes


def _csrf_audit(audit: AuditLog) -> Callable[[HTTPConnection, str], None]:
    def refused(conn: HTTPConnection, reason: str) -> None:
        src = normalize(conn.client.host) if conn.client is not None else ""
        audit.emit(
            events.Portal(
                session=request_id(), src=src, action="request", result="csrf", reason=reason
            )
        )

    return refused
