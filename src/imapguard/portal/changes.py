"""After a change of how the account signs in: the other sessions end and the
owner is told.

The changes: an authenticator app set up, replaced or removed, a passkey added
or removed, a new set of recovery codes, a new app password. Each is what a thief
with a signed-in session does first to keep the account, and what the owner
does to lock a thief out. So, once the change is stored, `Changes.made`

* ends every other portal session of the account
  (`revoke_portal_sessions(user, keep=this one)`): a stolen session does not
  survive the owner securing the account, and when the thief made the change the
  owner finds themselves signed out, and reads why;
* tells the owner (the `NoticeHook`, an owner-only notice kind per change, at
  most once per account and kind per `notify.min_interval`): what changed, when,
  from which address, and what to do if it was not them;
* writes a `session_revoke_others` audit line naming the change when it ended
  sessions (the change itself is the page's own line, as before).

The kinds are `notify.NoticeKind` values (the portal does not import `notify`:
the hook is compose's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request

from imapguard.auth.model import NoticeHook
from imapguard.errors import StateError
from imapguard.portal.kit import Kit
from imapguard.portal.sessions import Current

__all__ = [
    "APP_PASSWORD_CREATED",
    "CHANGES",
    "PASSKEY_ADDED",
    "PASSKEY_REMOVED",
    "RECOVERY_CODES",
    "TOTP_ADDED",
    "TOTP_REMOVED",
    "TOTP_REPLACED",
    "Changes",
]

log = logging.getLogger("imapguard.portal")

TOTP_ADDED: Final = "totp_added"
TOTP_REPLACED: Final = "totp_replaced"
TOTP_REMOVED: Final = "totp_removed"
PASSKEY_ADDED: Final = "passkey_added"
PASSKEY_REMOVED: Final = "passkey_removed"
RECOVERY_CODES: Final = "recovery_codes"
APP_PASSWORD_CREATED: Final = "app_password_created"  # noqa: S105 - a notice kind
CHANGES = frozenset(
    {
        TOTP_ADDED,
        TOTP_REPLACED,
        TOTP_REMOVED,
        PASSKEY_ADDED,
        PASSKEY_REMOVED,
        RECOVERY_CODES,
        APP_PASSWORD_CREATED,
    }
)


@dataclass(frozen=True)
class Changes:
    kit: Kit
    # Tells the owner; None without [notify].
    notice: NoticeHook | None

    async def made(self, request: Request, signed_in: Current, change: str) -> int:
        """`change` (one of `CHANGES`) was stored for the session's account: end
        its other sessions and tell the owner. How many sessions ended."""
        if change not in CHANGES:
            raise ValueError(f"not an account change: {change!r}")
        kit, user = self.kit, signed_in.session.user
        try:
            ended = await kit.call(
                kit.store.revoke_portal_sessions, user, keep=signed_in.session.id
            )
        except StateError:
            # The change is stored; say in the audit log that the others may live on.
            kit.emit(request, user, "session_revoke_others", "failed", f"after {change}")
            ended = 0
        else:
            if ended:
                kit.emit(request, user, "session_revoke_others", "ok", f"{ended} ended: {change}")
        if self.notice is not None:
            try:
                self.notice(change, user, kit.context(request), None)
            except Exception:
                log.exception("notification hook failed")
        return ended
