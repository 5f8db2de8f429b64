"""Scrape a gateway's `[metrics]` endpoint and read it with prometheus_client's
own parser (`text_string_to_metric_families`), so a test sees exactly what
Prometheus would.

Usage::

    before = scrape(port)
    ...  # the fault
    after = scrape(port)
    assert after.value("imapguard_logins_total", result="unavailable") > before.value(...)
    assert delta(before, after, "imapguard_logins_total", result="ok") >= 1

`value(name, **labels)` sums every sample of `name` whose labels include the
given ones (none given: all of them), 0 when there is none; `diff` lists every
sample that changed between two scrapes.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["SampleKey", "Scrape", "delta", "diff", "scrape", "scrape_text"]

#: A sample's name and its labels.
SampleKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Scrape:
    samples: dict[SampleKey, float]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, have), v in self.samples.items() if n == name and wanted <= have)

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.samples)


def scrape_text(text: str) -> Scrape:
    """Parse an exposition; a malformed one raises (the parser's ValueError)."""
    return Scrape(
        {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
    )


def scrape(port: int, *, host: str = "127.0.0.1", timeout: float = 10.0) -> Scrape:
    """GET /metrics; anything but 200 with a parseable body fails the test."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as answer:
            status, body = answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        raise AssertionError(f"/metrics answered {refused.code}") from None
    assert status == 200, status
    parsed = scrape_text(body)
    assert any(name.startswith("imapguard_") for name, _ in parsed.samples), (
        "the scrape holds none of the gateway's metrics"
    )
    return parsed


def diff(before: Scrape, after: Scrape) -> dict[SampleKey, float]:
    """after - before for every sample that changed (one absent before counts from 0)."""
    keys = before.samples.keys() | after.samples.keys()
    out = {}
    for key in keys:
        change = after.samples.get(key, 0.0) - before.samples.get(key, 0.0)
        if change:
            out[key] = change
    return out


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much `name` (its samples matching `labels`, summed) grew from before to after."""
    return after.value(name, **labels) - before.value(name, **labels)
