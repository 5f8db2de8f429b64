"""What lets several `imapguard serve` processes share a node, and stops two
from sharing it by mistake.

`[server] workers = N` runs N gateway processes (`imapguard.children`) on the
same listening addresses. The parent binds every socket itself, N per listener
with SO_REUSEPORT, before any worker starts: a port in use is its one-line
error, the kernel spreads new connections over the N accept queues, and a
worker that dies and is started again takes its socket back with the
connections still queued on it.

SO_REUSEPORT would also let a second imapguard of the same user join the
port and take a share of the connections (the kernel refuses another user's
socket on it), so the parent holds a lock per listening address, and `serve`
holds a lock on an SQLite state (a `flock` on `STATE.lock`, STATE with its
symbolic links resolved, so that another spelling of the same file is the same
lock), so a second `serve` started by mistake is refused with one line naming
the key, instead of halving the first one's traffic or racing its writes.

The address lock is an abstract Unix socket named after the address, listening:
the kernel releases it when the process ends, however it ends, and it needs no
directory (a lock file would need one only the service may write, for every
kind of state store). Any local user may bind that name first, though. So a
name already taken counts as another imapguard only when its holder runs as
this user: a second `serve` connects to it and reads its owner (SO_PEERCRED,
unix(7)). Any other holder, or one that cannot be asked (a squatter that does
not listen, or fills its queue), is logged and the lock skipped: a squatter
cannot stop `serve` from starting, at worst it disables this check against an
operator's mistake, and cannot join the port itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from imapguard.errors import ConfigError
from imapguard.net import cannot_listen

__all__ = ["BACKLOG", "address_lock", "bind_listeners", "state_lock"]

# Linux caps the listen queue at net.core.somaxconn (4096 on current kernels).
BACKLOG = 4096
# Probes of the address lock by second serves (never accepted: each one stays
# queued until the holder ends).
LOCK_BACKLOG = 128
# struct ucred (pid, uid, gid) of SO_PEERCRED, unix(7).
_UCRED = struct.Struct("iII")

log = logging.getLogger("imapguard")


def address_lock(address: str, key: str) -> socket.socket | None:
    """Hold `address` (a listen address as written) for this process: a second
    imapguard of this user asking for the same address gets a ConfigError
    naming `key`. None (logged) when another user holds the name."""
    name = "\0imapguard-listen:" + address
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(name)
        lock.listen(LOCK_BACKLOG)  # so that a second serve can read who holds it
    except OSError as exc:
        lock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        holder = _holder_uid(name)
        if holder == os.geteuid():
            raise ConfigError(
                [(key, f"{address} is served by another imapguard serve already")]
            ) from None
        log.warning(
            "%s: the lock of %s is held by %s, not this user; serving without it",
            key,
            address,
            "an unknown process" if holder is None else f"user id {holder}",
        )
        return None
    return lock


def _holder_uid(name: str) -> int | None:
    """The effective user id of the process listening on the abstract socket
    `name`, or None if it does not answer at once."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(name)
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    finally:
        probe.close()
    _, uid, _ = _UCRED.unpack(creds)
    return int(uid)


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
    # Resolved: a symbolic link or another spelling of the same file is the same lock.
    path = Path(os.path.realpath(url.removeprefix("sqlite://")) + ".lock")
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
