"""The audit log as the admin pages read it: the newest events, then the new
ones as they are written, and the filters the admin chose.

Every process (gateway, portal, CLI) appends to one file, so the pages read
the file (as `imapguard events --follow` does), not the portal's own events.
A reader remembers a `Position`: the file's inode and a byte offset just past
the last complete line it read. Rules:

* Only complete lines count: a line still being written is read next time.
* Rotation (another inode at the path) starts at the beginning of the new
  file; truncation (the file shorter than the offset) starts at its beginning.
* Every read is bounded (`limit` bytes), and a reader more than `MAX_BACKLOG`
  behind skips ahead to the newest bytes and says so: under attack the log
  grows by megabytes a minute, and neither the portal's memory nor an admin's
  browser should take all of it. A line longer than `MAX_LINE` is skipped.
* These are blocking file reads: callers run them off the event loop
  (`asyncio.to_thread`).
* The live page reads through a `LiveFeed`: this file (`FileFeed`), or what
  the composition root gives when the events of every node are gathered in
  one place (a Redis Stream, `state.redis.live`). A feed's position is text
  the feed alone reads (here `Position`'s form); the page passes it back.
* A record is shown only through `shown()`: the fields of an `auth` event the
  pages display, as text (the audit log never holds a secret; the templates
  and the script still escape every one of them).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = [
    "MAX_BACKLOG",
    "RESULTS",
    "AuthFilter",
    "Batch",
    "FeedBatch",
    "FileFeed",
    "LiveFeed",
    "Position",
    "read_after",
    "shown",
    "tail",
]

# How far behind the newest bytes a follower may be before it skips ahead, and
# how much the first page reads back: at ~300 bytes an event, a few thousand events.
MAX_BACKLOG = 1024 * 1024
# The longest line read: an audit line is well under 4 KiB (fields are bounded).
MAX_LINE = 64 * 1024
# The results of an `auth` event (audit.events.Auth).
RESULTS = ("ok", "invalid", "missing_factor", "denied", "unavailable")
# The fields of an `auth` event the pages show, in this order.
SHOWN_FIELDS = (
    "ts",
    "user",
    "src",
    "result",
    "reason",
    "mechanism",
    "method",
    "listener",
    "client_id",
    "rule",
)
# A filter's longest text (an account name is at most 255 bytes, names.MAX_USER_BYTES).
MAX_FILTER = 256
_UNTIL = re.compile(r"\(until (\d{1,12})\)")
_POSITION = re.compile(r"(\d{1,20})\.(\d{1,20})")


@dataclass(frozen=True)
class Position:
    """Just past the last complete line read, in the file with this inode."""

    inode: int
    offset: int

    def __str__(self) -> str:
        return f"{self.inode}.{self.offset}"

    @classmethod
    def parse(cls, text: str | None) -> Position | None:
        """`str()`'s form, or None for anything else."""
        found = _POSITION.fullmatch(text or "")
        return None if found is None else cls(int(found.group(1)), int(found.group(2)))


@dataclass(frozen=True)
class Batch:
    records: list[dict[str, Any]]
    position: Position
    # Bytes were passed over: the reader fell behind, the file was rotated or
    # truncated, or a line was too long.
    skipped: bool


@dataclass(frozen=True)
class AuthFilter:
    """Which `auth` events to show: an account (exact, case-insensitive), a
    source (an address, or a network holding it) and a result; None is any."""

    user: str | None = None
    source: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    result: str | None = None

    @classmethod
    def parse(cls, user: str | None, source: str | None, result: str | None) -> AuthFilter:
        """From the page's query parameters ("" is any); ValueError, saying what
        is wrong in words for the page, if one is."""
        user = (user or "").strip()
        source = (source or "").strip()
        result = (result or "").strip()
        if len(user) > MAX_FILTER or not user.isprintable():
            raise ValueError("The account name is too long or has control characters.")
        network = None
        if source:
            try:
                network = ipaddress.ip_network(source[:MAX_FILTER], strict=False)
            except ValueError:
                raise ValueError("The source must be an IP address or a network.") from None
        if result and result not in RESULTS:
            raise ValueError("Unknown result.")
        return cls(user.lower() or None, network, result or None)

    def query(self) -> dict[str, str]:
        """The filter as query parameters (what `parse` reads back)."""
        return {
            "user": self.user or "",
            "source": str(self.source) if self.source is not None else "",
            "result": self.result or "",
        }

    def matches(self, record: dict[str, Any]) -> bool:
        if record.get("event") != "auth":
            return False
        if self.result is not None and record.get("result") != self.result:
            return False
        if self.user is not None:
            user = record.get("user")
            if not isinstance(user, str) or user.lower() != self.user:
                return False
        if self.source is not None:
            try:
                address = ipaddress.ip_address(str(record.get("src", "")))
            except ValueError:
                return False
            if address.version != self.source.version or address not in self.source:
                return False
        return True


def readable_times(reason: str) -> str:
    """ "blocked: ... (until 1796657470)" -> "blocked: ... (until 2026-12-07 14:30 UTC)"
    (the defense writes a block's end as an epoch; static/live.js does the same)."""
    return _UNTIL.sub(lambda m: f"(until {_utc(m.group(1))})", reason)


def _utc(epoch: str) -> str:
    try:
        return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return epoch


def shown(record: dict[str, Any]) -> dict[str, str]:
    """The displayed fields of an `auth` event, each as text ("" when absent)."""
    out: dict[str, str] = {}
    for name in SHOWN_FIELDS:
        value = record.get(name)
        if value is None:
            out[name] = ""
        elif name == "ts" and isinstance(value, int | float):
            out[name] = f"{value:.3f}"
        elif name == "reason":
            out[name] = readable_times(str(value)[:MAX_LINE])
        else:
            out[name] = str(value)[:MAX_LINE]
    return out


# -- where the live events come from ---------------------------------------------------


@dataclass(frozen=True)
class FeedBatch:
    records: list[dict[str, Any]]  # audit records, oldest first (`shown` picks fields)
    position: str  # where the next read starts
    skipped: bool  # events were passed over


class LiveFeed(Protocol):
    """The `auth` events the admin pages show. Blocking (run off the event
    loop); a source that cannot be reached raises `StateUnavailable`."""

    def accepts(self, position: str) -> bool:
        """Whether `position` is one of this feed's (from the browser: untrusted)."""
        ...

    def newest(self) -> FeedBatch:
        """The newest events (a bounded number), and the position after them."""
        ...

    def after(self, position: str | None) -> FeedBatch:
        """Events after `position` (None: none yet, the position of the end)."""
        ...


class FileFeed:
    """The events this host's processes wrote to the audit log file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def accepts(self, position: str) -> bool:
        return Position.parse(position) is not None

    def newest(self) -> FeedBatch:
        batch = tail(self.path, MAX_BACKLOG, ("auth",))
        return FeedBatch(batch.records, str(batch.position), batch.skipped)

    def after(self, position: str | None) -> FeedBatch:
        batch = read_after(self.path, Position.parse(position), MAX_BACKLOG, ("auth",))
        return FeedBatch(batch.records, str(batch.position), batch.skipped)


# -- reading the file ---------------------------------------------------------------


def tail(path: str, limit: int = MAX_BACKLOG, kinds: tuple[str, ...] | None = None) -> Batch:
    """The complete lines of the last `limit` bytes; the position after them."""
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            start = max(0, stat.st_size - limit)
            f.seek(start)
            data = f.read(stat.st_size - start)
    except FileNotFoundError:
        return Batch([], Position(0, 0), False)
    skipped = start > 0
    if start > 0:
        # The first line may be cut: it starts after the first newline.
        cut = data.find(b"\n")
        data, start = (b"", start + len(data)) if cut < 0 else (data[cut + 1 :], start + cut + 1)
    records, used, long_line = _lines(data, None, kinds)
    return Batch(records, Position(stat.st_ino, start + used), skipped or long_line)


def read_after(
    path: str,
    position: Position | None,
    limit: int = MAX_BACKLOG,
    kinds: tuple[str, ...] | None = None,
) -> Batch:
    """The complete lines written after `position` (None: the end, nothing
    read), at most `limit` bytes of them; only events of `kinds` (None: all)."""
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            if position is None:
                return Batch([], Position(stat.st_ino, stat.st_size), False)
            offset, skipped = position.offset, False
            if position.inode != stat.st_ino or stat.st_size < offset:
                offset, skipped = 0, True  # rotated or truncated
            if stat.st_size - offset > MAX_BACKLOG:
                # Too far behind: the newest bytes, from a line's start.
                offset, skipped = _line_start(f, stat.st_size - MAX_BACKLOG), True
            f.seek(offset)
            data = f.read(min(limit, stat.st_size - offset))
    except FileNotFoundError:
        return Batch([], position or Position(0, 0), False)
    records, used, long_line = _lines(data, limit, kinds)
    return Batch(records, Position(stat.st_ino, offset + used), skipped or long_line)


def _line_start(f: Any, offset: int) -> int:
    """The offset of the first line starting at or after `offset`."""
    f.seek(max(0, offset - 1))
    chunk = f.read(MAX_LINE)
    cut = chunk.find(b"\n")
    return offset + len(chunk) - 1 if cut < 0 else max(0, offset - 1) + cut + 1


def _lines(
    data: bytes, limit: int | None = None, kinds: tuple[str, ...] | None = None
) -> tuple[list[dict[str, Any]], int, bool]:
    """The records (of `kinds`, None: all) of the complete lines of `data`, how
    many bytes they span, and whether a line too long to keep was passed over.
    A line is parsed only if it holds `"event":"KIND"` as the audit log writes
    it (audit.events.to_json: no spaces), then its kind is checked for real:
    most lines of a busy log are other events, and parsing costs."""
    needles = None if kinds is None else [f'"event":"{k}"'.encode() for k in kinds]
    end = data.rfind(b"\n")
    if end < 0:
        # No complete line: a line longer than a whole read is passed over.
        too_long = limit is not None and len(data) >= min(limit, MAX_LINE)
        return [], len(data) if too_long else 0, too_long
    records: list[dict[str, Any]] = []
    long_line = False
    for line in data[: end + 1].splitlines():
        if len(line) > MAX_LINE:
            long_line = True
            continue
        if needles is not None and not any(n in line for n in needles):
            continue
        records.extend(r for r in _parse(line) if kinds is None or r.get("event") in kinds)
    return records, end + 1, long_line


def _parse(line: bytes) -> Iterable[dict[str, Any]]:
    line = line.strip()
    if not line:
        return
    try:
        record = json.loads(line.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return
    if isinstance(record, dict):
        yield record
