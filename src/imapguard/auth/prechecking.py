"""The defense's precheck of a login: who it names, what it presents, whether
its device looks trusted, then (after the pair's turn at the gate, `gate.py`)
blocks, delays and the posture, read through `reads`. Part of the chokepoint
(`chokepoint.Authenticator`), kept apart by job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imapguard.auth.devices import AccountView, device_key
from imapguard.auth.gate import Turn
from imapguard.auth.model import AuthContext, LoginRequest
from imapguard.defense.engine import Attempt, Verdict
from imapguard.errors import StateUnavailable
from imapguard.secret import Secret

if TYPE_CHECKING:
    from imapguard.auth.chokepoint import Authenticator

__all__ = ["precheck"]


async def precheck(
    auth: Authenticator[Any], credentials: LoginRequest, ctx: AuthContext, turn: Turn | None
) -> tuple[Attempt, Verdict | None, AccountView | None]:
    """Reads only (`reads`): blocks, delays, the posture; and the account
    view the factor checks go on with. No verdict: the counter store is
    unreachable and `defense.fail_open` lets the login on without one."""
    assert auth.defense is not None  # noqa: S101 - checked by the caller
    mechanism = credentials.mechanism
    bearer = mechanism in ("OAUTHBEARER", "XOAUTH2")
    secret: Secret | None
    if mechanism == "EXTERNAL":
        user, secret = auth._cert_user(ctx), None
    elif bearer:
        user, secret = None, credentials.secret
    else:
        user, secret = auth.names.canonical(credentials.username), credentials.secret
    trusted, account = False, None
    if user is not None and "password+totp" in auth.methods:
        account = await auth.reads.account(device_key(user, ctx))
        trusted = auth.devices.looks_like(account.device, secret, ctx, auth._wall())
    attempt = auth.defense.attempt(
        ctx.client.ip,
        user,
        secret if secret else None,
        method=mechanism.lower(),
        listener=ctx.listener,
        trusted_device=trusted,
        spray=not bearer,
    )
    try:
        if turn is not None and attempt.user is not None and secret:
            # After the pair's last guess was counted; read in the same hop.
            verdict = await turn.enter(attempt, auth.defense.precheck)
        else:
            verdict = await auth.reads.precheck(auth.defense, attempt)
    except StateUnavailable as exc:
        if not auth.defense.settings.fail_open:
            raise
        auth._fail_open.let_on(ctx.client.ip, user, exc.detail)
        return attempt, None, account
    return attempt, verdict, account
