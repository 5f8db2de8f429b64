"""The workers' copy of the accepted configuration (`compose/supervising._Accepted`):
its directory's name is in every worker's command line, so a local user who saw it
go (a cleaner of old temporary files) must not get the copy written where he chose."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from imapguard.compose.supervising import _Accepted


def test_the_config_copy_is_not_written_through_a_directory_planted_in_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "imapguard.toml"
    source.write_text('[upstream]\nhost = "x"\n')
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    accepted = _Accepted(str(source))
    try:
        accepted._text = source.read_bytes()  # as take() keeps it
        accepted.refresh()
        copy = Path(accepted.path)
        assert copy.read_bytes() == source.read_bytes()
        assert copy.stat().st_mode & 0o777 == 0o600
        # The cleaner takes the directory; someone puts a symlink of that name.
        for entry in copy.parent.iterdir():
            entry.unlink()
        copy.parent.rmdir()
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o755)
        theirs.chmod(0o755)
        copy.parent.symlink_to(theirs)
        with caplog.at_level(logging.ERROR, "imapguard"):
            accepted.refresh()
        assert list(theirs.iterdir()) == []  # nothing written there
        assert "not a private directory" in caplog.text
        # A directory of that name with other permissions: refused too.
        os.unlink(copy.parent)
        copy.parent.mkdir(mode=0o755)
        copy.parent.chmod(0o755)
        accepted.refresh()
        assert list(copy.parent.iterdir()) == []
    finally:
        accepted.close()
