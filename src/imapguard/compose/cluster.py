"""What reaches every node at once through the Redis of `[state] counters_url`
(`open_cluster`; None without it, and then nothing here is used):

    revocations  a wake-up topic (`state.redis.wakeup.Topic`): the store every
                 writer of a revocation goes through announces each one
                 (`announcing`), and every gateway's `RevocationWatch` reads the
                 feed at once when woken (it still polls: the feed is the truth)
    live_out     this process's `auth` events, the fields the admin pages show,
                 put on the cluster's capped stream (`state.redis.live.LiveOut`,
                 subscribed to the audit log; never holds up a login)
    live_in      the portal's live events from that stream (`StreamFeed`)
                 instead of this host's audit log file

One Redis client (its own small pool) serves the three; `close` closes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imapguard.config import Config
from imapguard.portal.admin_feed import SHOWN_FIELDS, FeedBatch
from imapguard.state.announced import Announced
from imapguard.state.portal import PortalStore

if TYPE_CHECKING:
    from imapguard.state.redis.live import LiveIn, LiveOut
    from imapguard.state.redis.wakeup import Topic

__all__ = ["Cluster", "StreamFeed", "announcing", "open_cluster"]

# The wake-up topic of the revocation feed.
REVOCATIONS = "revocations"
# Stream entries one live read takes at most (the page shows fewer: admin_live).
READ_LIMIT = 2_000
# Entries the events page starts from.
NEWEST = 500


@dataclass
class Cluster:
    revocations: Topic
    live_out: LiveOut
    live_in: StreamFeed
    close_client: Callable[[], None]

    def close(self) -> None:
        self.revocations.close()
        self.live_out.close()
        self.close_client()


def open_cluster(config: Config) -> Cluster | None:
    """The cluster's channels when `[state] counters_url` is set (not contacted
    yet: the first use connects, and a Redis that is away costs only them)."""
    state = config.state
    if not state.counters_url:
        return None
    from imapguard.state.redis.connect import open_client
    from imapguard.state.redis.live import LiveIn, LiveOut
    from imapguard.state.redis.wakeup import Topic

    client = open_client(state, state.counters_url)
    prefix = state.counters_prefix
    return Cluster(
        revocations=Topic(client, prefix, REVOCATIONS),
        live_out=LiveOut(client, prefix, SHOWN_FIELDS),
        live_in=StreamFeed(LiveIn(client, prefix)),
        close_client=client.close,
    )


def announcing(config: Config, store: PortalStore) -> PortalStore:
    """`store`, its revocations announced on the cluster's Redis (with
    `counters_url`; else `store` itself: the gateways poll). The store's
    `close` closes the announcer's connection too."""
    state = config.state
    if not state.counters_url:
        return store
    from imapguard.state.redis.connect import open_client
    from imapguard.state.redis.wakeup import Topic

    client = open_client(state, state.counters_url)
    return Announced(store, Topic(client, state.counters_prefix, REVOCATIONS), client.close)


class StreamFeed:
    """The cluster's live events as the portal reads them (`admin_feed.LiveFeed`):
    a position is a stream entry id."""

    def __init__(self, stream: LiveIn) -> None:
        self._stream = stream

    def accepts(self, position: str) -> bool:
        from imapguard.state.redis.live import parse_id

        return parse_id(position) is not None

    def newest(self) -> FeedBatch:
        batch = self._stream.newest(NEWEST)
        return FeedBatch(batch.records, batch.last_id, batch.skipped)

    def after(self, position: str | None) -> FeedBatch:
        batch = self._stream.after(position, READ_LIMIT)
        return FeedBatch(batch.records, batch.last_id, batch.skipped)
