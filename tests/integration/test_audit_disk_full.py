"""The audit log's disk fills up (a real tmpfs of a few KiB): the gateway goes on
letting users in, says so once in its log and in its metrics, and writes the
audit log again once there is room."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dovecot import DovecotServer, free_port
from tests.integration.conftest import RawClient, running_gateway

pytestmark = pytest.mark.dovecot


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
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "imapguard_audit_write_failures_total":
                return sample.value
    raise AssertionError("no imapguard_audit_write_failures_total")


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
        # Fill the disk to the last byte.
        filler = small_disk / "filler"
        for chunk in (1024, 1):  # unbuffered: each write reaches the disk or fails
            with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as f:
                while True:
                    f.write(b"x" * chunk)
        # The audit file's last page may still take a few lines: log in until the
        # writes fail; every login must go on succeeding meanwhile and after.
        for _ in range(40):
            assert _login(gw.implicit_port, gw.client_ssl(), password).startswith(b"a OK")
            if _failures(metrics_port) > 0:
                break
        failed = _failures(metrics_port)
        assert failed > 0, "the audit writes never failed: is the disk full?"
        for _ in range(2):
            assert _login(gw.implicit_port, gw.client_ssl(), password).startswith(b"a OK")
        deadline = time.monotonic() + 10
        while _failures(metrics_port) <= failed:
            assert time.monotonic() < deadline, "the failed audit writes are not counted"
            time.sleep(0.1)
        assert gw.log_text().count("cannot write audit log") == 1  # once per outage
        # Room again: the next events are written, and the log says so.
        filler.unlink()
        assert _login(gw.implicit_port, gw.client_ssl(), password).startswith(b"a OK")
        deadline = time.monotonic() + 10
        while "is written again" not in gw.log_text():
            assert time.monotonic() < deadline, "the audit log was not written again"
            time.sleep(0.1)
        assert [e for e in gw.events("auth") if e["result"] == "ok"][-1]["user"] == "alice"
