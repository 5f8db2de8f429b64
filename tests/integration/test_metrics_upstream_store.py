"""The upstream's health and latency and the stores' latency and errors,
scraped from the real gateway in front of a real Dovecot of this test's own
(it is stopped and started again), and a real Redis for the counters (stopped
and started again): parsed by prometheus_client's own parser."""

from __future__ import annotations

import contextlib
import imaplib
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dovecot import DOVECOT_BINARY, DovecotServer, free_port
from tests.gateway import GatewayProcess
from tests.redis_server import RedisServer

pytestmark = pytest.mark.dovecot

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def own_dovecot(tmp_path: Path) -> Iterator[DovecotServer]:
    if not DOVECOT_BINARY.exists():
        pytest.fail(f"{DOVECOT_BINARY} is missing: run `bash .ci/run`", pytrace=False)
    server = DovecotServer.create(tmp_path / "dovecot")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def _scrape(port: int) -> Samples:
    status, text = _get(port, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _login(gw: GatewayProcess, password: str) -> None:
    client = imaplib.IMAP4_SSL("127.0.0.1", gw.implicit_port, ssl_context=gw.client_ssl())
    try:
        client.login("alice", password)
        client.logout()
    finally:
        with contextlib.suppress(OSError):
            client.shutdown()


UP = "imapguard_upstream_up"
LOGINS = "imapguard_upstream_login_duration_seconds_count"
STORE = "imapguard_store_operation_duration_seconds_count"
FAILURES = "imapguard_upstream_failures_total"


@pytest.mark.parametrize("workers", [1, 2])
def test_upstream_down_and_back_and_the_stores_timed_per_login(
    tmp_path: Path, own_dovecot: DovecotServer, workers: int
) -> None:
    port = free_port()
    gw = GatewayProcess.create(
        tmp_path / "gw",
        own_dovecot,
        extra_toml=f'[metrics]\naddress = "127.0.0.1:{port}"\n',
        workers=workers,
    )
    gw.start()
    try:
        password = gw.create_app_password("alice")
        _login(gw, password)
        first = _scrape(port)
        assert first[(UP, frozenset())] == 1
        assert _sum(first, LOGINS, result="ok") == 1
        accounts = _sum(first, STORE, store="accounts")
        counters = _sum(first, STORE, store="counters")
        assert _sum(first, STORE, store="accounts", operation="read") >= 1
        assert _sum(first, STORE, store="counters", operation="lookup") >= 1  # the precheck
        _login(gw, password)
        second = _scrape(port)
        assert _sum(second, LOGINS, result="ok") == 2
        assert _sum(second, STORE, store="accounts") > accounts
        assert _sum(second, STORE, store="counters") > counters
        assert _sum(second, "imapguard_store_errors_total") == 0

        own_dovecot.stop()
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            _login(gw, password)
        down = _scrape(port)
        assert down[(UP, frozenset())] == 0
        assert _sum(down, FAILURES, kind="connect") == 1
        assert _sum(down, LOGINS, result="unavailable") == 1
        # The node itself still works: its health does not follow the upstream's
        # (README "All cores, metrics and health" says why).
        assert _get(port, "/health") == (200, "ok\n")

        own_dovecot.start()
        _login(gw, password)
        back = _scrape(port)
        assert back[(UP, frozenset())] == 1
        assert _sum(back, LOGINS, result="ok") == 3
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text()


def test_the_counter_store_down_is_counted_as_store_errors(
    tmp_path: Path, own_dovecot: DovecotServer
) -> None:
    redis = RedisServer.create(tmp_path / "redis")
    redis.start()
    port = free_port()
    gw = GatewayProcess.create(
        tmp_path / "gw",
        own_dovecot,
        extra_toml=f'[metrics]\naddress = "127.0.0.1:{port}"\n',
        state=(
            f'url = "sqlite:///{tmp_path}/state.db"\n'
            f'counters_url = "{redis.url}"\n'
            f'counters_password_file = "{redis.password_file}"'
        ),
    )
    gw.start()
    try:
        password = gw.create_app_password("alice")
        _login(gw, password)
        before = _scrape(port)
        assert _sum(before, STORE, store="counters", operation="lookup") == 1
        assert _sum(before, "imapguard_store_errors_total") == 0

        redis.stop()
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            _login(gw, password)
        down = _scrape(port)
        assert _sum(down, "imapguard_store_errors_total", store="counters") >= 1
        assert _sum(down, "imapguard_store_errors_total", store="accounts") == 0
        assert down[(UP, frozenset())] == 1  # the upstream is not to blame

        redis.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                _login(gw, password)
                break
            except imaplib.IMAP4.error:
                assert time.monotonic() < deadline, "logins did not come back with Redis"
                time.sleep(0.5)
        back = _scrape(port)
        assert _sum(back, STORE, store="counters", operation="lookup") > _sum(
            down, STORE, store="counters", operation="lookup"
        )
    finally:
        gw.stop()
        redis.stop()
    assert "Traceback" not in gw.log_text()
