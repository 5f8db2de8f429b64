"""What lets several `imapguard serve` processes share a node, and stops two
from sharing it by mistake.

`[server] workers = N` runs N gateway processes (`imapguard.children`) on the
same listening addresses. The parent binds every socket itself, N per listener
with SO_REUSEPORT, before any worker starts: a port in use is its one-line
error, the kernel spreads new connections over the N accept queues, and a
worker that dies and is started again takes its socket back with the
connections still queued on it.

SO_REUSEPORT would also let a second imapguard of the same user join the
port and take a share of the connections, so the parent holds a lock per
listening address (an abstract Unix socket named after it, released by the
kernel when the process ends, however it ends), and `serve` holds a lock on an
SQLite state (a `flock` on `STATE.lock`), so a second `serve` started by mistake
is refused with one line naming the key, instead of halving the first one's
traffic or racing its writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

from imapguard.errors import ConfigError
from imapguard.net import cannot_listen

__all__ = ["BACKLOG", "address_lock", "bind_listeners", "state_lock"]

# Linux caps the listen queue at net.core.somaxconn (4096 on current kernels).
BACKLOG = 4096


def address_lock(address: str, key: str) -> socket.socket:
    """Hold `address` (a listen address as written) for this process: a second
    imapguard asking for the same address gets a ConfigError naming `key`."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind("\0imapguard-listen:" + address)
    except OSError as exc:
        lock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                [(key, f"{address} is served by another imapguard serve already")]
            ) from None
        raise
    return lock


def bind_listeners(
    addresses: Sequence[tuple[str, tuple[str, int]]], workers: int
) -> list[list[socket.socket]]:
    """For each (key, (host, port)), `workers` listening sockets sharing the
    address (SO_REUSEPORT), inheritable; a bind error is a ConfigError naming
    the key. Everything bound so far is closed on failure."""
    out: list[list[socket.socket]] = []
    try:
        for key, (host, port) in addresses:
            group: list[socket.socket] = []
            out.append(group)
            for _ in range(workers):
                group.append(_bind(key, host, port))
                if port == 0:  # tests: the first picks a port, the others join it
                    port = group[0].getsockname()[1]
    except BaseException:
        for group in out:
            for sock in group:
                sock.close()
        raise
    return out


def _bind(key: str, host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise cannot_listen(key, f"{host}:{port}", exc) from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address[:2])
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        where = f"{host}:{port}" if family != socket.AF_INET6 else f"[{host}]:{port}"
        raise cannot_listen(key, where, exc) from None
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def state_lock(url: str, key: str = "state.url") -> Iterator[None]:
    """Hold the SQLite state of `url` for this `serve` (nothing for another
    store: several nodes share a PostgreSQL on purpose)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    path = Path(url.removeprefix("sqlite://") + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError([(key, f"cannot open {path}: {exc.strerror}")]) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise ConfigError(
                [(key, f"another imapguard serve (pid {holder}) uses this state; stop it first")]
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
