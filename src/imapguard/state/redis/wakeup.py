"""Wake-ups between nodes over Redis pub/sub, beside a store's feed.

A node that writes something other nodes must act on soon (a revocation: the
store's revocation feed) may `publish` a wake-up on a topic; every node's
`Wakeup` subscriber then calls its callback at once (typically: read the feed
now instead of at the next tick). A wake-up carries nothing but its topic: the
feed in the store stays the truth, so a lost, late or forged message costs at
most one extra read, and polling still catches everything when Redis is away.

The subscriber runs on a thread of its own (redis-py's sync pub/sub); when the
connection breaks it subscribes again after `RETRY` seconds and calls the
callback once (messages published meanwhile are lost: the feed has them).

`Topic` is what the composition root hands out: `announce()` for a writer
(after its commit; a Redis that is away is logged, never the writer's
failure) and `start(wake)`/`stop()` for a follower (`gateway.revocation.Wakeups`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from imapguard.errors import StateUnavailable

__all__ = ["RETRY", "Topic", "Wakeup", "publish"]

log = logging.getLogger("imapguard.state")

# Seconds between attempts to subscribe again after the connection broke.
RETRY = 1.0
# How long the thread waits for a message before it looks whether to stop.
_POLL = 0.5


def channel(prefix: str, topic: str) -> str:
    return f"{prefix}wake:{topic}"


def publish(client: redis.Redis, prefix: str, topic: str) -> int:
    """Wake every subscriber of `topic`; how many received it."""
    try:
        return int(client.publish(channel(prefix, topic), "1"))
    except redis.RedisError as exc:
        raise StateUnavailable("publish wake-up", f"redis {type(exc).__name__}") from None


class Wakeup:
    """Calls `callback()` (on its own thread) for each wake-up on `topic`."""

    def __init__(
        self, client: redis.Redis, prefix: str, topic: str, callback: Callable[[], None]
    ) -> None:
        self._client = client
        self._channel = channel(prefix, topic)
        self._callback = callback
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"wakeup-{topic}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_subscribed(self, timeout: float) -> bool:
        """Whether the subscription stands (within `timeout` seconds)."""
        return self._subscribed.wait(timeout)

    def stop(self, *, wait: bool = True) -> None:
        """End the subscription; `wait`: until the thread has ended (it ends by
        itself within `_POLL` seconds)."""
        self._stop.set()
        if wait and self._thread.is_alive():
            self._thread.join(timeout=_POLL * 4)

    def _call(self) -> None:
        try:
            self._callback()
        except Exception:
            log.exception("wake-up callback failed")

    def _run(self) -> None:
        down = False
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                self._subscribed.set()
                if down:
                    down = False
                    log.info("wake-ups from other nodes received again")
                    self._call()  # what was published meanwhile is lost
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=_POLL) is not None:
                        self._call()
            except redis.RedisError as exc:
                self._subscribed.clear()
                if not down:
                    down = True
                    log.warning(
                        "wake-ups from other nodes lost, retrying: redis %s", type(exc).__name__
                    )
                self._stop.wait(RETRY)
            finally:
                pubsub.close()


class Topic:
    """One topic's wake-ups on one Redis, for writers and followers alike."""

    def __init__(self, client: redis.Redis, prefix: str, topic: str) -> None:
        self._client = client
        self._prefix = prefix
        self._topic = topic
        self._lock = threading.Lock()
        self._subscriber: Wakeup | None = None

    def announce(self) -> None:
        """Wake the followers after a write; never raises (they poll anyway)."""
        try:
            publish(self._client, self._prefix, self._topic)
        except StateUnavailable as exc:
            log.warning(
                "could not wake the other nodes (%s); they will see it at their next poll",
                exc.detail,
            )

    def start(self, wake: Callable[[], None]) -> None:
        """Call `wake()` (on a thread of its own) for each wake-up, until `stop()`."""
        with self._lock:
            if self._subscriber is not None:
                self._subscriber.stop(wait=False)
            self._subscriber = Wakeup(self._client, self._prefix, self._topic, wake)
            self._subscriber.start()

    def wait_subscribed(self, timeout: float) -> bool:
        with self._lock:
            subscriber = self._subscriber
        return subscriber is not None and subscriber.wait_subscribed(timeout)

    def stop(self) -> None:
        """No more wake-ups; does not wait (the event loop calls it)."""
        with self._lock:
            if self._subscriber is not None:
                self._subscriber.stop(wait=False)

    def close(self) -> None:
        """`stop`, and wait for the subscriber's thread to end."""
        with self._lock:
            subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            subscriber.stop()
