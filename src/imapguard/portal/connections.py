"""The portal's HTTP connections: how many per source, and how long a request
may take to arrive.

uvicorn's h11 protocol has neither: a connection may trickle its request head
(or its body) forever, and `limit_concurrency` counts every connection alike,
so one source holding a few hundred slow connections would make the portal
answer 503 to everybody (slowloris). `guarded_protocol` returns uvicorn's
`H11Protocol` with two rules added:

* at most `per_source` open connections per source (an IPv4 address or an IPv6
  /64); one more is dropped as soon as its TLS handshake is done;
* every request, head and body, must have arrived within `deadline` seconds of
  the connection's start or of the previous response; a connection still
  waiting for one then is dropped. (Between requests uvicorn's own keep-alive
  timeout, shorter, closes an idle connection first.)

Dropped means aborted, not closed: a TLS close waits for the peer's
close_notify (up to 30 s), and a peer that never sends it would keep its slot.

It overrides three methods of the pinned uvicorn's protocol (`connection_made`,
`connection_lost`, `on_response_complete`) and reads `conn`, `client`,
`transport` and `loop`: tests/integration/test_portal_serving.py holds it to
that version.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from imapguard.portal.ratelimit import source_key

__all__ = ["ConnectionCounts", "guarded_protocol"]

# What h11 is in while the request (head or body) has not fully arrived.
_RECEIVING = (h11.IDLE, h11.SEND_BODY)


class ConnectionCounts:
    """Open connections per source, shared by every connection of one server."""

    def __init__(self, per_source: int) -> None:
        self.per_source = per_source
        self._open: dict[str, int] = {}

    def take(self, key: str) -> bool:
        held = self._open.get(key, 0)
        if held >= self.per_source:
            return False
        self._open[key] = held + 1
        return True

    def give_back(self, key: str) -> None:
        held = self._open.get(key, 0) - 1
        if held > 0:
            self._open[key] = held
        else:
            self._open.pop(key, None)

    def held(self, key: str) -> int:
        return self._open.get(key, 0)


def guarded_protocol(counts: ConnectionCounts, deadline: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the per-source limit and the request deadline."""

    class GuardedH11Protocol(H11Protocol):
        _source: str | None = None
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            key = source_key(self.client[0]) if self.client is not None else ""
            if not counts.take(key):
                transport.abort()
                return
            self._source = key
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._source is not None:
                counts.give_back(self._source)
                self._source = None
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._timer = self.loop.call_later(deadline, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            if self.conn.their_state in _RECEIVING:
                self.transport.abort()

    return GuardedH11Protocol
