"""The portal in a process of its own beside the gateway (`imapguard serve`).

Why: serving the portal is CPU work (TLS handshakes, HTTP, templates, and a
real upstream login for every password typed); on the gateway's event loop it
delays every IMAP session: bench/portal.py measured NOOP latency doubling while
one portal user signed in back to back. In a process of its own it runs on
another core, and a crash of the portal cannot touch the gateway.

The parent binds the listening socket (`PortalServer.bind`), so a port in use
is the parent's one-line ConfigError naming `portal.listen`, before the gateway
listens; the child, `python -m imapguard.cli portal --config PATH`, inherits it
(`imapguard.children`: the pipe that stops it with the parent, SIGHUP passed on
to reload its certificate, restarts with a growing pause). It is the same code
as `imapguard portal`, on the same state store, audit log and revocation feed
(all shared between processes already): the defense counts a password tried at
the portal and over IMAP as one spray.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from imapguard.children import PARENT_FD, Child
from imapguard.children import inherited as inherited_fds
from imapguard.children import watch_parent as _watch_parent

__all__ = ["PortalChild", "inherited", "watch_parent"]

SOCKET = "portal"  # the socket's name among the inherited descriptors


class PortalChild(Child):
    def __init__(
        self,
        config_path: str,
        sock: socket.socket,
        *,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(
            "the portal process",
            ["portal", "--config", config_path],
            {SOCKET: sock.fileno()},
            on_exit=on_exit,
        )
        self.socket = sock  # held open here for every restart of the child


def inherited() -> tuple[socket.socket, int] | None:
    """In the child: the listening socket and the parent's pipe, if this
    process was started by `PortalChild` (None otherwise)."""
    fds = inherited_fds()
    if fds is None or SOCKET not in fds:
        return None
    return socket.socket(fileno=fds[SOCKET]), fds[PARENT_FD]


async def watch_parent(parent_fd: int, stop: Callable[[], None]) -> None:
    """Call `stop` when the parent's end of the pipe closes (the parent ended)."""
    await _watch_parent(parent_fd, stop, "the portal")
