""" "This wasn't me": the owner of an account disowns one of its sign-ins, and in
one step

1. the sign-in is marked disowned (only the owner's own: another account's id
   changes nothing, whatever the page was made to send);
2. the credential it used stops working and every live session that logged in
   with it ends (`PortalStore.revoke`: removed and published in one
   transaction, so the gateway of every process follows within seconds); a
   sign-in that used no revocable credential (the password itself, a token)
   ends the account's other portal sessions instead;
3. its source address is blocked (`Defense.block`, escalating like any block);
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
    blocked: str | None  # the source blocked, if a block was placed


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
    blocked: str | None = None
    if defense is not None and record.address:
        for event in defense.block(
            Target(TargetKind.SOURCE, record.address), "sign-in disowned by the account's owner"
        ):
            audit.emit(event.record(ctx.client.session))
            blocked = record.address
    audit.emit(
        events.Disowned(
            session=ctx.client.session,
            src=ctx.client.ip,
            user=user,
            sign_in=record.id,
            sign_in_src=record.address,
            revoked=revoked,
            blocked=blocked,
        )
    )
    if notice is not None:
        notice("disowned", user, ctx, None)
    return Disowned(record, revoked, blocked)
