"""`imapguard demo`: starts with no system packages, serves real IMAP through the
gateway, refuses the primary password alone, stops cleanly, keeps its state."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyotp
import pytest

from tests.dovecot import free_port

pytestmark = pytest.mark.clients


def _free_base() -> int:
    for _ in range(50):
        base = random.randrange(20000, 40000)
        ports = (base + 143, base + 144, base + 443, base + 993)
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    return free_port()  # pragma: no cover - a very busy machine


def _start(state: Path, base: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imapguard.cli",
            "demo",
            "--state",
            str(state),
            "--port-base",
            str(base),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", base + 993), 0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    out, _ = proc.communicate()
    raise AssertionError(f"demo did not start: {out}")


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def _curl(state: Path, base: int, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            str(state / "gateway.crt"),
            "-u",
            f"{user}:{password}",
            f"imaps://localhost:{base + 993}/INBOX?ALL",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def _trusting(state: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(state / "gateway.crt"))


def test_demo_end_to_end_and_restart(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    base = _free_base()
    proc = _start(state, base)
    try:
        creds = json.loads((state / "demo-credentials.json").read_text())
        app = creds["alice-app-password"]
        ok = _curl(state, base, "alice", app)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("* SEARCH 1 2 3")
        refused = _curl(state, base, "alice", creds["alice"])
        assert refused.returncode == 67  # curl: login denied
        # bob: password + one-time code; then the same string again from that device
        # (what a mail client resends, its code used up); the password alone never.
        otp_code = pyotp.TOTP(creds["bob-totp-secret"]).now()
        with_code = _curl(state, base, "bob", creds["bob"] + otp_code)
        assert with_code.returncode == 0, with_code.stderr
        again = _curl(state, base, "bob", creds["bob"] + otp_code)
        assert again.returncode == 0, again.stderr
        alone = _curl(state, base, "bob", creds["bob"])
        assert alone.returncode == 67
        # The portal answers at https://localhost with the demo's certificate, and
        # carol's invitation page is there (GET spends nothing).
        portal = f"https://localhost:{base + 443}"
        with httpx.Client(verify=_trusting(state), timeout=10) as web:
            deadline = time.monotonic() + 20
            while True:
                try:
                    signin = web.get(portal + "/signin")
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "the demo's portal does not answer"
                    time.sleep(0.2)
            assert signin.status_code == 200
            assert "<h1>Sign in</h1>" in signin.text
    finally:
        code, out = _stop(proc)
    invite = re.search(rf"{portal}/invite/[A-Za-z0-9_-]{{43}}", out)
    assert invite is not None, out
    with (
        httpx.Client(verify=_trusting(state), timeout=10) as web,
        contextlib.suppress(httpx.ConnectError),
    ):
        web.get(portal + "/signin")
        raise AssertionError("the portal process outlived the demo")
    assert code == 0
    assert app in out  # the banner shows the credentials and what to try
    assert creds["bob-totp-secret"] in out
    assert "Things to try" in out
    assert "imapguard demo stopped." in out
    assert "Traceback" not in out
    events = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    assert [(e["result"], e.get("factor")) for e in events if e["event"] == "auth"] == [
        ("ok", "app-password"),
        ("missing_factor", None),  # alice has a factor: her password alone is a signal
        ("ok", "password+totp"),
        ("ok", "trusted-device"),
        ("missing_factor", None),  # bob's password alone, from his trusted device
    ]
    assert (state / "server.key").stat().st_mode & 0o077 == 0

    # State survives a restart: the same app password still works.
    proc = _start(state, base)
    try:
        again = _curl(state, base, "alice", app)
        assert again.returncode == 0, again.stderr
    finally:
        code, _ = _stop(proc)
    assert code == 0
