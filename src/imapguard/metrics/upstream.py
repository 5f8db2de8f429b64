"""The upstream's health and login latency, fed by the gateway's upstream login.

`UpstreamMetrics` is handed to `gateway.upstream.UpstreamLogin` (its `observe`)
and to the start-up check by the composition root, so the gateway knows no
metric. Each attempt sets `imapguard_upstream_up` from its outcome: 1 when the
upstream answered (a refused user password is an answer), 0 when it could not
be reached or trusted, or refused the master user (then no login can work)."""

from __future__ import annotations

from imapguard.metrics.registry import UPSTREAM_FAILURES, UPSTREAM_RESULTS, Metrics

__all__ = ["UpstreamMetrics"]


class UpstreamMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._up = metrics.upstream_up
        self._seconds = {r: metrics.upstream_login_seconds.labels(r) for r in UPSTREAM_RESULTS}

    def __call__(self, result: str, seconds: float, failure: str | None) -> None:
        """One upstream login: its result (UPSTREAM_RESULTS), how long it took,
        and what failed (None when the upstream answered as it should)."""
        histogram = self._seconds.get(result)
        if histogram is not None:
            histogram.observe(seconds)
        self.checked(failure)

    def checked(self, failure: str | None) -> None:
        """An attempt to reach the upstream ended: well (None) or with `failure`."""
        if failure is None:
            self._up.set(1)
            return
        self._up.set(0)
        kind = failure if failure in UPSTREAM_FAILURES else "other"
        self.metrics.upstream_failures_total.labels(kind).inc()
