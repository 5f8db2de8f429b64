""" "This wasn't me": the owner of an account disowns one of its sign-ins, and in
one step

1. the sign-in is marked disowned (only the owner's own: another account's id
   changes nothing, whatever the page was made to send);
2. the credential it used stops working and every live session that logged in
   with it ends (`PortalStore.revoke`: removed and published in one
   transaction, so the gateway of every process follows within seconds); a
   sign-in that used no revocable credential (the password itself, a token)
   ends the account's other portal sessions instead;
3. its source address is blocked for this account, and for everyone only when
   no other account logged in from it (`Defense.owner_report`: a shared
   address, a NAT or the webmail server, is never shut for all on one account's
   word); an account has a few such reports per window, past them nothing is
   blocked (`limited`) while the credential is still revoked;
4. the admins and the owner are told (`NoticeHook`, kind "disowned").

Each step is written to the audit log with the acting user. A failure of the
store stops the steps that follow and is raised (`StateUnavailable`): the page
then says it could not be done, rather than half of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from imapguard.audit import AuditLog, events
from imapguard.auth.model import AuthContext, NoticeHook
from imapguard.defense.counters import Target, TargetKind
from imapguard.defense.engine import Defense
from imapguard.state.portal import PortalStore, SignInRecord

__all__ = ["Disowned", "disown"]

REVOCABLE = ("app-password:", "device:")


@dataclass(frozen=True)
class Disowned:
    sign_in: SignInRecord
    revoked: str | None  # the credential revoked, if one was
    # The blocks in force for the sign-in's address after the report.
    blocked: tuple[Target, ...] = ()
    # The account's reports of the window were used up: nothing was blocked.
    limited: bool = False

    @property
    def everyone(self) -> bool:
        """The address is blocked for every account, not only this one."""
        return any(t.kind is TargetKind.SOURCE for t in self.blocked)


def disown(
    store: PortalStore,
    defense: Defense | None,
    audit: AuditLog,
    user: str,
    sign_in_id: str,
    ctx: AuthContext,
    *,
    keep_session: str | None = None,
    notice: NoticeHook | None = None,
    clock: Callable[[], float] = time.time,
) -> Disowned | None:
    """Disown `sign_in_id` of `user` (the signed-in owner); None if the account
    has no such sign-in. `keep_session`: the portal session doing it survives."""
    record = store.get_sign_in(user, sign_in_id)
    if record is None or not store.disown_sign_in(user, sign_in_id):
        return None
    now = clock()
    revoked: str | None = None
    if record.credential.startswith(REVOCABLE):
        if store.revoke(user, record.credential, now):
            revoked = record.credential
    else:
        store.revoke_portal_sessions(user, keep=keep_session)
    blocked: tuple[Target, ...] = ()
    limited = False
    if defense is not None and record.address:
        verdict = defense.owner_report(
            user, record.address, "sign-in disowned by the account's owner"
        )
        for event in verdict.events:
            audit.emit(event.record(ctx.client.session))
        blocked, limited = verdict.blocked, verdict.limited
    audit.emit(
        events.Disowned(
            session=ctx.client.session,
            src=ctx.client.ip,
            user=user,
            sign_in=record.id,
            sign_in_src=record.address,
            revoked=revoked,
            blocked=" ".join(str(t) for t in blocked) or None,
            limited=limited or None,
        )
    )
    if notice is not None:
        notice("disowned", user, ctx, None)
    return Disowned(record, revoked, blocked, limited)
