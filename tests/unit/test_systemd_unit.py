"""The systemd unit in contrib/ is valid and keeps its sandbox.

`systemd-analyze verify` checks the syntax and that the commands exist (the
unit's /opt/imapguard path is pointed at this checkout's console script);
`systemd-analyze security --offline` scores the sandbox, and the settings the
install guide promises are each checked by name, so dropping one fails here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "systemd" / "imapguard.service"
ANALYZE = "/usr/bin/systemd-analyze"


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def local_unit(tmp_path: Path) -> Path:
    """The unit with its ExecStart pointed at this checkout's `imapguard`."""
    script = Path(sys.executable).with_name("imapguard")
    assert script.exists(), "the console script is installed with the package"
    text = UNIT.read_text().replace("/opt/imapguard/bin/imapguard", str(script))
    path = tmp_path / "imapguard.service"
    path.write_text(text)
    return path


def test_unit_passes_systemd_analyze_verify(local_unit: Path) -> None:
    assert shutil.which(ANALYZE), "CI installs systemd for systemd-analyze"
    done = subprocess.run(
        [ANALYZE, "verify", str(local_unit)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_unit_sandbox_scores_ok(local_unit: Path) -> None:
    done = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(local_unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout
    assert match.group(2) == "OK"


def test_unit_runs_unprivileged_with_only_the_bind_capability() -> None:
    settings = _settings(UNIT.read_text())
    assert settings["User"] == ["imapguard"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert settings["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    # SIGHUP reloads (and reopens the audit log for logrotate); SIGTERM drains.
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # A reload during the start cannot stop it for good (clean exit by SIGHUP).
    assert settings["Restart"] == ["on-failure"]
    assert settings["RestartForceExitStatus"] == ["SIGHUP"]
    assert settings["KillSignal"] == ["SIGTERM"]
    # The only writable places: the state and the logs.
    assert settings["StateDirectory"] == ["imapguard"]
    assert settings["LogsDirectory"] == ["imapguard"]
    assert "ReadWritePaths" not in settings
