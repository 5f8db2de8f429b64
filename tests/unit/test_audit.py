"""Audit events are typed JSON lines; logs mask credentials."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from imapguard.audit import AuditLog, RedactingFilter, events, read_events
from imapguard.audit.events import to_json
from imapguard.secret import Secret
from imapguard.text import clean as clean_text


def test_events_are_json_lines_with_spec_fields(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path), clock=lambda: 1700000000.5)
    log.emit(
        events.Auth(
            session="s1",
            src="192.0.2.1",
            listener="0.0.0.0:993",
            mechanism="LOGIN",
            user="alice",
            rule=None,
            result="ok",
            reason="ok",
        )
    )
    log.close()
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert record == {
        "ts": 1700000000.5,
        "event": "auth",
        "session": "s1",
        "src": "192.0.2.1",
        "listener": "0.0.0.0:993",
        "mechanism": "LOGIN",
        "user": "alice",
        "result": "ok",
        "reason": "ok",
    }
    assert list(read_events(str(path))) == [record]


def test_event_refuses_secrets_and_raw_bytes() -> None:
    # The record types do not admit them; a value that slips past the types
    # still never reaches the log.
    secret: Any = Secret("x")
    raw: Any = b"alice"
    with pytest.raises(TypeError):
        to_json(events.CompromiseSignal(src="192.0.2.1", user=secret, reason="r"), 0.0)
    with pytest.raises(TypeError):
        to_json(events.CompromiseSignal(src="192.0.2.1", user=raw, reason="r"), 0.0)


def test_client_text_cannot_inject_log_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.emit(
        events.CompromiseSignal(
            session="s", src="192.0.2.1", user='alice\r\n{"event":"forged"}', reason="r"
        )
    )
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["event"] == "compromise_signal"
    assert clean_text("a\x00b" + "x" * 300).startswith("a?b")
    assert len(clean_text("x" * 300)) == 259


@pytest.mark.parametrize(
    ("message", "leaked"),
    [
        ("C: a1 LOGIN alice hunter2", "hunter2"),
        ('C: a1 LOGIN "alice" "hunter 2"', "hunter 2"),
        ("C: a2 AUTHENTICATE PLAIN AGFsaWNlAGh1bnRlcjI=", "AGFsaWNlAGh1bnRlcjI="),
        ("upstream password=hunter2 failed", "hunter2"),
    ],
)
def test_redacting_filter_masks_credentials(
    message: str, leaked: str, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("imapguard.test.redact")
    logger.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="imapguard.test.redact"):
            logger.info(message)
    finally:
        logger.filters.clear()
    assert leaked not in caplog.text
    assert "****" in caplog.text


def test_follow_yields_new_events_only(tmp_path: Path) -> None:
    import threading

    from imapguard.audit import follow

    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.emit(events.Start(session="s0", pid=1))
    seen: list[dict[str, object]] = []
    started = threading.Event()

    def reader() -> None:
        followed = follow(str(path), poll=0.01)
        started.set()
        for record in followed:
            seen.append(record)
            if len(seen) == 2:
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    started.wait(5)
    import time

    time.sleep(0.2)  # the generator has opened the file and sought to its end
    log.emit(events.Reload(session="s1", result="ok"))
    log.emit(events.Stop(session="s2", pid=1))
    thread.join(5)
    log.close()
    assert [r["event"] for r in seen] == ["reload", "stop"]


def test_bidi_overrides_and_c1_controls_never_reach_the_log() -> None:
    """Client text that would reorder or hide what a log reader sees (A8)."""
    assert clean_text("user\u202eexe.txt") == "user?exe.txt"
    assert clean_text("a\u0085b\u009b31mc") == "a?b?31mc"
    assert clean_text("a\u2066b\u200bc\u2028d\ufeff") == "a?b?c?d?"
    assert clean_text("jörg ünïcode") == "jörg ünïcode"


def test_reopen_after_logrotate_writes_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.emit(events.Start(pid=1))
    path.rename(tmp_path / "audit.jsonl.1")  # what logrotate does before its postrotate
    log.emit(events.Start(pid=2))  # still the old file, until the signal
    log.reopen()
    log.emit(events.Start(pid=3))
    log.close()
    assert [r["pid"] for r in read_events(str(tmp_path / "audit.jsonl.1"))] == [1, 2]
    assert [r["pid"] for r in read_events(str(path))] == [3]


def test_full_disk_drops_events_with_one_error_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The path is a symlink: first to /dev/full (every write fails with ENOSPC),
    # then to a real file, as when space comes back.
    path = tmp_path / "audit.jsonl"
    path.symlink_to("/dev/full")
    log = AuditLog(str(path))
    with caplog.at_level(logging.WARNING, logger="imapguard.audit"):
        for pid in range(5):
            log.emit(events.Start(pid=pid))
        assert log.failures == 5
        assert not log.healthy
        path.unlink()
        path.symlink_to(tmp_path / "real.jsonl")
        log.emit(events.Start(pid=5))  # fails on the old stream, which is reopened
        log.emit(events.Start(pid=6))
    log.close()
    assert log.healthy
    assert log.failures == 6
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # one line per outage, not one per event
    assert "No space left on device" in errors[0]
    assert any("written again" in r.getMessage() for r in caplog.records)
    # No half-written line of a failed event is glued to the next one.
    assert [r["pid"] for r in read_events(str(tmp_path / "real.jsonl"))] == [6]
    assert (tmp_path / "real.jsonl").read_text().count("\n") == 1
