"""A server key that is not the one the store was sealed with is found at start
(`serve`, and every CLI command that opens the store), as one line naming
state.key_file and state.url, instead of at the first TOTP login (which used to
drop the connection with SealError). PostgreSQL: test_postgres_state.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.cli import main
from imapguard.state.keycheck import KEY_CHECK
from imapguard.state.migrations import upgrade
from imapguard.state.sqlite import open_store
from tests.unit.test_migrations import _config, _old_file, own_root_logger

__all__ = ["own_root_logger"]  # autouse here too


def _line(config: Path, url: str, why: str) -> str:
    key = config.parent / "server.key"
    return (
        f"config error: state.key_file: {key} is not the key the state store {url}"
        f" (state.url) was sealed with ({why}): restore that key file\n"
    )


def test_a_new_store_remembers_its_key_and_refuses_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    config = _config(tmp_path, url)
    assert main(["user", "list", "--config", str(config)]) == 0
    assert main(["user", "list", "--config", str(config)]) == 0  # the same key again
    (tmp_path / "server.key").write_bytes(b"x" * 32)  # a new key by mistake
    capsys.readouterr()
    assert main(["user", "list", "--config", str(config)]) == 2
    assert capsys.readouterr().err == _line(config, url, "the store was sealed with another key")


def test_an_old_store_is_checked_against_its_sealed_secrets_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file written before the check existed holds alice's TOTP secret,
    sealed with the key b"k" * 32. A wrong key must not be written down as the
    store's: it is refused, and the right one is accepted after it."""
    url = _old_file(tmp_path)
    upgrade(url)
    config = _config(tmp_path, url)
    (tmp_path / "server.key").write_bytes(b"x" * 32)
    assert main(["totp", "remove", "alice", "--config", str(config)]) == 2
    assert capsys.readouterr().err == _line(
        config, url, "a sealed TOTP secret in the store does not open with it"
    )
    store = open_store(url)
    assert store.get_meta(KEY_CHECK) is None  # nothing written
    assert store.get_totp("alice") is not None  # nothing removed
    store.close()
    (tmp_path / "server.key").write_bytes(b"k" * 32)
    assert main(["user", "list", "--config", str(config)]) == 0
    store = open_store(url)
    assert store.get_meta(KEY_CHECK) is not None
    store.close()
