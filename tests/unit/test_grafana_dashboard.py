"""docs/grafana-dashboard.json queries only metrics the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from imapguard.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _exported() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES)
    return names


def test_every_query_names_an_exported_metric_and_its_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _exported()
    labels = {
        "phase",
        "tls_mode",
        "method",
        "result",
        "reason",
        "kind",
        "enforced",
        "posture",
        "direction",
        "store",
        "operation",
        "le",
    }
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(queries) >= 10
    for query in queries:
        metrics = set(re.findall(r"\bimapguard_\w+", query))
        assert metrics, query
        assert metrics <= exported, f"{query}: {metrics - exported}"
        used = set(re.findall(r"by \(([^)]*)\)", query))
        used = {name.strip() for group in used for name in group.split(",")}
        used |= set(re.findall(r"\{(\w+)[!=]", query))
        assert used <= labels, f"{query}: {used - labels}"
    assert dashboard["uid"] == "imapguard"


def test_the_upstream_and_the_stores_are_charted() -> None:
    """Their health and latency: what an operator looks at when logins slow down."""
    text = " ".join(
        t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel["targets"]
    )
    for name in (
        "imapguard_upstream_up",
        "imapguard_upstream_failures_total",
        "imapguard_upstream_login_duration_seconds_bucket",
        "imapguard_store_operation_duration_seconds_bucket",
        "imapguard_store_errors_total",
    ):
        assert re.search(rf"\b{name}\b", text), name
