"""Invitations: the first way into the portal for an account that has no second
factor yet. An admin issues one (`imapguard user invite`); the link carries a
random token (256 bits); the store keeps only HMAC-SHA-256(key, token), so a copy
of the database opens no account. Redeeming is atomic and once only, and voids
the account's other invitations (`InviteStore.use_invite`); an expired one is
refused. The token is read from the link's path and never logged.

Redeeming an invitation is not signing in: the portal first asks for the
account's password (through the auth service, counted and audited like any
sign-in), spends the invitation only for that account, and has the user enroll
a second factor before anything else.

An invitation sets up an account that has no second factor; it never replaces
one (whoever has the password and a stray link would otherwise swap the owner's
authenticator for theirs). An account that lost its factor is reset by an
admin: `imapguard user invite U --reset` removes its TOTP, passkeys and
recovery codes and ends its portal sessions in the transaction that issues the
new invitation (`reset_factors`); the owner is told when an invitation is used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Protocol

from imapguard.state.accounts import TotpStore
from imapguard.state.portal import InviteStore, PasskeyStore, PortalSessionStore, RecoveryCodeStore

__all__ = [
    "DEFAULT_LIFETIME",
    "Reset",
    "is_token",
    "issue",
    "redeem",
    "reset_factors",
    "token_digest",
]

DEFAULT_LIFETIME = 7 * 86400.0
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


def is_token(text: str) -> bool:
    """Has `text` the form of an invitation token (what else is never looked up)?"""
    return _TOKEN.fullmatch(text) is not None


def token_digest(key: bytes, token: str) -> bytes:
    return hmac.new(key, token.encode("ascii"), hashlib.sha256).digest()


def issue(
    store: InviteStore, key: bytes, user: str, now: float, lifetime: float = DEFAULT_LIFETIME
) -> str:
    """A new invitation for `user`; the token for its link (shown once)."""
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    store.add_invite(user, token_digest(key, token), now, now + lifetime)
    return token


def redeem(store: InviteStore, key: bytes, token: str, user: str, now: float) -> bool:
    """Spend an unused, unexpired invitation of `user`, for exactly one caller;
    False for anything else: another account's link stays good (what is not
    even a token is not looked up)."""
    if not is_token(token):
        return False
    return store.use_invite(token_digest(key, token), user, now)


class ResetStore(TotpStore, PasskeyStore, RecoveryCodeStore, PortalSessionStore, Protocol):
    """What a reset changes."""


@dataclass(frozen=True)
class Reset:
    """What `reset_factors` removed (for the admin's audit line)."""

    totp: bool
    passkeys: int
    sessions: int


def reset_factors(store: ResetStore, user: str, now: float) -> Reset:
    """Remove every second factor of `user` (TOTP, passkeys, recovery codes) and
    end its portal sessions, so that an invitation can set the account up again.
    Call it in the store transaction that issues that invitation."""
    totp = store.remove_totp(user)
    passkeys = [p.id for p in store.list_passkeys(user)]
    for passkey in passkeys:
        store.remove_passkey(user, passkey)
    store.set_recovery_codes(user, [], now)
    sessions = store.revoke_portal_sessions(user)
    return Reset(totp, len(passkeys), sessions)
