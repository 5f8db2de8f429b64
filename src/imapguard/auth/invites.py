"""Invitations: the first way into the portal for an account that has no second
factor yet. An admin issues one (`imapguard user invite`); the link carries a
random token (256 bits); the store keeps only HMAC-SHA-256(key, token), so a copy
of the database opens no account. Redeeming is atomic and once only, and voids
the account's other invitations (`InviteStore.use_invite`); an expired one is
refused. The token is read from the link's path and never logged.

Redeeming an invitation is not signing in: the portal then asks for the
account's password (through the auth service, counted and audited like any
sign-in) and has the user enroll a second factor before anything else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from imapguard.state.portal import InviteStore

__all__ = ["DEFAULT_LIFETIME", "is_token", "issue", "redeem", "token_digest"]

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


def redeem(store: InviteStore, key: bytes, token: str, now: float) -> str | None:
    """The account an unused, unexpired invitation names, for exactly one caller;
    None for anything else (what is not even a token is not looked up)."""
    if not is_token(token):
        return None
    return store.use_invite(token_digest(key, token), now)
