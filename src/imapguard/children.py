"""Child processes of `imapguard serve`: the portal, and the gateway's workers.

The parent binds every listening socket (so a port in use is its one-line error,
before anything listens) and starts each child as `python -m imapguard.cli ...`
with the sockets and the read end of a pipe inherited. Rules:

* The child learns its descriptors from one environment variable
  (`FDS_ENV`: `name=fd,name=fd,...`), read once and removed (`inherited`).
* When the parent ends, however it ends (SIGKILL included), the child reads
  end-of-file on the pipe and stops (`watch_parent`): no orphan keeps a port.
* SIGHUP is passed on (`hangup`). The child starts with SIGHUP blocked (the
  signal mask survives fork and exec) until its command line records one
  (`imapguard.hangup.defer`): a SIGHUP while it starts is a reload once it
  runs, never its end. `stop()` sends SIGTERM, waits `stop_grace` seconds,
  then kills.
* A child that exits on its own is logged and started again after a pause
  that doubles from `RESTART_FIRST` to `RESTART_MAX` seconds (back to the first
  after it ran `RESTART_RESET` seconds): a child that cannot start does not spin.
* Each child gets a session of its own: a Ctrl-C in the terminal reaches the
  parent only, which stops the children in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "FDS_ENV",
    "PARENT_FD",
    "RESTART_FIRST",
    "RESTART_MAX",
    "RESTART_RESET",
    "Child",
    "inherited",
    "watch_parent",
]

log = logging.getLogger("imapguard")

FDS_ENV = "IMAPGUARD_INHERITED_FDS"
PARENT_FD = "parent"  # the name of the pipe's read end in FDS_ENV
RESTART_FIRST = 1.0
RESTART_MAX = 30.0
RESTART_RESET = 60.0


class Child:
    """One child process, kept running until `stop()`."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        fds: Mapping[str, int],
        *,
        stop_grace: float = 10.0,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name  # for the log: "the portal process", "worker 2"
        self._args = list(args)
        self._fds = dict(fds)
        self._stop_grace = stop_grace
        self._on_exit = on_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = asyncio.Event()
        #: The pid of the last process started (kept after it exits).
        self.last_pid: int | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def run(self) -> None:
        """Keep the process running until `stop()`."""
        pause = RESTART_FIRST
        while not self._stopping.is_set():
            started = time.monotonic()
            code = await self._run_once()
            if self._stopping.is_set():
                return
            log.error("%s exited (%s); starting it again in %.0f s", self.name, code, pause)
            if self._on_exit is not None:
                self._on_exit(code)
            if time.monotonic() - started >= RESTART_RESET:
                pause = RESTART_FIRST
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
            pause = min(pause * 2, RESTART_MAX)

    async def _run_once(self) -> int:
        read_end, write_end = os.pipe()
        fds = {**self._fds, PARENT_FD: read_end}
        env = {**os.environ, FDS_ENV: ",".join(f"{k}={v}" for k, v in fds.items())}
        # Started with SIGHUP blocked (see the module's notes), by subprocess
        # itself: uvloop's (libuv's) spawn clears the child's signal mask.
        # Blocked in this thread only while the child is forked, synchronously.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            # A fork and exec (vfork), not a wait: quick enough for the loop.
            proc = subprocess.Popen(  # noqa: ASYNC220, S603 - this interpreter, our arguments
                [sys.executable, "-m", "imapguard.cli", *self._args],
                pass_fds=tuple(fds.values()),
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
            os.close(read_end)
        self._proc = proc
        self.last_pid = proc.pid
        try:
            return await _exited(proc)
        finally:
            os.close(write_end)  # an earlier child, if it lingers, now stops too
            self._proc = None

    def hangup(self) -> None:
        """Pass SIGHUP on."""
        self.signal(signal.SIGHUP)

    async def stop(self) -> None:
        """SIGTERM, `stop_grace` seconds, then SIGKILL; no restart after."""
        self._stopping.set()
        proc = self._proc
        if proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(_exited(proc), self._stop_grace)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await _exited(proc)

    def signal(self, signum: int) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)


async def _exited(proc: subprocess.Popen[bytes]) -> int:
    """Wait for `proc` to end, on the running loop (a pidfd turns readable when
    the process exits, pidfd_open(2)); its exit status (minus a signal)."""
    if proc.returncode is not None:
        return proc.returncode
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(proc.pid)
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return proc.wait()


def inherited() -> dict[str, int] | None:
    """In a child: its inherited descriptors by name (the parent's pipe as
    PARENT_FD), or None when this process was not started by `Child`."""
    text = os.environ.pop(FDS_ENV, None)
    if text is None:
        return None
    fds: dict[str, int] = {}
    for item in text.split(","):
        name, _, fd = item.partition("=")
        if not fd.isdigit():
            raise ValueError(f"{FDS_ENV}: {item!r} is not name=fd")
        fds[name] = int(fd)
    if PARENT_FD not in fds:
        raise ValueError(f"{FDS_ENV} names no {PARENT_FD} pipe")
    return fds


async def watch_parent(parent_fd: int, stop: Callable[[], None], what: str) -> None:
    """Call `stop` when the parent's end of the pipe closes (the parent ended)."""
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()

    def readable() -> None:
        with contextlib.suppress(OSError):
            if os.read(parent_fd, 1):
                return
        loop.remove_reader(parent_fd)
        gone.set()

    loop.add_reader(parent_fd, readable)
    try:
        await gone.wait()
    finally:
        loop.remove_reader(parent_fd)
    log.warning("the gateway process ended; %s stops", what)
    stop()
