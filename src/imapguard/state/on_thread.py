"""Running a store call on the store's thread.

The stores are synchronous (SQLite, one connection per worker thread); the event
loop that the gateway's connections and the portal's requests share must never
wait for the disk. Every store call made from async code goes through
`on_thread`: with an executor (the store's worker) the call runs there and is
awaited; with None (a portal built without one, as the unit tests build it) it
runs inline. Keyword arguments travel in a `functools.partial`, since
`run_in_executor` passes positional arguments only.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

__all__ = ["on_thread"]

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
