"""SIGHUP reloads configuration and certificates without dropping sessions;
a broken configuration is refused and the running one kept; SIGTERM drains."""

from __future__ import annotations

import contextlib
import imaplib
import signal
import ssl
import time
from pathlib import Path

import pytest

from imapguard.audit import read_events
from tests.dovecot import DovecotServer, free_port
from tests.gateway import GatewayProcess, reissue_certificate
from tests.metrics_scrape import delta, scrape

pytestmark = pytest.mark.dovecot

LOGINS = "imapguard_logins_total"
RELAYING = "imapguard_connections"


def _relaying(port: int, expected: float, timeout: float = 10.0) -> None:
    """Wait until `expected` sessions relay: a session whose client logged out
    counts until its TLS close is done (the gateway waits for the client's
    close_notify a few seconds at most)."""
    deadline = time.monotonic() + timeout
    while (now := scrape(port).value(RELAYING, phase="relay")) != expected:
        assert time.monotonic() < deadline, f"{now} sessions relay, not {expected}"
        time.sleep(0.1)


def _wait_for(gw: GatewayProcess, event: str, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(gw.events(event)) < count:
        assert time.monotonic() < deadline, f"no {event} event in the audit log"
        time.sleep(0.05)


def test_sighup_reloads_certificates_and_keeps_sessions(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    port = free_port()
    gw = GatewayProcess.create(
        tmp_path,
        dovecot,
        extra_toml=f'[limits]\ndrain_timeout = 1.0\n\n[metrics]\naddress = "127.0.0.1:{port}"\n',
    )
    gw.start()
    password = gw.create_app_password("alice")
    session = imaplib.IMAP4_SSL("127.0.0.1", gw.implicit_port, ssl_context=gw.client_ssl())
    try:
        session.login("alice", password)
        session.select("INBOX")
        before = scrape(port)
        assert before.value(RELAYING, phase="relay") == 1

        new_ca = reissue_certificate(gw)
        gw.signal(signal.SIGHUP)
        _wait_for(gw, "reload", 1)
        assert gw.events("reload")[-1]["result"] == "ok"

        with pytest.raises(ssl.SSLCertVerificationError):
            imaplib.IMAP4_SSL("127.0.0.1", gw.implicit_port, ssl_context=gw.client_ssl())
        fresh = imaplib.IMAP4_SSL(
            "127.0.0.1", gw.implicit_port, ssl_context=ssl.create_default_context(cafile=new_ca)
        )
        fresh.login("alice", password)
        fresh.logout()
        assert session.noop()[0] == "OK"  # the old session was not dropped
        _relaying(port, 1)
        reloaded = scrape(port)
        assert delta(before, reloaded, LOGINS, result="ok") == 1
        assert delta(before, reloaded, "imapguard_tls_failures_total") == 1  # the old CA's

        # A broken configuration is refused; the running one keeps serving.
        good = gw.config_path.read_text()
        gw.config_path.write_text(good + "\n[bogus]\n")
        gw.signal(signal.SIGHUP)
        _wait_for(gw, "reload", 2)
        failed = gw.events("reload")[-1]
        assert failed["result"] == "failed"
        assert "bogus" in failed["reason"]
        again = imaplib.IMAP4_SSL(
            "127.0.0.1", gw.implicit_port, ssl_context=ssl.create_default_context(cafile=new_ca)
        )
        again.login("alice", password)
        again.logout()
        _relaying(port, 1)
        refused = scrape(port)  # the endpoint serves on, the old configuration too
        assert delta(reloaded, refused, LOGINS, result="ok") == 1

        # SIGTERM: stop accepting, end sessions after drain_timeout, exit 0.
        started = time.monotonic()
        gw.signal(signal.SIGTERM)
        assert gw.proc is not None
        assert gw.proc.wait(15) == 0
        assert time.monotonic() - started < 10
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            session.noop()  # the gateway said BYE and closed the session
    finally:
        gw.stop()
        with contextlib.suppress(Exception):
            session.shutdown()
    closes = gw.events("close")
    assert any(c.get("user") == "alice" and c["reason"] == "relay ended" for c in closes)
    assert "Traceback" not in gw.log_text()


def test_sighup_reopens_the_audit_log_after_logrotate(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    """logrotate moves the file away and sends SIGHUP: the events of later logins
    go to the new file, none is lost in the old one after the signal."""
    gw = GatewayProcess.create(tmp_path, dovecot)
    gw.start()
    try:
        password = gw.create_app_password("alice")
        rotated = gw.audit_path.with_name("audit.jsonl.1")
        gw.audit_path.rename(rotated)
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not gw.audit_path.exists():
            assert time.monotonic() < deadline, "SIGHUP did not reopen the audit log"
            time.sleep(0.05)
        _wait_for(gw, "reload", 1)
        session = imaplib.IMAP4_SSL("127.0.0.1", gw.implicit_port, ssl_context=gw.client_ssl())
        session.login("alice", password)
        session.logout()
        deadline = time.monotonic() + 10
        while not [e for e in gw.events("auth") if e["result"] == "ok"]:
            assert time.monotonic() < deadline, "the login's auth event is not in the new file"
            time.sleep(0.05)
        old = [r["event"] for r in read_events(str(rotated))]
        assert "start" in old
        assert "auth" not in old
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text()
