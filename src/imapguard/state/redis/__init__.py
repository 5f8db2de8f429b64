"""The cluster's counter store: the defense's counters, sets, blocks and values
in Redis (`counters.RedisCounterStore`), opened from `[state] counters_*` by
`open_counters`."""

from __future__ import annotations

from imapguard.state.redis.connect import COMMAND_TIMEOUT, CONNECT_TIMEOUT, open_counters
from imapguard.state.redis.counters import GRACE, RedisCounterStore

__all__ = ["COMMAND_TIMEOUT", "CONNECT_TIMEOUT", "GRACE", "RedisCounterStore", "open_counters"]
