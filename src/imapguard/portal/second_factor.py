"""The second factor a signed-in or half-signed-in session proves: a TOTP code,
a passkey or a recovery code, checked by the auth service (`SignInService`),
never here. Used by the sign-in's second step and by the fresh-factor check.

A form names its method (`method`: `totp`, `passkey`, `recovery`) with the
matching field (`code`, `credential`: the browser's JSON of the assertion,
`recovery`). A passkey's challenge comes from `options` (the auth service
makes it from the account's passkeys); it is kept here for this session and
purpose and handed to the service exactly once. Input that cannot be a
factor (a code that is not six digits, a recovery code that is not one, no or
a spent challenge) fails without a call to the service, as malformed codes
always did: the caller counts it as a failure all the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.datastructures import FormData

from imapguard.auth import recovery
from imapguard.auth.model import AuthContext
from imapguard.auth.passkeys import MAX_RESPONSE_BYTES
from imapguard.portal.challenges import Challenges, Purpose
from imapguard.portal.kit import Kit
from imapguard.portal.kit import field as form_field
from imapguard.portal.ports import SignInService
from imapguard.secret import Secret
from imapguard.state.portal import PortalSession

__all__ = ["METHODS", "Methods", "SecondFactor", "methods_of"]

METHODS = ("totp", "passkey", "recovery")
_CODE = re.compile(r"[0-9]{6}")
# "ABCDE-12345" with a few spaces more: what a person may type.
_MAX_RECOVERY = 32


@dataclass
class SecondFactor:
    service: SignInService
    clock: Callable[[], float]
    challenges: Challenges = field(default_factory=Challenges)

    async def options(self, session: PortalSession, purpose: Purpose) -> str | None:
        """The passkey options (JSON) for this session's account; None if it has no passkey."""
        made = await self.service.passkey_options(session.user)
        if made is None:
            return None
        self.challenges.keep(session.id, purpose, made.challenge, self.clock())
        return made.options

    async def check(
        self, session: PortalSession, purpose: Purpose, form: FormData, ctx: AuthContext
    ) -> tuple[str, bool]:
        """(the method the form named, whether it proved the factor)."""
        user, service = session.user, self.service
        method = form_field(form, "method", 16) or "totp"
        if method == "passkey":
            challenge = self.challenges.take(session.id, purpose, self.clock())
            credential = form_field(form, "credential", MAX_RESPONSE_BYTES)
            if challenge is None or not credential:
                return method, False
            response = credential.encode("utf-8", "replace")
            return method, await service.check_passkey(user, response, challenge, ctx)
        if method == "recovery":
            code = Secret(form_field(form, "recovery", _MAX_RECOVERY))
            if recovery.normalize(code) is None:
                return method, False
            return method, await service.check_recovery_code(user, code, ctx)
        code_text = "".join(form_field(form, "code", 32).split())
        if _CODE.fullmatch(code_text) is None:
            return "totp", False
        return "totp", await service.check_totp(user, Secret(code_text), ctx)


@dataclass(frozen=True)
class Methods:
    """What an account can prove its second factor with (what a page offers)."""

    totp: bool
    passkeys: int
    recovery_codes: int

    @property
    def factors(self) -> int:
        """Second factors proper (recovery codes only stand in for one)."""
        return int(self.totp) + self.passkeys


async def methods_of(kit: Kit, user: str) -> Methods:
    store = kit.store
    has_totp = await kit.call(store.get_totp, user) is not None
    passkeys = await kit.call(store.list_passkeys, user)
    codes = await kit.call(store.count_recovery_codes, user)
    return Methods(has_totp, len(passkeys), codes)
