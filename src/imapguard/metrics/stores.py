"""Store latency and errors: a proxy that times each call of a store's protocol.

`timed(store, "accounts", metrics)` returns an object that answers like `store`
and observes every call of a method in `imapguard_store_operation_duration_seconds`
(by store and kind of operation), counting each that raised `StateUnavailable`
in `imapguard_store_errors_total`. The composition root wraps the stores once
(`compose.observing`), so no store and no caller carries a timer. Methods that
are not operations (`batch`, `close`) and attributes pass through untimed.

The cost is a closure call, two clock reads and one histogram observation per
store call (a few microseconds, see tests/unit/test_metrics_stores.py); each
wrapped method is built once, on its first use, and kept on the proxy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from imapguard.errors import StateUnavailable
from imapguard.metrics.registry import Metrics

__all__ = ["account_operation", "counter_operation", "timed"]

T = TypeVar("T")

# The account store's reads, by the names of its protocol (state.accounts,
# state.portal); every other method but batch and close writes.
_READS = ("get_", "find_", "list_", "count_", "any_", "user_for_", "last_", "revocations_")
_UNTIMED = frozenset({"batch", "close"})

# The defense's counter store (defense.counters.CounterStore), method by method.
_COUNTERS = {
    "defense_lookup": "lookup",  # the precheck's one read
    "defense_purge": "purge",
    **dict.fromkeys(
        (
            "bucket_counts",
            "member_seen",
            "distinct_count",
            "distinct_counts",
            "distinct_members",
            "blocks_get",
            "blocks_list",
            "values_get",
        ),
        "read",
    ),
    **dict.fromkeys(
        (
            "bucket_incr",
            "member_add",
            "members_add",
            "buckets_forget",
            "block_put",
            "block_delete",
            "value_put",
            "value_swap",
            "values_delete",
        ),
        "write",
    ),
}


def account_operation(name: str) -> str | None:
    """The kind of an account store method (None: not timed)."""
    if name in _UNTIMED:
        return None
    return "read" if name.startswith(_READS) else "write"


def counter_operation(name: str) -> str | None:
    """The kind of a counter store method (None: not one of the protocol's operations)."""
    return _COUNTERS.get(name)


class _Timed:
    def __init__(
        self, inner: object, store: str, metrics: Metrics, kind: Callable[[str], str | None]
    ) -> None:
        self._inner = inner
        self._kind = kind
        self._seconds = metrics.store_seconds
        self._errors = metrics.store_errors_total
        self._store = store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        operation = None if name.startswith("_") else self._kind(name)
        if operation is None or not callable(attr):
            return attr
        wrapped = _timer(
            attr,
            self._seconds.labels(self._store, operation),
            self._errors.labels(self._store, operation),
        )
        self.__dict__[name] = wrapped  # the next lookup finds it without __getattr__
        return wrapped

    def __repr__(self) -> str:
        return f"timed({self._inner!r})"


def _timer(call: Callable[..., Any], seconds: Any, errors: Any) -> Callable[..., Any]:
    clock = time.perf_counter

    def timed_call(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return call(*args, **kwargs)
        except StateUnavailable:
            errors.inc()
            raise
        finally:
            seconds.observe(clock() - start)

    return timed_call


def timed(store: T, name: str, metrics: Metrics, kind: Callable[[str], str | None]) -> T:
    """`store`, each operation timed under the label store=`name` (`kind` names
    the operation of a method, or None for one not to time)."""
    return cast(T, _Timed(store, name, metrics, kind))
