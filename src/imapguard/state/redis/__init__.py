"""The cluster's counter store: the defense's counters, sets, blocks and values
in Redis (`counters.RedisCounterStore`), opened from `[state] counters_*` by
`open_counters` (`connect.py`); wake-ups between nodes (`wakeup.py`).

Importing this package does not import redis-py: a deployment without
`counters_url` never loads it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imapguard.config.state import StateConfig
    from imapguard.state.redis.counters import RedisCounterStore

__all__ = ["open_counters"]


def open_counters(state: StateConfig) -> RedisCounterStore:
    """The counter store `[state] counters_url` names (`connect.open_counters`)."""
    from imapguard.state.redis.connect import open_counters as open_redis

    return open_redis(state)
