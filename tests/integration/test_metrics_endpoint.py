"""`[metrics]` on the real gateway in front of real Dovecot: what a scrape says
after real logins, parsed by prometheus_client's own parser; /health tells the
load balancer when the node drains; the endpoint's port in use is one line."""

from __future__ import annotations

import contextlib
import imaplib
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dovecot import DovecotServer, free_port
from tests.gateway import IMAPGUARD, GatewayProcess

pytestmark = pytest.mark.dovecot


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _gateway(tmp_path: Path, dovecot: DovecotServer, port: int) -> GatewayProcess:
    return GatewayProcess.create(
        tmp_path,
        dovecot,
        extra_toml=f'[metrics]\naddress = "127.0.0.1:{port}"\n\n[limits]\ndrain_timeout = 5.0\n',
    )


def test_a_scrape_counts_real_logins_and_health_reports_draining(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    port = free_port()
    gw = _gateway(tmp_path, dovecot, port)
    gw.start()
    session: imaplib.IMAP4_SSL | None = None
    try:
        password = gw.create_app_password("alice")
        assert _get(port, "/health") == (200, "ok\n")
        bad = imaplib.IMAP4_SSL("127.0.0.1", gw.implicit_port, ssl_context=gw.client_ssl())
        try:
            with pytest.raises(imaplib.IMAP4.error):
                bad.login("alice", "not-the-password")
        finally:
            bad.shutdown()
        session = imaplib.IMAP4_SSL("127.0.0.1", gw.implicit_port, ssl_context=gw.client_ssl())
        session.login("alice", password)
        session.select("INBOX")
        status, text = _get(port, "/metrics")
        assert status == 200
        samples = _samples(text)
        ok = samples[
            (
                "imapguard_logins_total",
                frozenset({("method", "app-password"), ("result", "ok"), ("reason", "ok")}),
            )
        ]
        assert ok == 1
        failed = sum(
            v
            for (name, labels), v in samples.items()
            if name == "imapguard_logins_total" and ("result", "invalid") in labels
        )
        assert failed == 1
        assert samples[("imapguard_connections", frozenset({("phase", "relay")}))] == 1
        # Timed: both handshakes, and both decisions by their result.
        assert samples[("imapguard_tls_handshake_duration_seconds_count", frozenset())] == 2
        for result in ("ok", "invalid"):
            count = ("imapguard_login_duration_seconds_count", frozenset({("result", result)}))
            assert samples[count] == 1
        assert "alice" not in text  # no account in any label
        # SIGTERM with a session relaying: the node drains, and says so.
        gw.signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _get(port, "/health")[0] != 503:
            assert time.monotonic() < deadline, "/health did not report the drain"
            time.sleep(0.05)
        assert _get(port, "/health") == (503, "draining\n")
        assert gw.proc is not None
        assert gw.proc.wait(20) == 0
    finally:
        gw.stop()
        if session is not None:
            with contextlib.suppress(Exception):
                session.shutdown()
    assert "Traceback" not in gw.log_text()


def test_metrics_port_in_use_is_one_line(tmp_path: Path, dovecot: DovecotServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw = _gateway(tmp_path, dovecot, port)
        done = subprocess.run(
            [*IMAPGUARD, "serve", "--config", str(gw.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"config error: metrics.address: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in done.stderr
