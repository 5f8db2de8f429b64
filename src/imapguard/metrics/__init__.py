"""Prometheus metrics: what the gateway counts, and how it is exported.

`registry.Metrics` defines every metric once. Most are fed from the audit events
(`events.AuditMetrics`, an audit-log subscriber), so that what is counted is
what is recorded; timings that no event carries are observed where they happen,
through hooks the composition root hands out: `upstream.UpstreamMetrics` (the
upstream's login latency and health) and `stores.timed` (a proxy that times each
call of a state store and counts its failures).
`http.MetricsServer` serves GET /metrics and GET /health at `[metrics] address`.

Several worker processes share one set of metrics through prometheus-client's
multiprocess mode: `multiprocess.prepare(directory)` must run in the parent
before any metric exists, each worker writes its values to memory-mapped files
there, and the exporter sums them."""

from imapguard.metrics.events import AuditMetrics
from imapguard.metrics.registry import Metrics

__all__ = ["AuditMetrics", "Metrics"]
