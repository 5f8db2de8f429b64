"""Secrets cannot be printed, formatted, hashed or pickled by accident."""

from __future__ import annotations

import logging
import pickle

import pytest

from imapguard.secret import Secret


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2")
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret}"):
        assert "hunter2" not in text
        assert "****" in text
    assert secret.reveal() == b"hunter2"


def test_secret_in_a_log_record_stays_masked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("login with %s", Secret("hunter2"))
    assert "hunter2" not in caplog.text


def test_secret_cannot_be_pickled_or_hashed() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Secret("x"))
    with pytest.raises(TypeError):
        hash(Secret("x"))


def test_secret_equality_and_file(tmp_path: pytest.TempPathFactory) -> None:
    assert Secret("a") == Secret(b"a")
    assert Secret("a") != Secret("b")
    path = tmp_path / "s"  # type: ignore[operator]
    path.write_bytes(b"pw\n")
    assert Secret.from_file(str(path)).reveal() == b"pw"
