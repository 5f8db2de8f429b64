"""The audit log's disk fills up (a real tmpfs of a few KiB): the gateway goes on
letting users in, says so once in its log and in its metrics, and writes the
audit log again once there is room."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dovecot import DovecotServer, free_port
from tests.integration.conftest import RawClient, running_gateway
from tests.metrics_scrape import delta, scrape

pytestmark = pytest.mark.dovecot

FAILURES = "imapguard_audit_write_failures_total"
LOGINS = "imapguard_logins_total"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "audit-fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _failures(port: int) -> float:
    got = scrape(port)
    assert got.has(FAILURES), f"no {FAILURES}"
    return got.value(FAILURES)


def _login(port: int, ctx: object, password: str) -> bytes:
    with RawClient(port, "127.0.1.220", tls=ctx) as c:  # type: ignore[arg-type]
        c.line()
        return c.command(b"a", f'LOGIN alice "{password}"'.encode())[-1]


def test_a_full_audit_disk_does_not_stop_logins(
    tmp_path: Path, dovecot: DovecotServer, small_disk: Path
) -> None:
    metrics_port = free_port()
    audit = small_disk / "audit.jsonl"

    def edit(text: str) -> str:
        text = re.sub(r'^path = ".*audit\.jsonl"$', f'path = "{audit}"', text, flags=re.M)
        return text + f'\n[metrics]\naddress = "127.0.0.1:{metrics_port}"\n'

    with running_gateway(tmp_path / "gw", dovecot, edit=edit) as gw:
        gw.audit_path = audit  # where this gateway writes it
        password = gw.create_app_password("alice")
        assert _login(gw.implicit_port, gw.client_ssl(), password).startswith(b"a OK")
        before = scrape(metrics_port)
        assert before.value(FAILURES) == 0
        assert before.value(LOGINS, result="ok") == 1
        # Fill the disk to the last byte.
        filler = small_disk / "filler"
        for chunk in (1024, 1):  # unbuffered: each write reaches the disk or fails
            with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as f:
                while True:
                    f.write(b"x" * chunk)
        # The audit file's last page may still take a few lines: log in until the
        # writes fail; every login must go on succeeding meanwhile and after.
        logins = 0
        for _ in range(40):
            assert _login(gw.implicit_port, gw.client_ssl(), password).startswith(b"a OK")
            logins += 1
            if _failures(metrics_port) > 0:
                break
        failed = _failures(metrics_port)
        assert failed > 0, "the audit writes never failed: is the disk full?"
        for _ in range(2):
            assert _login(gw.implicit_port, gw.client_ssl(), password).startswith(b"a OK")
            logins += 1
        deadline = time.monotonic() + 10
        while _failures(metrics_port) <= failed:
            assert time.monotonic() < deadline, "the failed audit writes are not counted"
            time.sleep(0.1)
        assert gw.log_text().count("cannot write audit log") == 1  # once per outage
        # The metrics count what the audit log could not hold: every login of
        # the outage is in them, the endpoint serving as before.
        full = scrape(metrics_port)
        assert delta(before, full, LOGINS, result="ok") == logins
        assert delta(before, full, LOGINS, result="ok", reason="ok") == logins
        # Room again: the next events are written, and the log says so.
        filler.unlink()
        assert _login(gw.implicit_port, gw.client_ssl(), password).startswith(b"a OK")
        deadline = time.monotonic() + 10
        while "is written again" not in gw.log_text():
            assert time.monotonic() < deadline, "the audit log was not written again"
            time.sleep(0.1)
        assert [e for e in gw.events("auth") if e["result"] == "ok"][-1]["user"] == "alice"
        written = scrape(metrics_port)
        assert delta(full, written, LOGINS, result="ok") == 1
        assert _login(gw.implicit_port, gw.client_ssl(), password).startswith(b"a OK")
        after = scrape(metrics_port)
        assert delta(written, after, LOGINS, result="ok") == 1
        assert delta(written, after, FAILURES) == 0  # written again: no more failures
