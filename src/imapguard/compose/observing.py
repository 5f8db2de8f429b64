"""`[metrics]`: the metrics fed from the audit log, and their endpoint.

`count` subscribes this process's metrics to its audit log (and its write
failures); in a worker they go to the parent's multiprocess directory
(`metrics.multiprocess`). `start_metrics` binds `[metrics] address` (a port in
use is the one-line ConfigError naming `metrics.address`, before the gateway
accepts anything) and serves /metrics and /health until closed: this process's
metrics, or what `collect` gathers from the workers. /health is 503 with the
reason `problem` gives (draining once SIGTERM stops new connections), so the
load balancer sends new clients elsewhere first.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from imapguard.audit import AuditLog
from imapguard.config import Config, parse_address
from imapguard.metrics import AuditMetrics, Metrics
from imapguard.metrics.http import MetricsServer
from imapguard.net import cannot_listen

__all__ = ["count", "start_metrics"]


def count(config: Config, audit: AuditLog) -> Metrics | None:
    """This process's metrics, fed from `audit` (None without `[metrics]`)."""
    if config.metrics is None:
        return None
    metrics = Metrics()
    audit.subscribe(AuditMetrics(metrics))
    audit.on_failure = metrics.audit_failures_total.inc
    return metrics


async def start_metrics(
    config: Config,
    audit: AuditLog,
    problem: Callable[[], str | None],
    collect: Callable[[], CollectorRegistry] | None = None,
) -> MetricsServer | None:
    """The running endpoint of `[metrics]` (None without the section)."""
    settings = config.metrics
    if settings is None:
        return None
    if collect is None:
        metrics = count(config, audit)
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
