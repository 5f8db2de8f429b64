"""May you? The policy's word on a login whose factor is proven, as the auth
result a refusal becomes: written once for the IMAP chokepoint and the portal's
sign-in, so both ask the policy the same question and refuse the same way.

The policy sees the method the factor came through (`proof.policy_method`) and
a client certificate only when it is one of this very account (another
account's certificate is no possession factor for this one). A refusal is
DENIED, or MISSING_FACTOR when the rule requires a stronger factor, with the
rule's name and its alert (shown to an IMAP client after a correct password).
"""

from __future__ import annotations

from typing import Any

from imapguard.auth import proof
from imapguard.auth.model import AuthContext, AuthResult, Outcome
from imapguard.policy.engine import DecisionKind
from imapguard.policy.gate import PolicyGate

__all__ = ["policy_refusal"]


def policy_refusal(
    policy: PolicyGate,
    user: str,
    ctx: AuthContext,
    *,
    method: str,
    factor: str,
    own_certificate: bool,
    shown_method: str | None = None,
) -> AuthResult[Any] | None:
    """None to go on, else the refusal. `method`: the `auth.methods` entry the
    factor came through; `shown_method`: the result's method (default `method`)."""
    decision = policy.decide(
        policy.request(
            user,
            ctx.client.ip,
            method=proof.policy_method(factor, method),
            factor=factor,
            listener=ctx.listener,
            client_cert=own_certificate,
        )
    )
    if decision.kind is DecisionKind.ALLOW:
        return None
    outcome = (
        Outcome.MISSING_FACTOR if decision.kind is DecisionKind.REQUIRE_FACTOR else Outcome.DENIED
    )
    return AuthResult(
        outcome,
        user,
        shown_method or method,
        f"policy: {decision.reason}",
        factor=factor,
        rule=decision.rule,
        alert=decision.alert,
    )
