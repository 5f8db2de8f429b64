"""A store whose revocations are announced to the other processes at once.

Every writer of the revocation feed (the portal's pages, the "this wasn't me"
of the sign-in history, the CLI's revoke commands) writes through the store the
composition root opened; `Announced` wraps that store so that each revocation
it commits is followed by `announcer.announce()`: with Redis, a wake-up on
pub/sub that every gateway's `RevocationWatch` answers by reading the feed at
once (`state.redis.wakeup.Topic`). Without a shared Redis nothing is wrapped:
the gateways poll the feed.

The announcement follows the commit, on the writer's thread, and never fails
the write (an announcer logs what it could not send; the polling catches it).
Everything else is the wrapped store's own, attribute for attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from imapguard.state.portal import PortalStore

__all__ = ["Announced", "Announcer"]


class Announcer(Protocol):
    def announce(self) -> None:
        """Tell the followers the feed changed; must not raise."""


class Announced:
    """`store`, with each committed revocation announced; `close()` closes the
    store, then runs `on_close` (the announcer's connection)."""

    def __init__(
        self,
        store: PortalStore,
        announcer: Announcer,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.inner = store
        self._announcer = announcer
        self._on_close = on_close

    def revoke(self, user: str, credential: str | None, now: float) -> bool:
        revoked = self.inner.revoke(user, credential, now)
        if revoked:
            self._announcer.announce()
        return revoked

    def publish_revocation(self, user: str, credential: str | None, now: float) -> int:
        seq = self.inner.publish_revocation(user, credential, now)
        self._announcer.announce()
        return seq

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def __getattr__(self, name: str) -> Any:
        # Only called for what this class does not define: the rest of the store.
        return getattr(self.inner, name)
