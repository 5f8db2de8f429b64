"""The composition root: the one place that turns a configuration into running
services, for `serve`, `demo`, the CLI and the portal.

Every layer takes what it needs as arguments; only this package knows which
implementation goes where: the account store `state.url` names (SQLite or
PostgreSQL), the counters in it or in the Redis of `state.counters_url`, the
audit log, the defense, the policy, the auth service, the notifier and the
token verifier. By what a configuration reload does to them:

    services  what outlives a reload ([state], [audit], [notify], [oauth] are
              read at start): `open_services`, closed in reverse order
    runtime   what a reload replaces: `gateway_runtime` (the upstream, TLS, the
              auth service with its defense and policy, the limits)
    portal    the portal's pieces and `imapguard portal` (`serve_portal`)
    serving   `imapguard serve`: the gateway with its signals and the portal
              process beside it (`serve`)
"""

from imapguard.compose.portal import (
    portal_deps,
    portal_server,
    run_portal,
    serve_portal,
    sign_in_service,
)
from imapguard.compose.runtime import authenticator, gateway_runtime, upstream_settings
from imapguard.compose.services import (
    Keys,
    Services,
    account_store,
    defense,
    keys,
    open_services,
    run_loop,
)
from imapguard.compose.serving import run_gateway, run_worker, serve

__all__ = [
    "Keys",
    "Services",
    "account_store",
    "authenticator",
    "defense",
    "gateway_runtime",
    "keys",
    "open_services",
    "portal_deps",
    "portal_server",
    "run_gateway",
    "run_loop",
    "run_portal",
    "run_worker",
    "serve",
    "serve_portal",
    "sign_in_service",
    "upstream_settings",
]
