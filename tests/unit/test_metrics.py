"""Metrics follow the audit events with bounded labels, and the endpoint serves
only whom it should, bounded, in a form Prometheus parses."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from imapguard.audit import AuditLog, events
from imapguard.metrics import AuditMetrics, Metrics
from imapguard.metrics.http import MAX_REQUEST, MetricsServer
from imapguard.metrics.registry import MAX_REASONS


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _auth(reason: str, result: str = "invalid", method: str | None = "password") -> events.Auth:
    return events.Auth(
        session="s",
        src="192.0.2.1",
        listener="l",
        mechanism="LOGIN",
        user="alice",
        method=method,
        result=result,
        reason=reason,
    )


def test_connection_phases_follow_connect_relay_close() -> None:
    m = Metrics()
    feed = AuditMetrics(m)
    for session in ("a", "b"):
        feed(
            events.Connect(
                session=session, src="192.0.2.1", src_port=1, listener="l", tls_mode="implicit"
            ),
            0.0,
        )
    feed(events.Relay(session="a", src="192.0.2.1", user="alice"), 0.0)
    assert _value(m, "imapguard_connections", phase="preauth") == 1
    assert _value(m, "imapguard_connections", phase="relay") == 1
    feed(
        events.Close(
            session="a",
            src="192.0.2.1",
            reason="relay ended",
            duration=3.0,
            bytes_in=10,
            bytes_out=2000,
        ),
        0.0,
    )
    feed(events.Close(session="b", src="192.0.2.1", reason="timeout"), 0.0)
    feed(events.Close(session="b", src="192.0.2.1", reason="again"), 0.0)  # never below zero
    assert _value(m, "imapguard_connections", phase="preauth") == 0
    assert _value(m, "imapguard_connections", phase="relay") == 0
    assert _value(m, "imapguard_accepted_connections_total", tls_mode="implicit") == 2
    assert _value(m, "imapguard_relay_bytes_total", direction="out") == 2000
    assert _value(m, "imapguard_session_duration_seconds_count") == 1


def test_login_reasons_never_carry_client_text_or_grow_without_bound() -> None:
    m = Metrics()
    feed = AuditMetrics(m)
    feed(_auth("upstream: NO [AUTHENTICATIONFAILED] alice's details"), 0.0)
    feed(_auth("token refused (claim 'sub' = <script>)"), 0.0)
    feed(_auth("ok", result="ok", method=None), 0.0)
    assert (
        _value(m, "imapguard_logins_total", method="password", result="invalid", reason="upstream")
        == 1
    )
    assert (
        _value(
            m, "imapguard_logins_total", method="password", result="invalid", reason="token refused"
        )
        == 1
    )
    assert _value(m, "imapguard_logins_total", method="none", result="ok", reason="ok") == 1
    # An attacker who could vary the reason text gets at most MAX_REASONS series.
    for i in range(MAX_REASONS * 3):  # letters: digits are folded (below)
        feed(_auth(f"reason {chr(97 + i // 26)}{chr(97 + i % 26)}"), 0.0)
    reasons = {
        s.labels["reason"]
        for family in text_string_to_metric_families(_text(m))
        for s in family.samples
        if s.name == "imapguard_logins_total"
    }
    assert len(reasons) <= MAX_REASONS + 1
    assert "other" in reasons
    assert not any("alice" in r or "<" in r for r in reasons)


def test_login_reason_labels_carry_no_record_ids() -> None:
    """The reasons of app-password refusals name the record ("app password 17
    expired"): its id in a label would leak ids and give each its own series."""
    m = Metrics()
    feed = AuditMetrics(m)
    for record in range(1, MAX_REASONS * 2):
        feed(_auth(f"app password {record} expired", method="app-password"), 0.0)
        feed(_auth(f"app password {record} is not for this network", method="app-password"), 0.0)
    reasons = {
        s.labels["reason"]
        for family in text_string_to_metric_families(_text(m))
        for s in family.samples
        if s.name == "imapguard_logins_total"
    }
    assert reasons == {"app password N expired", "app password N is not for this network"}
    count = _value(
        m,
        "imapguard_logins_total",
        method="app-password",
        result="invalid",
        reason="app password N expired",
    )
    assert count == MAX_REASONS * 2 - 1


def test_posture_blocks_and_audit_failures_are_counted() -> None:
    m = Metrics()
    feed = AuditMetrics(m)
    assert _value(m, "imapguard_posture", posture="normal") == 1
    feed(
        events.Posture(
            before="normal",
            after="under_attack",
            ratio=0.9,
            baseline=0.1,
            trigger=0.5,
            failures=90,
            attempts=100,
            sprays=1,
        ),
        0.0,
    )
    assert _value(m, "imapguard_posture", posture="under_attack") == 1
    assert _value(m, "imapguard_posture", posture="normal") == 0
    feed(
        events.DefenseBlock(
            target="192.0.2.9",
            target_kind="source",
            reason="brute force",
            level=1,
            expires=0.0,
            duration=60.0,
            enforced=True,
        ),
        0.0,
    )
    assert _value(m, "imapguard_blocks_total", kind="source", enforced="true") == 1
    log = AuditLog("/dev/full")
    log.on_failure = m.audit_failures_total.inc
    log.subscribe(feed)
    log.emit(events.Start(pid=1))
    log.close()
    assert _value(m, "imapguard_audit_write_failures_total") == 1


def _text(m: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()


async def _get(port: int, request: bytes, source: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


class Endpoint:
    """A running MetricsServer and the health problem it reports."""

    def __init__(self) -> None:
        self.problem: str | None = None
        metrics = Metrics()
        AuditMetrics(metrics)(_auth("ok", result="ok"), 0.0)
        self.server = MetricsServer(
            "127.0.0.1", 0, ["127.0.0.1/32"], lambda: metrics.registry, lambda: self.problem
        )

    @property
    def port(self) -> int:
        return self.server.port


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Endpoint]:
    endpoint = Endpoint()
    await endpoint.server.start()
    yield endpoint
    await endpoint.server.close()


@pytest.mark.asyncio
async def test_metrics_endpoint_is_parsed_by_prometheus(server: Endpoint) -> None:
    answer = await _get(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert "imapguard_logins" in families
    assert "imapguard_connections" in families


@pytest.mark.asyncio
async def test_health_says_why_a_node_takes_no_logins(server: Endpoint) -> None:
    ok = await _get(server.port, b"GET /health HTTP/1.0\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ")
    assert ok.endswith(b"\r\n\r\nok\n")
    server.problem = "draining"
    busy = await _get(server.port, b"GET /health HTTP/1.0\r\n\r\n")
    assert busy.startswith(b"HTTP/1.1 503 ")
    assert busy.endswith(b"draining\n")


@pytest.mark.asyncio
async def test_scrape_from_an_unlisted_source_is_forbidden(server: Endpoint) -> None:
    answer = await _get(server.port, b"GET /metrics HTTP/1.0\r\n\r\n", source="127.0.0.2")
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"imapguard_" not in answer


@pytest.mark.asyncio
async def test_oversized_request_is_refused_without_buffering_it(server: Endpoint) -> None:
    flood = b"GET /metrics HTTP/1.0\r\nX: " + b"a" * (MAX_REQUEST * 4) + b"\r\n\r\n"
    answer = await _get(server.port, flood)
    assert answer.startswith(b"HTTP/1.1 400 ")


@pytest.mark.asyncio
async def test_other_methods_and_paths_are_refused(server: Endpoint) -> None:
    assert (await _get(server.port, b"POST /metrics HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
    assert (await _get(server.port, b"GET /admin HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 404 ")


def test_port_in_use_raises_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = MetricsServer("127.0.0.1", port, [], lambda: Metrics().registry, lambda: None)
        with pytest.raises(OSError, match="in use"):
            asyncio.run(srv.start())


def test_workers_metrics_are_summed_and_a_dead_workers_gauges_dropped(tmp_path: Path) -> None:
    """Two worker processes count logins and hold connections; the exporter sums
    the counters, and drops the live gauge of a worker that ended."""
    import subprocess
    import sys

    from imapguard.metrics.multiprocess import ENV, collect, worker_ended

    script = (
        "from imapguard.metrics import Metrics;"
        "m = Metrics();"
        "m.logins_total.labels('app-password', 'ok', 'ok').inc(3);"
        "m.connections.labels('relay').inc(2);"
        "import os; print(os.getpid())"
    )
    env = {**os.environ, ENV: str(tmp_path)}
    pids = [
        int(
            subprocess.run(
                [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(2)
    ]

    def sample(name: str, **labels: str) -> float | None:
        return collect(tmp_path).get_sample_value(name, labels)

    assert sample("imapguard_logins_total", method="app-password", result="ok", reason="ok") == 6
    assert sample("imapguard_connections", phase="relay") == 4
    worker_ended(pids[0], tmp_path)
    assert sample("imapguard_connections", phase="relay") == 2
    assert sample("imapguard_logins_total", method="app-password", result="ok", reason="ok") == 6


@pytest.mark.asyncio
async def test_unlisted_sources_holding_connections_cannot_starve_the_health_check(
    server: Endpoint,
) -> None:
    """An address that may not scrape opens more connections than there are
    slots and sends nothing: each is answered 403 at once without taking a slot,
    so the load balancer's /health still gets its answer."""
    from imapguard.metrics.http import MAX_CLIENTS

    held = []
    for _ in range(MAX_CLIENTS + 4):
        held.append(
            await asyncio.open_connection("127.0.0.1", server.port, local_addr=("127.0.0.2", 0))
        )
    try:
        first = await asyncio.wait_for(held[0][0].read(), 5)
        assert first.startswith(b"HTTP/1.1 403 ")
        assert (await _get(server.port, b"GET /health HTTP/1.0\r\n\r\n")).endswith(b"ok\n")
    finally:
        for _, writer in held:
            writer.close()


@pytest.mark.asyncio
async def test_refused_metrics_sources_hold_at_most_max_refused_connections(
    server: Endpoint,
) -> None:
    """A flood from an address that may not scrape: the first MAX_REFUSED are
    answered 403 and linger a second at most; the rest are closed without an
    answer at once, so the flood holds a bounded number of the server's sockets."""
    from imapguard.metrics.http import MAX_REFUSED

    held = []
    for _ in range(MAX_REFUSED + 20):
        held.append(
            await asyncio.open_connection("127.0.0.1", server.port, local_addr=("127.0.0.2", 0))
        )
    try:
        answers = await asyncio.gather(*(asyncio.wait_for(r.read(), 5) for r, _ in held))
        answered = [a for a in answers if a.startswith(b"HTTP/1.1 403 ")]
        assert MAX_REFUSED // 2 <= len(answered) <= MAX_REFUSED
        assert all(a == b"" for a in answers if not a.startswith(b"HTTP/1.1 403 "))
        assert len(answered) < len(answers)
    finally:
        for _, writer in held:
            writer.close()
