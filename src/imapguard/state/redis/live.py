"""The cluster's live authentication events: a capped Redis Stream.

Each process appends its `auth` events (only the fields the admin pages show,
never a secret: the audit log holds none, and only the fields the composition
root names are kept) to one stream, `{prefix}live:auth`, trimmed to about
`MAXLEN` entries (`XADD ... MAXLEN ~`); the portal of any node reads it, so an
admin on one node sees the attack on another.

Why a Stream and not pub/sub: a stream keeps the newest entries, each with an
increasing id, so a reader asks for "what came after the id I saw last" (the
page's `Last-Event-ID` after a reconnection, or a portal that lost Redis for a
minute) and gets it, or learns that it was trimmed away; pub/sub delivers only
to whoever is subscribed at that moment and loses what is sent while a reader
reconnects.

Writing (`LiveOut`) never holds up a login: `put` is a non-blocking put on a
bounded queue, and one thread of its own sends the entries in batches (one
pipelined round trip). A full queue, or a batch Redis did not take (it is
down: the batch and what waits behind it are dropped, and the next one is sent
`RETRY` seconds later, meanwhile the queue fills and overflows), is counted in
`dropped` (and told to `on_drop`) and logged once per outage.

Reading (`LiveIn`) is blocking, bounded and short (`connect.COMMAND_TIMEOUT`):
callers run it off the event loop; a Redis that is away is `StateUnavailable`.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from imapguard.audit.events import Event, to_record
from imapguard.errors import StateUnavailable

__all__ = ["MAXLEN", "LiveIn", "LiveOut", "StreamBatch", "stream_key"]

log = logging.getLogger("imapguard.state")

# Entries the stream keeps (about: trimmed a node at a time). At ~250 bytes an
# entry, a few MB of Redis memory.
MAXLEN = 10_000
# Events waiting for the sender thread; beyond it they are dropped (counted).
QUEUE = 2_000
# Entries sent per round trip.
BATCH = 200
# Seconds before a batch is tried again after Redis refused one.
RETRY = 1.0
# How long the sender waits for an event before it looks whether to stop.
_POLL = 0.5
_ID = re.compile(r"(\d{1,20})-(\d{1,20})")


def stream_key(prefix: str) -> str:
    return f"{prefix}live:auth"


def parse_id(text: str | None) -> tuple[int, int] | None:
    """A stream entry id (`MS-SEQ`) as a pair, or None for anything else."""
    found = _ID.fullmatch(text or "")
    return None if found is None else (int(found.group(1)), int(found.group(2)))


class LiveOut:
    """Puts events of `kinds` (their `fields`) on the stream, from a thread."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        fields: tuple[str, ...],
        *,
        kinds: tuple[str, ...] = ("auth",),
        maxlen: int = MAXLEN,
        size: int = QUEUE,
    ) -> None:
        self._client = client
        self._key = stream_key(prefix)
        self._fields = ("event", *fields)
        self._kinds = kinds
        self._maxlen = maxlen
        self._queue: queue.Queue[tuple[Event, float]] = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._down = False
        #: Events that never reached the stream since start, and a hook told of each batch.
        self.dropped = 0
        self.on_drop: Callable[[int], None] | None = None
        self._thread = threading.Thread(target=self._run, name="live-events", daemon=True)
        self._thread.start()

    def __call__(self, event: Event, ts: float) -> None:
        """An audit log subscriber (`AuditLog.subscribe`): never blocks, never raises."""
        if event.kind not in self._kinds:
            return
        try:
            self._queue.put_nowait((event, ts))
        except queue.Full:
            self._drop(1)

    def _drop(self, n: int) -> None:
        with self._lock:
            self.dropped += n
        hook = self.on_drop
        if hook is not None:
            try:
                hook(n)
            except Exception:
                log.exception("live events: drop hook failed")

    def _entry(self, event: Event, ts: float) -> str:
        record = to_record(event, ts)  # the audit line's record, not encoded to be decoded
        return json.dumps({k: record[k] for k in self._fields if k in record}, ensure_ascii=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=_POLL)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._send(batch)

    def _send(self, batch: list[tuple[Event, float]]) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for event, ts in batch:
                pipe.xadd(
                    self._key,
                    {"e": self._entry(event, ts)},
                    maxlen=self._maxlen,
                    approximate=True,
                )
            pipe.execute()
        except redis.RedisError as exc:
            # What waits behind it would fail the same way: dropped too, so
            # that the queue takes the newest events once Redis is back.
            self._drop(len(batch) + self._drain())
            if not self._down:
                self._down = True
                log.warning(
                    "live events not sent to redis (%s); dropped and counted until it returns",
                    type(exc).__name__,
                )
            self._stop.wait(RETRY)
            return
        if self._down:
            self._down = False
            log.info("live events sent to redis again")

    def _drain(self) -> int:
        n = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return n
            n += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=_POLL * 4)


@dataclass(frozen=True)
class StreamBatch:
    records: list[dict[str, Any]]
    last_id: str  # where the next read starts
    # Entries were passed over: the reader fell more than a read behind, or
    # what it had not read yet was trimmed away.
    skipped: bool


class LiveIn:
    """Reads the stream: the newest entries, then those after an id."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self._key = stream_key(prefix)

    def newest(self, limit: int) -> StreamBatch:
        """The newest `limit` entries, oldest first; the id after them."""
        try:
            rows = _rows(self._client.xrevrange(self._key, "+", "-", count=limit + 1))
        except redis.RedisError as exc:
            raise StateUnavailable("read live events", f"redis {type(exc).__name__}") from None
        skipped = len(rows) > limit
        rows = rows[:limit]
        last = rows[0][0] if rows else "0-0"
        return StreamBatch(_records(reversed(rows)), last, skipped)

    def after(self, last_id: str | None, limit: int) -> StreamBatch:
        """At most the newest `limit` entries after `last_id` (None, or not an id:
        none, the newest id to go on from), oldest first."""
        seen = parse_id(last_id)
        try:
            if seen is None or last_id is None:
                rows = _rows(self._client.xrevrange(self._key, "+", "-", count=1))
                return StreamBatch([], rows[0][0] if rows else "0-0", False)
            pipe = self._client.pipeline(transaction=False)
            pipe.xrevrange(self._key, "+", f"({last_id}", count=limit + 1)
            pipe.xrange(self._key, "-", "+", count=1)
            rows, oldest = (_rows(found) for found in pipe.execute())
        except redis.RedisError as exc:
            raise StateUnavailable("read live events", f"redis {type(exc).__name__}") from None
        skipped = len(rows) > limit
        rows = rows[:limit]
        if oldest and seen != (0, 0):
            first = parse_id(oldest[0][0])
            # The last entry read was trimmed away, and what followed it with it.
            skipped = skipped or (first is not None and first > seen)
        newest = rows[0][0] if rows else last_id
        return StreamBatch(_records(reversed(rows)), newest, skipped)


Row = tuple[str, dict[str, str]]


def _rows(found: Any) -> list[Row]:
    """XRANGE's reply as (id, fields) pairs (the client decodes to str)."""
    return [(str(entry_id), fields or {}) for entry_id, fields in found or []]


def _records(rows: Iterable[Row]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for _, fields in rows:
        try:
            record = json.loads(fields.get("e", ""))
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
