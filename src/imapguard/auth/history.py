"""The account owners' sign-in history, fed from the audit log: every `auth`
event of a known account (IMAP logins and portal sign-in steps alike), with the
source, the method, the result and the credential used, so the owner can review
it in the portal and say "this wasn't me" (which revokes that credential).

It is an audit subscriber (`AuditLog.subscribe`): the history says exactly what
the audit log says, and no login path writes it separately. Rows are
bookkeeping (queued, batched: `state.writebehind`); the store records none for
a name that is no account (`SignInStore.record_sign_in`), so a flood of made-up
names grows nothing, and it keeps the newest `state.portal.MAX_SIGN_INS` per
account. A failure's reason is kept short: the owner sees what failed, not the
defense's internals. A portal sign-in step is recorded with the kind of
credential its mechanism checked (`PORTAL_CREDENTIALS`) and the browser's
User-Agent as its client (portal.kit.Kit.browser).
"""

from __future__ import annotations

from imapguard.audit import events
from imapguard.auth import signin
from imapguard.state.portal import SignInStore
from imapguard.state.writebehind import WriteBehind

__all__ = ["SignInHistory"]

# What the owner sees of a failure: the start of the audit reason, up to its
# first parenthesis or semicolon ("wrong password", "blocked: ...").
MAX_REASON = 80
# The longest client text kept: an IMAP ID label or a browser's User-Agent.
MAX_CLIENT = 256
# A portal sign-in step names no credential of its own: what its mechanism
# checked, as a bare kind (none of them is revocable: auth.disown.REVOCABLE).
PORTAL_CREDENTIALS = {
    signin.MECHANISM_PASSWORD: "password",
    signin.MECHANISM_INVITE: "password",
    signin.MECHANISM_CODE: "one-time-code",
    signin.MECHANISM_PASSKEY: "passkey",
    signin.MECHANISM_RECOVERY: "recovery-code",
}


class SignInHistory:
    def __init__(self, store: SignInStore, bookkeeping: WriteBehind) -> None:
        self._store = store
        self._bookkeeping = bookkeeping

    def __call__(self, event: events.Event, ts: float) -> None:
        if not isinstance(event, events.Auth) or not event.user:
            return
        ok = event.result == "ok"
        self._bookkeeping.submit(
            self._store.record_sign_in,
            event.user,
            ts,
            event.src,
            event.method or event.mechanism,
            ok,
            "" if ok else short_reason(event.reason),
            event.credential or PORTAL_CREDENTIALS.get(event.mechanism, ""),
            (event.client_id or "")[:MAX_CLIENT],
        )


def short_reason(reason: str) -> str:
    """ "wrong password (NO [AUTHENTICATIONFAILED] ...)" -> "wrong password"."""
    for mark in (" (", ";"):
        reason = reason.split(mark, 1)[0]
    return reason[:MAX_REASON]
