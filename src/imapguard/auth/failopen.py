"""`defense.fail_open`: a login let on when the defense's store cannot be reached.

Each such login is audited (`defense_unavailable`, counted in the metrics); the
process log says so at most once a minute, with how many logins went on
unchecked since, so an outage under attack cannot flood the log."""

from __future__ import annotations

import logging
from collections.abc import Callable

from imapguard.audit import AuditLog, events

__all__ = ["FailOpen"]

log = logging.getLogger("imapguard.auth")

WARN_EVERY = 60.0  # seconds between two warnings in the process log


class FailOpen:
    def __init__(self, audit: AuditLog, clock: Callable[[], float]) -> None:
        self._audit = audit
        self._clock = clock
        self._warned_at = float("-inf")
        self._unchecked = 0

    def let_on(self, src: str, user: str | None, detail: str) -> None:
        self._audit.emit(events.DefenseUnavailable(src=src, user=user, reason=detail))
        self._unchecked += 1
        now = self._clock()
        if now - self._warned_at >= WARN_EVERY:
            log.warning(
                "the defense's store is unreachable (%s): %d login(s) let on without the"
                " defense (defense.fail_open)",
                detail,
                self._unchecked,
            )
            self._warned_at, self._unchecked = now, 0
