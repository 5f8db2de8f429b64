"""The example configuration in docs/ is valid for this build."""

from __future__ import annotations

import tomllib
from pathlib import Path

from imapguard.config import Config, validate_config

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_matches_the_schema() -> None:
    raw = tomllib.loads((ROOT / "docs" / "example.toml").read_text())
    config = Config.model_validate(raw)
    assert config.upstream.login == "master"
    assert [listener.tls for listener in config.listen] == ["implicit", "starttls"]


def test_example_config_has_no_cross_field_problems() -> None:
    raw = tomllib.loads((ROOT / "docs" / "example.toml").read_text())
    config = Config.model_validate(raw)
    assert validate_config(config, check_files=False) == []
    assert config.oauth is not None
    assert config.notify is not None
    assert config.portal is not None
    assert config.portal.origin == "https://mail-security.example.org"


def test_readme_prints_the_grade_table_and_the_catalog() -> None:
    from imapguard.scanner.catalog import catalog_markdown
    from imapguard.scanner.grade import grade_table_markdown

    readme = (ROOT / "README.md").read_text()
    assert grade_table_markdown() in readme
    assert catalog_markdown() in readme
