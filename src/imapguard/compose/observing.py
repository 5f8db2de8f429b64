"""`[metrics]`: the metrics fed from the audit log, and their endpoint.

`count` subscribes this process's metrics to its audit log (and its write
failures); in a worker they go to the parent's multiprocess directory
(`metrics.multiprocess`). `open_services(config, metrics=True)` calls it, so that
the runtime can time what no audit event carries: `timed_stores` wraps the
login path's stores (`metrics.stores`), `upstream_observer` and `observed_check`
feed the upstream's latency and health (`metrics.upstream`). `start_metrics`
binds `[metrics] address` (a port in use is the one-line ConfigError naming
`metrics.address`, before the gateway accepts anything) and serves /metrics and
/health until closed: this process's metrics, or what `collect` gathers from
the workers. /health is 503 with the reason `problem` gives (draining once
SIGTERM stops new connections), so the load balancer sends new clients
elsewhere first. The upstream's state is deliberately not part of /health (see
README "All cores, metrics and health"): every node usually shares one upstream,
and draining them all for it would turn `NO [UNAVAILABLE]` into refused
connections without sending anyone to a node that works.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from imapguard.audit import AuditLog
from imapguard.config import Config, parse_address
from imapguard.defense.counters import CounterStore
from imapguard.gateway.upstream import UpstreamCheck, UpstreamObserver
from imapguard.metrics import AuditMetrics, Metrics
from imapguard.metrics.http import MetricsServer
from imapguard.metrics.stores import account_operation, counter_operation, timed
from imapguard.metrics.upstream import UpstreamMetrics
from imapguard.net import cannot_listen
from imapguard.state.portal import PortalStore

__all__ = [
    "count",
    "observed_check",
    "start_metrics",
    "timed_counters",
    "timed_store",
    "upstream_observer",
]


def count(config: Config, audit: AuditLog) -> Metrics | None:
    """This process's metrics, fed from `audit` (None without `[metrics]`)."""
    if config.metrics is None:
        return None
    metrics = Metrics()
    audit.subscribe(AuditMetrics(metrics))
    audit.on_failure = metrics.audit_failures_total.inc
    return metrics


def timed_store(store: PortalStore, metrics: Metrics | None) -> PortalStore:
    """The account store, each call timed as store="accounts" (as is without metrics)."""
    return store if metrics is None else timed(store, "accounts", metrics, account_operation)


def timed_counters(store: CounterStore, metrics: Metrics | None) -> CounterStore:
    """The defense's counter store, each call timed as store="counters"."""
    return store if metrics is None else timed(store, "counters", metrics, counter_operation)


def upstream_observer(metrics: Metrics | None) -> UpstreamObserver | None:
    """What `UpstreamLogin` tells of each login, into the metrics."""
    return None if metrics is None else UpstreamMetrics(metrics)


def observed_check(
    check: Callable[[], Awaitable[UpstreamCheck]], metrics: Metrics | None
) -> Callable[[], Awaitable[UpstreamCheck]]:
    """The start-up check of the upstream, its outcome setting the upstream's health."""
    if metrics is None:
        return check
    upstream = UpstreamMetrics(metrics)

    async def checked() -> UpstreamCheck:
        found = await check()
        upstream.checked(None if found.ok else found.failure or "protocol")
        return found

    return checked


async def start_metrics(
    config: Config,
    metrics: Metrics | None,
    problem: Callable[[], str | None],
    collect: Callable[[], CollectorRegistry] | None = None,
) -> MetricsServer | None:
    """The running endpoint of `[metrics]` (None without the section): `metrics`
    (this process's, from `count`), or what `collect` gathers."""
    settings = config.metrics
    if settings is None:
        return None
    if collect is None:
        registry = metrics.registry if metrics is not None else CollectorRegistry()

        def collect() -> CollectorRegistry:
            return registry

    host, port = parse_address(settings.address)
    server = MetricsServer(host, port, settings.allowed_sources, collect, problem)
    try:
        await server.start()
    except OSError as exc:
        raise cannot_listen("metrics.address", settings.address, exc) from None
    return server
