"""The audit log: one JSON line per connection phase and per decision.

Events are typed records (`AuditEvent`), never f-strings. Field names follow
the SPEC: ts, event, session, src, listener, tls, client_id, user, method,
result, reason, rule, plus event-specific fields. Secrets cannot get here:
`AuditEvent` refuses a `Secret` value, and user names are cleaned of control
characters (log injection) before they are written.

`RedactingFilter` is the second line of defence for ordinary logging: it masks
LOGIN arguments, SASL responses and `password=` pairs in any log record.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from imapguard.secret import Secret
from imapguard.text import clean

__all__ = ["AuditEvent", "AuditLog", "RedactingFilter", "follow", "read_events"]


@dataclass(frozen=True)
class AuditEvent:
    event: str
    session: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in self.fields.items():
            if isinstance(value, (Secret, bytes, bytearray)):
                raise TypeError(f"audit field {key!r} must not hold a secret or raw bytes")

    def to_json(self, ts: float) -> str:
        record: dict[str, Any] = {"ts": round(ts, 6), "event": self.event}
        if self.session is not None:
            record["session"] = self.session
        for key, value in self.fields.items():
            if value is not None:
                record[key] = clean(value) if isinstance(value, str) else value
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


class AuditLog:
    """Appends events to a file (or standard output for "-"), a line at a time."""

    def __init__(self, path: str, clock: Any = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._stream: IO[str]
        if path == "-":
            self._stream = sys.stdout
        else:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._stream = os.fdopen(fd, "a", encoding="utf-8")

    def emit(self, event: AuditEvent) -> None:
        line = event.to_json(self._clock()) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError) as exc:
                # The audit log must not take the gateway down with it.
                logging.getLogger("imapguard.audit").error("cannot write audit log: %s", exc)

    def close(self) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()


def read_events(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            yield from _parse(line)


def follow(path: str, poll: float = 0.5) -> Iterator[dict[str, Any]]:
    """Like `tail -f`: the new events as they are written (survives rotation)."""
    f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - reopened on rotation
    try:
        f.seek(0, os.SEEK_END)
        inode = os.fstat(f.fileno()).st_ino
        partial = ""
        while True:
            line = f.readline()
            if line:
                partial += line
                if partial.endswith("\n"):
                    yield from _parse(partial)
                    partial = ""
                continue
            time.sleep(poll)
            try:
                if os.stat(path).st_ino != inode:
                    f.close()
                    f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                    inode = os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                pass
    finally:
        f.close()


def _parse(line: str) -> Iterator[dict[str, Any]]:
    line = line.strip()
    if not line:
        return
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return
    if isinstance(record, dict):
        yield record


_REDACTIONS = (
    # a LOGIN command: keep the tag and user, mask the password argument
    (
        re.compile(r"(?i)(\bLOGIN\s+(?:\"(?:[^\"\\]|\\.)*\"|\S+)\s+)(\"(?:[^\"\\]|\\.)*\"|\S+)"),
        r"\1****",
    ),
    # AUTHENTICATE with an initial response, and bare base64 SASL lines
    (re.compile(r"(?i)(\bAUTHENTICATE\s+\S+\s+)\S+"), r"\1****"),
    (re.compile(r"(?i)\b(pass(?:word)?|secret|token|pw)(\s*[=:]\s*)\S+"), r"\1\2****"),
)


class RedactingFilter(logging.Filter):
    """Masks credentials in log messages: the second line of defence."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = message
        for pattern, replacement in _REDACTIONS:
            masked = pattern.sub(replacement, masked)
        if masked != message:
            record.msg = masked
            record.args = None
        return True
