"""What the portal needs from the auth service to sign someone in: one port.

The portal never checks a password or a code itself. `SignInService` is
implemented in `imapguard.auth` (the same password check, factors, defense
counting and audit events as an IMAP login) and plugged in by `compose`; the
portal only sees whether a step succeeded. Rules for an implementation: a
failure says nothing about which part failed (unknown user, wrong password,
blocked source are all `ok=False`); `user` is the canonical account name the
session will carry; `has_totp` and `has_passkey` are only meaningful when
`ok`. A passkey challenge is made by the service (`passkey_options`) and kept by
the portal in the session's server-side state, handed back exactly once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from imapguard.auth.model import AuthContext
from imapguard.auth.oauth.tokens import VerifiedToken
from imapguard.auth.passkeys import Challenge
from imapguard.auth.signin import OidcCheck, PasswordCheck
from imapguard.secret import Secret

__all__ = ["Challenge", "OidcCheck", "PasswordCheck", "SignInService"]


class SignInService(Protocol):
    async def check_password(
        self, username: str, password: Secret, ctx: AuthContext
    ) -> PasswordCheck: ...

    async def check_totp(self, user: str, code: Secret, ctx: AuthContext) -> bool: ...

    async def check_invited_password(
        self,
        username: str,
        password: Secret,
        redeem: Callable[[str], Awaitable[bool]],
        ctx: AuthContext,
    ) -> PasswordCheck:
        """The password step of an invitation: ok only if the password is right,
        the account has no second factor yet, and then `redeem(user)` (which
        spends the invitation) is true."""
        ...

    async def check_oidc(self, token: VerifiedToken, ctx: AuthContext) -> OidcCheck:
        """A verified ID token: whose account, and whether it is both factors
        (`full`) or the account's own second factor comes next."""
        ...

    async def check_recovery_code(self, user: str, code: Secret, ctx: AuthContext) -> bool: ...

    async def passkey_options(self, user: str) -> Challenge | None: ...

    async def check_passkey(
        self, user: str, response: bytes, challenge: bytes, ctx: AuthContext
    ) -> bool: ...
