"""What a new connection needs, built by the composition root (`imapguard.compose`)
and replaced as a whole on SIGHUP; established connections keep the one they
started with."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from imapguard.auth.chokepoint import Authenticator
from imapguard.config import Config
from imapguard.gateway.upstream import UpstreamCheck, UpstreamSession
from imapguard.imap.framing import FrameLimits

__all__ = ["Runtime"]


@dataclass
class Runtime:
    """Everything a new connection needs; replaced as a whole on SIGHUP."""

    config: Config
    server_ssl: ssl.SSLContext
    authenticator: Authenticator[UpstreamSession]
    frame_limits: FrameLimits
    mechanisms: tuple[str, ...] = ("PLAIN",)
    # Addresses that never wait for a handshake turn (defense.trusted_networks).
    trusted: Callable[[str], bool] = lambda ip: False
    # Tries the upstream as configured (gateway.upstream.check_upstream); the
    # gateway logs what it finds once it listens and after each reload.
    upstream_check: Callable[[], Awaitable[UpstreamCheck]] | None = None
