"""`[metrics]`: Prometheus metrics and the load balancer's health check."""

from __future__ import annotations

from imapguard.config.base import Section
from imapguard.config.defense import Networks
from imapguard.config.gateway import Address

__all__ = ["MetricsConfig"]


class MetricsConfig(Section):
    section_key = "metrics"

    # Where GET /metrics (Prometheus text format) and GET /health are served, over
    # plain HTTP: keep it on loopback or a management network.
    address: Address = "127.0.0.1:9143"
    # Who may fetch them; anyone else gets 403 and is closed. The metrics name no
    # account and no address, but they tell an attacker how the defense is doing.
    allowed_sources: Networks = ("127.0.0.0/8", "::1/128")
