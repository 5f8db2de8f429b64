"""What the defense learns from each login: the outcome counted after the
decision, the defense's own events written to the audit log, and the owner of a
locked account told.

Blocked attempts, policy decisions and an unavailable upstream count for
nothing (they say nothing about the password). A success is counted off the
login path, batched on the store thread; a failure is counted before it is
answered, so the next attempt already sees it. Whether a locked account is
known (so its owner is told) is read through `reads` (off the event loop for a
networked store).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from imapguard.audit import AuditLog
from imapguard.auth.model import AuthContext, AuthResult, Outcome
from imapguard.auth.reads import Reads
from imapguard.defense.counters import TargetKind
from imapguard.defense.engine import Attempt, Defense, FailureKind, Verdict
from imapguard.defense.events import BlockPlaced, DefenseEvent
from imapguard.errors import StateUnavailable
from imapguard.state.on_thread import on_thread
from imapguard.state.writebehind import WriteBehind

__all__ = ["Counting"]

Notice = Callable[[str, str, AuthContext, str | None], None]


class Counting:
    def __init__(
        self,
        defense: Defense,
        *,
        audit: AuditLog,
        reads: Reads,
        bookkeeping: WriteBehind,
        executor: Executor,
        notice: Notice,
    ) -> None:
        self.defense = defense
        self._audit = audit
        self._reads = reads
        self._bookkeeping = bookkeeping
        self._executor = executor
        self._notice = notice

    async def record(
        self,
        attempt: Attempt,
        verdict: Verdict,
        result: AuthResult[Any],
        ctx: AuthContext,
        session: str,
    ) -> None:
        """Count the outcome (writes, on the store thread)."""
        defense = self.defense
        if result.outcome is Outcome.OK:
            # Off the login path, batched; its events still reach the audit log.
            def succeeded() -> None:  # on the store thread: audit only, no notices
                self.report(defense.record_success(attempt), session, ctx)

            self._bookkeeping.submit(succeeded)
            return
        if result.blocked or result.rule is not None or result.outcome is Outcome.UNAVAILABLE:
            return  # (a DENIED result always names its rule)
        if result.outcome is Outcome.MISSING_FACTOR:
            kind = FailureKind.FACTOR
        elif result.user is None and attempt.user is None and result.method is None:
            kind = FailureKind.MALFORMED
        else:
            kind = FailureKind.CREDENTIAL
        events = await on_thread(
            self._executor, defense.record_failure, attempt, kind, verdict.familiar
        )
        locked = {
            e.block.target.value
            for e in events
            if isinstance(e, BlockPlaced) and e.block.target.kind is TargetKind.ACCOUNT_UNFAMILIAR
        }
        told = {user for user in locked if await self._known(user)}
        self.report(events, session, ctx, told)

    def report(
        self,
        events: list[DefenseEvent],
        session: str | None,
        ctx: AuthContext | None,
        told: set[str] | None = None,
    ) -> None:
        """Audit the defense's events; the owners of the locked accounts in `told`
        (known accounts, read before) are told of the lockout."""
        for event in events:
            self._audit.emit(event.record(session))
            if (
                told
                and ctx is not None
                and isinstance(event, BlockPlaced)
                and event.block.target.kind is TargetKind.ACCOUNT_UNFAMILIAR
                and event.block.target.value in told
            ):
                self._notice("lockout", event.block.target.value, ctx, None)

    async def _known(self, user: str) -> bool:
        """An account the gateway knows (it logged in, or has a factor or device):
        only those are told of a lockout. Anyone can fail ten logins under any
        name; the organisation's relay must not mail whatever name they chose."""
        try:
            return await self._reads.call(self._reads.store.get_user, user) is not None
        except StateUnavailable:
            return False

    async def maintain(self, session: str | None = None) -> None:
        """Purge expired counters and let the posture relax (about once a minute)."""
        self.report(await on_thread(self._executor, self.defense.maintain), session, None)
