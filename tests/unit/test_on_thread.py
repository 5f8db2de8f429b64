"""`state.on_thread`: a store call runs on the store's thread, never on the
event loop's, unless there is no executor; arguments and errors arrive whole."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from imapguard.errors import StateUnavailable
from imapguard.state.on_thread import READ_THREADS, on_thread, read_executor

pytestmark = pytest.mark.asyncio


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1, thread_name_prefix="store")
    yield pool
    pool.shutdown()


def _where(a: int, b: int = 0, *, c: int = 0) -> tuple[str, int]:
    return threading.current_thread().name, a + 10 * b + 100 * c


async def test_with_an_executor_the_call_runs_on_its_thread(executor: ThreadPoolExecutor) -> None:
    thread, value = await on_thread(executor, _where, 1, 2, c=3)
    assert thread.startswith("store")
    assert thread != threading.current_thread().name
    assert value == 321


async def test_without_an_executor_the_call_runs_inline() -> None:
    thread, value = await on_thread(None, _where, 4, c=5)
    assert thread == threading.current_thread().name
    assert value == 504


async def test_the_store_error_reaches_the_caller(executor: ThreadPoolExecutor) -> None:
    def down() -> None:
        raise StateUnavailable("set_totp", "disk I/O error")

    for pool in (executor, None):
        with pytest.raises(StateUnavailable):
            await on_thread(pool, down)


async def test_an_embedded_store_is_read_inline_and_a_networked_one_on_read_threads() -> None:
    """No thread hop for SQLite (a point read costs less than the hop); a
    networked store's round trips go to read threads of their own."""
    assert read_executor("sqlite:///var/lib/imapguard/state.db") is None
    for url in ("postgresql://db.example/imapguard", "redis://cache.example:6379/0"):
        reads = read_executor(url)
        assert isinstance(reads, ThreadPoolExecutor)
        try:
            thread, _ = await on_thread(reads, _where, 1)
            assert thread.startswith("imapguard-read")
            assert reads._max_workers == READ_THREADS
        finally:
            reads.shutdown()
