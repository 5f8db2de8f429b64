"""`[metrics]`: the metrics fed from the audit log, and their endpoint.

`start_metrics` subscribes the metrics to the audit log (and its write
failures), binds `[metrics] address` (a port in use is the one-line ConfigError
naming `metrics.address`, before the gateway accepts anything) and serves
/metrics and /health until closed. /health is 503 "draining" once the gateway
stops accepting, so the load balancer sends new clients elsewhere first.
"""

from __future__ import annotations

from collections.abc import Callable

from imapguard.audit import AuditLog
from imapguard.config import Config, parse_address
from imapguard.metrics import AuditMetrics, Metrics
from imapguard.metrics.http import MetricsServer
from imapguard.net import cannot_listen

__all__ = ["start_metrics"]


async def start_metrics(
    config: Config, audit: AuditLog, problem: Callable[[], str | None]
) -> MetricsServer | None:
    """The running endpoint of `[metrics]` (None without the section)."""
    settings = config.metrics
    if settings is None:
        return None
    metrics = Metrics()
    audit.subscribe(AuditMetrics(metrics))
    audit.on_failure = metrics.audit_failures_total.inc
    host, port = parse_address(settings.address)
    server = MetricsServer(host, port, settings.allowed_sources, lambda: metrics.registry, problem)
    try:
        await server.start()
    except OSError as exc:
        raise cannot_listen("metrics.address", settings.address, exc) from None
    return server
