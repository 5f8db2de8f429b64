"""Child processes of `imapguard serve`: descriptors handed down by name, a child
that keeps exiting is restarted with a growing pause, and stop() ends it."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from imapguard.children import FDS_ENV, PARENT_FD, RESTART_FIRST, Child, inherited


def test_inherited_reads_the_names_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FDS_ENV, f"imap0=7,{PARENT_FD}=9")
    assert inherited() == {"imap0": 7, PARENT_FD: 9}
    assert FDS_ENV not in os.environ  # a grandchild does not see them
    assert inherited() is None


@pytest.mark.parametrize("value", ["imap0=x,parent=3", "imap0=4", "garbage"])
def test_inherited_refuses_a_malformed_list(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(FDS_ENV, value)
    with pytest.raises(ValueError, match=FDS_ENV):
        inherited()


@pytest.mark.asyncio
async def test_a_child_that_exits_is_restarted_after_a_pause_and_stop_ends_it() -> None:
    exits: list[float] = []
    # `imapguard --help` exits at once, like a child that cannot start.
    child = Child("test child", ["--help"], {}, on_exit=lambda code: exits.append(time.monotonic()))
    runner = asyncio.get_running_loop().create_task(child.run())
    for _ in range(600):
        if len(exits) >= 2:
            break
        await asyncio.sleep(0.1)
    await child.stop()
    await asyncio.wait_for(runner, 10)
    assert len(exits) >= 2, "the child was not started again"
    # Not at once: a child that cannot start must not spin.
    assert exits[1] - exits[0] >= RESTART_FIRST * 0.9
    assert child.pid is None
