"""The audit log file: one JSON line per event (`imapguard.audit.events`),
appended and flushed a line at a time; and reading it back (`read_events`,
`follow` for `imapguard events --follow`).

In-process subscribers (`subscribe`) see every event as it is written: the
account owners' sign-in history and the portal's live view are fed this way.
A subscriber must be quick and must not raise (one that does is logged, and
the others and the file go on).

Rotation: `reopen()` (on SIGHUP) opens the path again, so logrotate can move
the file away and signal, without `copytruncate`'s lost lines.

A file that cannot be written (disk full, removed permissions, a dead mount)
never takes the gateway down: the event is dropped, the first failure of an
outage is logged with its reason and the recovery when a line is written again
(not one log line per event, which would fill the other disk), and `failures`
counts the dropped lines for metrics. `healthy` says whether the last write
succeeded."""

from __future__ import annotations

import contextlib
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

log = logging.getLogger("imapguard.audit")

# Called with each event and its timestamp (seconds since the epoch).
Subscriber = Callable[[Event, float], None]


class AuditLog:
    """Appends events to a file (or standard output for "-"), a line at a time."""

    def __init__(self, path: str, clock: Any = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._subscribers: list[Subscriber] = []
        #: Lines that could not be written since start, and a hook told of each.
        self.failures = 0
        self.on_failure: Callable[[], None] | None = None
        self._failing = False
        self._stream: IO[str] = sys.stdout if path == "-" else _open(path)

    @property
    def healthy(self) -> bool:
        """False from a failed write until a line is written again."""
        return not self._failing

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
                self._failed(exc)
            else:
                if self._failing:
                    self._failing = False
                    log.warning("audit log %s is written again", self.path)
        for subscriber in self._subscribers:
            try:
                subscriber(event, ts)
            except Exception:
                log.exception("audit subscriber failed")

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure()
        if not self._failing:
            self._failing = True
            log.error("cannot write audit log %s, events are dropped: %s", self.path, exc)
        # A write that failed half-way leaves the rest of the line in the buffer,
        # which the next flush would glue to the next event: drop it.
        with contextlib.suppress(OSError, ValueError):
            if self._stream is not sys.stdout:
                self._stream.close()
                self._stream = _open(self.path)

    def reopen(self) -> None:
        """Open the path again (after logrotate moved the file); on failure the
        current file stays in use and the problem is logged."""
        if self._stream is sys.stdout:
            return
        try:
            stream = _open(self.path)
        except OSError as exc:
            log.error("cannot reopen audit log %s, writing to the old file: %s", self.path, exc)
            return
        with self._lock:
            old, self._stream = self._stream, stream
        with contextlib.suppress(OSError, ValueError):
            old.close()

    def close(self) -> None:
        if self._stream is not sys.stdout:
            with contextlib.suppress(OSError, ValueError):
                self._stream.close()


def _open(path: str) -> IO[str]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    return os.fdopen(fd, "a", encoding="utf-8")


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
