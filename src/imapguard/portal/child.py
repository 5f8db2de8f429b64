"""The portal in a process of its own beside the gateway (`imapguard serve`).

Why: serving the portal is CPU work (TLS handshakes, HTTP, templates, and a
real upstream login for every password typed); on the gateway's event loop it
delays every IMAP session: bench/portal.py measured NOOP latency doubling while
one portal user signed in back to back. In a process of its own it runs on
another core, and a crash of the portal cannot touch the gateway.

Rules:

* The parent binds the listening socket (`PortalServer.bind`), so a port in
  use is the parent's one-line ConfigError naming `portal.listen`, before the
  gateway listens; the child inherits the socket.
* The child is `python -m imapguard.cli portal --config PATH` with two
  inherited descriptors: the socket, and the read end of a pipe the parent holds
  open. When the parent ends, however it ends (SIGKILL included), the child
  reads end-of-file and stops: no orphan keeps the port.
* It is the same code as `imapguard portal`, on the same state store, audit log
  and revocation feed (all shared between processes already): the defense
  counts a password tried at the portal and over IMAP as one spray.
* SIGHUP is passed on (the child reloads its certificate). `stop()` sends
  SIGTERM, waits `STOP_GRACE` seconds, then kills.
* A child that exits on its own is logged and started again after a pause
  that doubles from `RESTART_FIRST` to `RESTART_MAX` seconds (back to the first
  after it ran `RESTART_RESET` seconds): a portal that cannot start does not
  spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

__all__ = ["PARENT_FD_ENV", "SOCKET_FD_ENV", "PortalChild", "inherited", "watch_parent"]

log = logging.getLogger("imapguard")

# The environment variables that tell the child its inherited descriptors.
SOCKET_FD_ENV = "IMAPGUARD_PORTAL_SOCKET_FD"
PARENT_FD_ENV = "IMAPGUARD_PORTAL_PARENT_FD"
STOP_GRACE = 10.0
RESTART_FIRST = 1.0
RESTART_MAX = 30.0
RESTART_RESET = 60.0


class PortalChild:
    def __init__(
        self,
        config_path: str,
        sock: socket.socket,
        *,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self._config_path = config_path
        self._socket = sock
        self._on_exit = on_exit
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def run(self) -> None:
        """Keep a portal process running until `stop()`."""
        pause = RESTART_FIRST
        while not self._stopping.is_set():
            started = time.monotonic()
            code = await self._run_once()
            if self._stopping.is_set():
                return
            log.error("the portal process exited (%s); starting it again in %.0f s", code, pause)
            if self._on_exit is not None:
                self._on_exit(code)
            if time.monotonic() - started >= RESTART_RESET:
                pause = RESTART_FIRST
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
            pause = min(pause * 2, RESTART_MAX)

    async def _run_once(self) -> int:
        read_end, write_end = os.pipe()
        fd = self._socket.fileno()
        env = {**os.environ, SOCKET_FD_ENV: str(fd), PARENT_FD_ENV: str(read_end)}
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "imapguard.cli",
                "portal",
                "--config",
                self._config_path,
                pass_fds=(fd, read_end),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                # Its own session: a Ctrl-C in the terminal reaches the parent only,
                # which stops the child in order.
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        try:
            return await self._proc.wait()
        finally:
            os.close(write_end)  # an earlier child, if it lingers, now stops too
            self._proc = None

    def hangup(self) -> None:
        """Pass SIGHUP on: the child reloads its certificate."""
        self._signal(signal.SIGHUP)

    async def stop(self) -> None:
        """SIGTERM, `STOP_GRACE` seconds, then SIGKILL; no restart after."""
        self._stopping.set()
        proc = self._proc
        if proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            await proc.wait()

    def _signal(self, signum: int) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)


def inherited() -> tuple[socket.socket, int] | None:
    """In the child: the listening socket and the parent's pipe, if this
    process was started by `PortalChild` (None otherwise)."""
    sock_fd, parent_fd = os.environ.pop(SOCKET_FD_ENV, None), os.environ.pop(PARENT_FD_ENV, None)
    if sock_fd is None or parent_fd is None:
        return None
    return socket.socket(fileno=int(sock_fd)), int(parent_fd)


async def watch_parent(parent_fd: int, stop: Callable[[], None]) -> None:
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
    log.warning("the gateway process ended; the portal stops")
    stop()
