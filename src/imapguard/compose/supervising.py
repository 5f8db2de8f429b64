"""`imapguard serve` with `[server] workers` > 1: the parent of the workers.

The parent serves no IMAP itself. It holds the locks (`imapguard.workers`: the
SQLite state, each listen address), binds every listening socket, N per
address with SO_REUSEPORT, and starts N `imapguard worker` processes, each on
its own sockets (`imapguard.children`: restarted with a growing pause if one
dies; its queued connections wait on its socket meanwhile), and the portal
process with `[portal]`. With `[metrics]` it serves /metrics and /health,
summing the workers' values (`metrics.multiprocess`); /health is 503 "worker N
not running" while a worker has no process (its queued connections wait).

Signals: SIGHUP reads the configuration first, so a broken one is refused once,
here, with the reason logged and audited, and the workers keep theirs; a good
one is passed on to every child (each reloads it, and reopens the audit log).
The children read the configuration the parent last accepted, not the file an
administrator may be editing: a private copy (`_Accepted`), taken at start and
at each accepted SIGHUP. A worker restarted after a crash thus runs what its
siblings run, not an edit nobody reloaded yet (which could be broken, or weaken
what the others enforce).
SIGTERM and SIGINT: /health turns 503, the workers drain (each gets
`limits.drain_timeout` and a margin), the portal stops, then the parent exits.
Settings read only at start (listen addresses, `[server] workers`, `[metrics]`)
need a restart, as they do without workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from imapguard import hangup
from imapguard.audit import AuditLog, events
from imapguard.children import Child
from imapguard.compose.observing import start_metrics
from imapguard.compose.services import account_store
from imapguard.config import Config, load_config, parse_address
from imapguard.errors import ConfigError
from imapguard.metrics import multiprocess
from imapguard.portal.child import PortalChild
from imapguard.portal.serve import listen_socket
from imapguard.workers import address_lock, bind_listeners

__all__ = ["serve_workers"]

log = logging.getLogger("imapguard")

# What `imapguard` exits with on a configuration error (cli.common.EXIT_CONFIG).
EXIT_CONFIG = 2
# Seconds a worker gets beyond drain_timeout to end its sessions and exit.
STOP_MARGIN = 10.0


class _Accepted:
    """The configuration the parent last accepted, as a file its children read
    (0600, in a 0700 directory of its own under systemd's `RuntimeDirectory`, else
    the temporary directory). Relative paths in it mean what they meant: they are
    relative to the working directory, not to the configuration file
    (`config.load`). The accepted bytes stay in memory and the copy is written
    again before a worker is restarted and every `REFRESH` seconds: a cleaner of
    old temporary files must not take it from a long-running gateway."""

    REFRESH = 3600.0

    def __init__(self, source: str) -> None:
        self.source = source
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
        self._dir = Path(tempfile.mkdtemp(prefix="imapguard-config-", dir=runtime))
        self.path = str(self._dir / "imapguard.toml")
        self._text = b""

    def take(self) -> Config:
        """Read the source once, validate those very bytes, and make them what the
        children read; a problem raises (ConfigError, OSError, ValueError) and the
        copy in use stays."""
        try:
            text = Path(self.source).read_bytes()
        except FileNotFoundError:
            raise ConfigError([("--config", f"file not found: {self.source}")]) from None
        candidate = self._write(text)
        try:
            config = load_config(candidate)
        except ConfigError as exc:
            # The problems name the administrator's file, not the copy.
            raise ConfigError(
                [(key, msg.replace(str(candidate), self.source)) for key, msg in exc.problems]
            ) from None
        os.replace(candidate, self.path)
        self._text = text
        return config

    def refresh(self) -> None:
        """Write the accepted bytes again (the directory too, if it went)."""
        try:
            os.replace(self._write(self._text), self.path)
        except OSError as exc:
            log.error("cannot write the workers' copy of the configuration %s: %s", self.path, exc)

    def _write(self, text: bytes) -> Path:
        # The directory's name is no secret (the workers' command lines): if it
        # went, another local user may have made one of that name, or a symlink.
        # Made again only by us (mkdir fails on anything there), and used only
        # if it is ours, a directory and 0700: nobody else can then put a file
        # (or a symlink) in it.
        with contextlib.suppress(FileExistsError):
            os.mkdir(self._dir, 0o700)
        st = os.lstat(self._dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise OSError(f"{self._dir} is not a private directory of this user: not used")
        candidate = self._dir / "candidate.toml"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(candidate)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(candidate, flags, 0o600), "wb") as f:
            f.write(text)
        return candidate

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


async def serve_workers(config: Config, config_path: str, workers: int) -> None:
    accepted = _Accepted(config_path)
    try:
        # The bytes the children will read, checked (the caller read the file a
        # moment ago; what counts is the copy).
        await _serve_workers(accepted.take(), accepted, workers)
    finally:
        accepted.close()


async def _serve_workers(config: Config, accepted: _Accepted, workers: int) -> None:
    # What a worker would refuse at its start is refused here, once, before a
    # socket is bound: the store's schema and server key (the files and the TLS
    # pairs were checked by load_config).
    account_store(config).close()
    keys = [f"listen[{i}].address" for i in range(len(config.listen))]
    with contextlib.ExitStack() as held:
        for key, listener in zip(keys, config.listen, strict=True):
            lock = address_lock(listener.address, key)
            if lock is not None:
                held.callback(lock.close)
        groups = bind_listeners(
            [
                (key, parse_address(lst.address))
                for key, lst in zip(keys, config.listen, strict=True)
            ],
            workers,
        )
        for group in groups:
            for sock in group:
                held.callback(sock.close)
        directory: Path | None = None
        if config.metrics is not None:
            directory = multiprocess.prepare()
            held.callback(multiprocess.finish, directory)
        audit = AuditLog(config.audit.path)
        held.callback(audit.close)
        await _supervise(config, accepted, groups, audit, directory)


async def _supervise(
    config: Config,
    accepted: _Accepted,
    groups: list[list[socket.socket]],
    audit: AuditLog,
    directory: Path | None,
) -> None:
    stopping = asyncio.Event()

    count = len(groups[0])
    workers: list[Child] = []
    refused: list[int] = []

    def ended(k: int) -> Callable[[int], None]:
        def exited(code: int) -> None:
            # Its live gauges (open connections) leave the sums; its counters stay.
            pid = workers[k].last_pid
            if directory is not None and pid is not None:
                multiprocess.worker_ended(pid, directory)
            audit.emit(events.Reload(result="failed", reason=f"worker {k} exited ({code})"))
            accepted.refresh()  # what its restart reads
            if code == EXIT_CONFIG:
                # It refused the configuration (its one line is in the log): every
                # worker would, again and again.
                log.error("worker %d refused the configuration; stopping", k)
                refused.append(k)
                stopping.set()

        return exited

    for k in range(count):
        workers.append(
            Child(
                f"worker {k}",
                ["worker", "--config", accepted.path],
                {f"listen{i}": group[k].fileno() for i, group in enumerate(groups)},
                stop_grace=config.limits.drain_timeout + STOP_MARGIN,
                on_exit=ended(k),
            )
        )
    children: list[Child] = list(workers)
    if config.portal is not None:
        children.append(PortalChild(accepted.path, listen_socket(config.portal.listen)))
    collect = None
    if directory is not None:
        folder = directory

        def collect() -> CollectorRegistry:
            return multiprocess.collect(folder)

    def problem() -> str | None:
        if stopping.is_set():
            return "draining"
        # A worker's socket keeps taking connections while it is down (its
        # restart pause grows to RESTART_MAX): nobody accepts them meanwhile.
        for k, worker in enumerate(workers):
            if worker.pid is None:
                return f"worker {k} not running"
        return None

    server = await start_metrics(config, None, problem, collect)

    def reload() -> None:
        audit.reopen()
        try:
            accepted.take()
        except (ConfigError, OSError, ValueError) as exc:
            log.error("reload failed, the workers keep the running configuration: %s", exc)
            audit.emit(events.Reload(result="failed", reason=str(exc)))
            return
        for child in children:
            child.hangup()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    if hangup.pending():  # one came while starting
        loop.call_soon(reload)
    audit.emit(events.Start(pid=os.getpid()))
    log.info(
        "serving with %d worker processes; they read the configuration accepted from %s"
        " (its copy %s)",
        len(workers),
        accepted.source,
        accepted.path,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            for child in children:
                tg.create_task(child.run())
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), accepted.REFRESH)
                if not stopping.is_set():
                    accepted.refresh()
            await asyncio.gather(*(child.stop() for child in children))
    finally:
        if server is not None:
            await server.close()
    audit.emit(events.Stop(pid=os.getpid()))
    if refused:
        raise ConfigError(
            [("worker", f"worker {refused[0]} refused the configuration (see above)")]
        )
