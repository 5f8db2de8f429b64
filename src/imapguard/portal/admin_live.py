"""The live authentication events: a server-sent event stream (`text/event-stream`,
HTML Living Standard "Server-sent events") of the `auth` events written to the
audit log, filtered as the admin's page asked.

Rules:

* Only an admin's full session opens a stream (`kit.admin`, like every admin
  page); the session is checked again every `RECHECK` seconds without
  touching it (a stream is not activity), and the stream ends with an `end`
  event as soon as the session was signed out, revoked, expired or idle, or the
  account left the admin group.
* At most `MAX_STREAMS` streams at once, `MAX_PER_ADMIN` per account; one
  lives at most `LIFETIME` seconds, then ends with `end` ("lifetime"): the page
  offers to resume, so an unattended browser does not keep a stream (or its
  slot) forever.
* Each stream follows the feed by itself (`admin_feed.LiveFeed`, off the event
  loop: the audit log file, or the cluster's stream when the composition root
  gives one), every `POLL` seconds, and sends at most `MAX_EVENTS_PER_POLL`
  events a poll; what it passed over is announced with a `skipped` event. Each
  batch carries its position as the SSE `id`, so the browser's reconnection
  (`Last-Event-ID`) resumes where it stopped; the page's own first position
  comes as `after`.
* A feed that cannot be read (the cluster's Redis is away) is announced with
  an `unavailable` event, once per outage, and read again every `POLL`
  seconds; `available` follows when it answers again, and the stream goes on
  from where it stood (nothing was lost that the feed still holds).
* A client that goes away is noticed at once (`http.disconnect`) and its slot
  freed; a comment is sent every `KEEPALIVE` seconds so proxies keep the
  connection open.
* Events are JSON (`admin_feed.shown`); the page's script puts every value in
  with `textContent`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from imapguard.errors import StateError, StateUnavailable
from imapguard.portal.admin_feed import AuthFilter, LiveFeed, shown
from imapguard.portal.kit import Kit
from imapguard.portal.sessions import Current

__all__ = ["LIFETIME", "MAX_PER_ADMIN", "MAX_STREAMS", "Live"]

MAX_STREAMS = 8
MAX_PER_ADMIN = 3
# Seconds: how often the session is checked again, the file is read, a
# keep-alive comment is sent, and how long a stream may live.
RECHECK = 2.0
POLL = 0.5
KEEPALIVE = 15.0
LIFETIME = 15 * 60.0
MAX_EVENTS_PER_POLL = 200
# How long the browser waits before reconnecting after a dropped connection (ms).
RETRY_MS = 3000


@dataclass
class Slots:
    """The streams open now, per admin (in this process)."""

    per_admin: Counter[str] = field(default_factory=Counter)

    def take(self, user: str) -> bool:
        if sum(self.per_admin.values()) >= MAX_STREAMS or self.per_admin[user] >= MAX_PER_ADMIN:
            return False
        self.per_admin[user] += 1
        return True

    def give_back(self, user: str) -> None:
        self.per_admin[user] -= 1
        if self.per_admin[user] <= 0:
            del self.per_admin[user]


def frame(event: str, data: object, event_id: str | None = None) -> bytes:
    """One SSE message (JSON data never holds a newline)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=True)}\n\n".encode()


class Live:
    def __init__(self, kit: Kit, feed: LiveFeed) -> None:
        self.kit = kit
        self.feed = feed
        self.slots = Slots()

    async def stream(self, request: Request) -> Response:
        admin = self.kit.admin(request)
        if not isinstance(admin, Current):
            return admin
        q = request.query_params
        try:
            wanted = AuthFilter.parse(q.get("user"), q.get("source"), q.get("result"))
        except ValueError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        given = (request.headers.get("last-event-id"), q.get("after"))
        start = next((p for p in given if p and self.feed.accepts(p)), None)
        user = admin.session.user
        if not self.slots.take(user):
            return PlainTextResponse(
                "Too many live views are open; close one.",
                status_code=429,
                headers={"Retry-After": "30"},
            )
        return EventStream(self._events(admin, wanted, start), lambda: self.slots.give_back(user))

    async def _events(
        self, admin: Current, wanted: AuthFilter, start: str | None
    ) -> AsyncGenerator[bytes, None]:
        yield f"retry: {RETRY_MS}\n\n".encode()
        position = start
        down = False
        opened = last_check = last_sent = time.monotonic()
        while True:
            now = time.monotonic()
            if now - opened >= LIFETIME:
                yield frame("end", "lifetime")
                return
            if now - last_check >= RECHECK:
                last_check = now
                reason = await self._still_admin(admin)
                if reason is not None:
                    yield frame("end", reason)
                    return
            try:
                batch = await asyncio.to_thread(self.feed.after, position)
            except StateUnavailable:
                if not down:
                    down = True
                    yield frame("unavailable", "events")
                    last_sent = now
                elif now - last_sent >= KEEPALIVE:
                    yield b": keep-alive\n\n"
                    last_sent = now
                await asyncio.sleep(POLL)
                continue
            if down:
                down = False
                yield frame("available", "events")
            position = batch.position
            matching = [shown(r) for r in batch.records if wanted.matches(r)]
            dropped = max(0, len(matching) - MAX_EVENTS_PER_POLL)
            if batch.skipped or dropped:
                yield frame("skipped", dropped)
            if matching:
                yield frame("auth", matching[-MAX_EVENTS_PER_POLL:], position)
                last_sent = now
            elif now - last_sent >= KEEPALIVE:
                yield b": keep-alive\n\n"
                last_sent = now
            await asyncio.sleep(POLL)

    async def _still_admin(self, admin: Current) -> str | None:
        """None while the stream may go on, else why it ends."""
        kit, session = self.kit, admin.session
        if not kit.is_admin(session.user):
            return "not-admin"
        now = kit.clock()
        try:
            live = await kit.call(kit.store.list_portal_sessions, session.user, now)
        except StateError:
            return "unavailable"
        for found in live:
            if found.id == session.id:
                idle = now - found.last_seen_at > kit.sessions.idle
                return "idle" if idle or found.level != "full" else None
        return "signed-out"


class EventStream(Response):
    """A `text/event-stream` response fed by `body` until it ends or the client
    goes away; `release` runs once either way."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncGenerator[bytes, None], release: Callable[[], None]) -> None:
        # No Content-Length (the body has no end known in advance) and no
        # buffering by a proxy in front (nginx honours X-Accel-Buffering).
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"x-accel-buffering", b"no"),
        ]
        self._body = body
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with asyncio.TaskGroup() as tg:
                producer = tg.create_task(self._produce(send))
                watcher = tg.create_task(_disconnected(receive))
                # Whichever ends first (the stream, or the client) ends the other.
                producer.add_done_callback(lambda _: watcher.cancel())
                watcher.add_done_callback(lambda _: producer.cancel())
        finally:
            self._release()

    async def _produce(self, send: Send) -> None:
        try:
            async for chunk in self._body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away while we wrote
        finally:
            await self._body.aclose()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
