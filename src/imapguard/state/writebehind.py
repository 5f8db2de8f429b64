"""Bookkeeping writes off the login path, batched.

What a login records after it was decided (last login of the account, last use of
an app password: time, address, client) changes no decision, so it need not be
on disk before the client gets its OK. `WriteBehind.submit()` queues the call;
the queue is written in one transaction on the store's worker thread at most
`delay` seconds later (one thread hop and one commit for many logins instead of
one of each per login). Rules:

* Only writes that no authentication decision reads go here. A write that a
  decision depends on (a one-time code marked used, a counter) is awaited.
* The queue is bounded (`max_pending`): past it, the oldest entries are dropped
  and counted; bookkeeping must never grow memory under a login flood.
* A failed batch (state store down) is logged and dropped: the login it
  describes has happened, and the next one records the same fields again.
* `aclose()` writes what is queued before the executor shuts down.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from typing import Any, Protocol

from imapguard.errors import StateUnavailable

__all__ = ["WriteBehind"]

log = logging.getLogger("imapguard.state")

Call = tuple[Callable[..., None], tuple[Any, ...]]


class Batches(Protocol):
    """What a batch is written in: a store's (or the defense's) `batch()`."""

    def batch(self) -> AbstractContextManager[None]: ...


class WriteBehind:
    def __init__(
        self,
        store: Batches,
        executor: Executor,
        *,
        delay: float = 0.25,
        max_pending: int = 10_000,
    ) -> None:
        self._store = store
        self._executor = executor
        self._delay = delay
        self._pending: deque[Call] = deque(maxlen=max_pending)
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._rerun = False  # `_start` runs again when the batch in flight is written
        self.dropped = 0

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue `fn(*args)` (a method of the store) for the next batch."""
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
        self._pending.append((fn, args))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._inflight is not None and not self._inflight.done():
            # One batch at a time; the next starts when this one is written (once:
            # a timer firing again meanwhile must not pile up callbacks).
            if not self._rerun:
                self._rerun = True
                self._inflight.add_done_callback(self._rerun_after)
            return
        if not self._pending:
            return
        calls = list(self._pending)
        self._pending.clear()
        loop = asyncio.get_running_loop()
        self._inflight = loop.run_in_executor(self._executor, self._write, calls)
        self._inflight.add_done_callback(self._done)

    def _rerun_after(self, _: asyncio.Future[None]) -> None:
        self._rerun = False
        self._start()

    def _write(self, calls: list[Call]) -> None:
        with self._store.batch():
            for fn, args in calls:
                fn(*args)

    @staticmethod
    def _done(future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, StateUnavailable):
            log.warning("bookkeeping not recorded: %s", exc)
        elif exc is not None:
            log.error("bookkeeping batch failed", exc_info=exc)

    async def flush(self) -> None:
        """Write everything queued so far and wait for it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending or (self._inflight is not None and not self._inflight.done()):
            if self._inflight is not None and not self._inflight.done():
                await asyncio.wait([self._inflight])
                continue
            self._start()

    async def aclose(self) -> None:
        await self.flush()
