"""Running a store call on the store's thread.

The stores are synchronous (SQLite, one connection per worker thread); the event
loop that the gateway's connections and the portal's requests share must never
wait for the disk. Every store call made from async code goes through
`on_thread`: with an executor (the store's worker) the call runs there and is
awaited; with None (a portal built without one, as the unit tests build it) it
runs inline. Keyword arguments travel in a `functools.partial`, since
`run_in_executor` passes positional arguments only.

Reads on the login path follow the store's kind (`read_executor`,
`auth.reads`): inline for the embedded store, on read threads of their own for
a networked one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["READ_THREADS", "on_thread", "read_executor"]

# Reads of a networked store in flight at once per process: each thread waits
# out one round trip; more would only queue on the store's own connection pool.
READ_THREADS = 8

T = TypeVar("T")
P = ParamSpec("P")


async def on_thread(
    executor: Executor | None, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    """`fn(*args, **kwargs)` on `executor`'s thread (inline when it is None)."""
    if executor is None:
        return fn(*args, **kwargs)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))


def read_executor(url: str) -> ThreadPoolExecutor | None:
    """Where the login path reads the store at `url`: None (inline on the event
    loop) for the embedded SQLite store, whose point read from its WAL reader
    costs less than a thread hop (`state/sqlite/store.py`); `READ_THREADS`
    threads of its own for a networked store, whose round trips must never
    stall the event loop that every session of the process shares."""
    if url.startswith("sqlite:"):
        return None
    return ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="imapguard-read")
