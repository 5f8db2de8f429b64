"""docs/install-debian.md stays true: its configuration is valid, and the files,
paths and commands it names are the ones the repository ships."""

from __future__ import annotations

import re
from pathlib import Path

from imapguard.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "install-debian.md").read_text()
UNIT = (ROOT / "contrib" / "systemd" / "imapguard.service").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)


def test_the_guides_configuration_is_valid(tmp_path: Path) -> None:
    (toml,) = _blocks("toml")
    path = tmp_path / "imapguard.toml"
    path.write_text(toml)
    config = load_config(path, check_files=False)
    assert config.upstream.login == "master"
    assert config.state.url == "sqlite:///var/lib/imapguard/state.db"
    assert config.audit.path.startswith("/var/log/imapguard/")


def test_the_guide_installs_files_the_repository_ships() -> None:
    shipped = set(re.findall(r"/usr/local/src/imapguard/(contrib/\S+)", DOC))
    assert shipped == {"contrib/systemd/imapguard.service", "contrib/logrotate/imapguard"}
    for name in shipped:
        assert (ROOT / name).is_file(), name


def test_the_guide_and_the_unit_agree_on_paths_and_user() -> None:
    assert (
        "ExecStart=/opt/imapguard/bin/imapguard serve --config /etc/imapguard/imapguard.toml"
        in UNIT
    )
    assert "python3 -m venv /opt/imapguard" in DOC
    assert "adduser --system --group" in DOC
    assert "imapguard\n" in DOC
    # The unit's StateDirectory/LogsDirectory are /var/lib/imapguard and /var/log/imapguard.
    assert "StateDirectory=imapguard" in UNIT
    assert "LogsDirectory=imapguard" in UNIT
    assert "install -d -o imapguard -g imapguard -m 0700 /var/lib/imapguard" in DOC
    logrotate = (ROOT / "contrib" / "logrotate" / "imapguard").read_text()
    assert logrotate.startswith("#")
    assert "/var/log/imapguard/audit.jsonl {" in logrotate
    directives = [line.strip() for line in logrotate.splitlines() if not line.startswith("#")]
    assert "copytruncate" not in directives  # lines written between copy and truncate are lost
    assert "systemctl reload imapguard.service" in logrotate
