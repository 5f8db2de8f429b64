"""The portal's pieces: how it checks a sign-in (`sign_in_service`), what it
is given (`portal_deps`), its server, and `imapguard portal` (`serve_portal`)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from imapguard import hangup
from imapguard.audit import AuditLog, events
from imapguard.auth.chokepoint import Authenticator
from imapguard.auth.oauth.relying_party import RelyingParty
from imapguard.auth.passkeys import Passkeys
from imapguard.auth.signin import TwoStepSignIn
from imapguard.compose.runtime import authenticator, upstream_settings
from imapguard.compose.services import Services, keys, notice_hook, open_services, run_loop
from imapguard.config import Config, PortalConfig, load_config
from imapguard.errors import ConfigError
from imapguard.gateway.upstream import (
    UpstreamLogin,
    UpstreamSession,
)
from imapguard.portal.app import PortalDeps, PortalKeys, PortalServices, create_app
from imapguard.portal.child import inherited, watch_parent
from imapguard.portal.oidc import OidcSetup
from imapguard.portal.serve import PortalServer, portal_context
from imapguard.secret import Secret

__all__ = [
    "portal_deps",
    "portal_server",
    "run_portal",
    "serve_portal",
    "sign_in_service",
]

log = logging.getLogger("imapguard")


def sign_in_service(
    config: Config,
    services: Services,
    auth: Authenticator[UpstreamSession] | None = None,
) -> TwoStepSignIn[UpstreamSession]:
    """How the portal checks a password and a second factor: through the auth
    service (`auth`, the gateway's own when both run in one process, so they share
    the failure timing too), against the same upstream, defense and audit log."""
    if auth is None:
        auth = authenticator(config, services, UpstreamLogin(upstream_settings(config)))
    k = keys(config)
    portal = config.portal
    passkeys = _passkeys(portal) if portal is not None else None
    return TwoStepSignIn(
        auth,
        audit=services.audit,
        executor=services.executor,
        totp_key=k.totp_seal,
        passkeys=passkeys,
        portal_store=services.store,
        recovery_key=k.recovery_code,
        on_notice=notice_hook(services.notifier) if services.notifier is not None else None,
    )


def portal_deps(
    config: Config, services: Services, sign_in: TwoStepSignIn[UpstreamSession]
) -> PortalDeps:
    """What the portal's app is built from; `[portal]` must be set. The pages use
    the auth service `sign_in` runs on (its defense and policy: the gateway's own
    when both run in one process)."""
    if config.portal is None:
        raise ConfigError([("portal", "the portal is not configured ([portal] listen and url)")])
    k = keys(config)
    auth = sign_in.auth
    admin_group = config.portal.admin_group.lower()
    policy = auth.policy

    def is_admin(user: str) -> bool:
        return admin_group in policy.groups.groups_of(user)

    return PortalDeps(
        settings=config.portal,
        store=services.store,
        keys=PortalKeys(
            session=k.portal_session,
            csrf=k.portal_csrf,
            invite=k.portal_invite,
            recovery=k.recovery_code,
        ),
        sign_in=sign_in,
        audit=services.audit,
        clock=time.time,
        executor=services.executor,
        is_admin=is_admin,
        services=PortalServices(
            totp_key=k.totp_seal,
            app_password_key=k.app_password,
            passkeys=_passkeys(config.portal),
            defense=auth.defense,
            policy=policy,
            notice=notice_hook(services.notifier) if services.notifier is not None else None,
            audit_path=config.audit.path,
            oidc=_oidc(config, config.portal, auth.names.canonical_identity),
            approved_device_trust=config.auth.approved_device_days * 86400.0,
            live_events=services.cluster.live_in if services.cluster is not None else None,
        ),
    )


def _oidc(
    config: Config, portal: PortalConfig, identity: Callable[[str], str | None]
) -> OidcSetup | None:
    """The portal's OpenID Connect client, when `[portal] oidc_client_id` is set."""
    if portal.oidc_client_id is None or portal.oidc_client_secret_file is None:
        return None
    if config.oauth is None:
        raise ConfigError([("portal.oidc_client_id", "needs [oauth] issuer")])
    try:
        secret = Path(portal.oidc_client_secret_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("portal.oidc_client_secret_file", str(exc))]) from None
    if not secret:
        raise ConfigError([("portal.oidc_client_secret_file", "is empty")])
    rp = RelyingParty(
        config.oauth,
        client_id=portal.oidc_client_id,
        client_secret=Secret(secret),
        redirect_uri=portal.oidc_redirect_uri,
    )

    # The ID token's name claim, under the account-name rule for identities.
    return OidcSetup(rp, identity)


def _passkeys(portal: PortalConfig) -> Passkeys:
    return Passkeys(rp_id=portal.relying_party, rp_name=portal.organisation, origin=portal.origin)


def portal_server(config: Config, deps: PortalDeps) -> PortalServer:
    """The portal's HTTPS server over its app: [portal] certificate and key, or
    [tls]'s, at tls.min_version."""
    settings = deps.settings
    certificate = settings.certificate or config.tls.certificate
    private_key = settings.private_key or config.tls.private_key
    return PortalServer(
        create_app(deps),
        listen=settings.listen,
        ssl_context=portal_context(certificate, private_key, config.tls.min_version),
        certificate=certificate,
        private_key=private_key,
    )


def reload_portal(portal: PortalServer, audit: AuditLog) -> None:
    try:
        portal.reload_certificate()
        log.info("portal certificate reloaded")
    except (OSError, ssl.SSLError) as exc:
        log.error("portal certificate reload failed, keeping the running one: %s", exc)
        audit.emit(events.Reload(result="failed", reason=f"portal certificate: {exc}"))


async def run_portal_beside(portal: PortalServer) -> None:
    """The portal beside the gateway: its failure is logged, never the gateway's end."""
    try:
        await portal.serve()
    except Exception:
        log.exception("the portal stopped; the gateway goes on")


async def serve_portal(config: Config, ready: Callable[[PortalServer], None] | None = None) -> None:
    """`imapguard portal`: the portal alone until SIGTERM/SIGINT; SIGHUP reloads
    its certificate. Started by `imapguard serve` (`portal.child`), it serves the
    socket the gateway's process bound and stops when that process ends."""
    async with open_services(config) as services:
        audit = services.audit
        portal = portal_server(
            config, portal_deps(config, services, sign_in_service(config, services))
        )
        handed = inherited()
        if handed is None:
            portal.bind()
        else:
            portal.adopt(handed[0])
        loop = asyncio.get_running_loop()

        def reload() -> None:
            audit.reopen()  # logrotate moved it away
            reload_portal(portal, audit)

        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.add_signal_handler(signal.SIGTERM, portal.stop)
        loop.add_signal_handler(signal.SIGINT, portal.stop)
        if hangup.pending():  # one came while starting
            loop.call_soon(reload)
        audit.emit(events.Start(pid=os.getpid()))
        if ready is not None:
            ready(portal)
        async with asyncio.TaskGroup() as tg:
            if handed is not None:
                watch = tg.create_task(watch_parent(handed[1], portal.stop))
            await portal.serve()
            if handed is not None:
                watch.cancel()
        audit.emit(events.Stop(pid=os.getpid()))


def run_portal(config_path: str) -> None:
    """`imapguard portal`: the portal of `config_path` alone (for a separate host)."""
    config = load_config(config_path)
    if config.portal is None:
        raise ConfigError([("portal", "`imapguard portal` needs a [portal] section (listen, url)")])
    run_loop(serve_portal(config))
