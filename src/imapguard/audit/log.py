"""The audit log file: one JSON line per event (`imapguard.audit.events`),
appended and flushed a line at a time; and reading it back (`read_events`,
`follow` for `imapguard events --follow`).

In-process subscribers (`subscribe`) see every event as it is written: the
account owners' sign-in history and the portal's live view are fed this way.
A subscriber must be quick and must not raise (one that does is logged, and
the others and the file go on)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from imapguard.audit.events import Event, to_json

__all__ = ["AuditLog", "Subscriber", "follow", "read_events"]

# Called with each event and its timestamp (seconds since the epoch).
Subscriber = Callable[[Event, float], None]


class AuditLog:
    """Appends events to a file (or standard output for "-"), a line at a time."""

    def __init__(self, path: str, clock: Any = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._subscribers: list[Subscriber] = []
        self._stream: IO[str]
        if path == "-":
            self._stream = sys.stdout
        else:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._stream = os.fdopen(fd, "a", encoding="utf-8")

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def emit(self, event: Event) -> None:
        ts = self._clock()
        line = to_json(event, ts) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError) as exc:
                # The audit log must not take the gateway down with it.
                logging.getLogger("imapguard.audit").error("cannot write audit log: %s", exc)
        for subscriber in self._subscribers:
            try:
                subscriber(event, ts)
            except Exception:
                logging.getLogger("imapguard.audit").exception("audit subscriber failed")

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
