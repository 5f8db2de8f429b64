"""Proofs that carry no password: an OAuth 2.0 bearer token (OAUTHBEARER,
RFC 7628, or XOAUTH2) and a TLS client certificate (SASL EXTERNAL).

Each check says who the login is and what it proved, or why it proves nothing;
the chokepoint then decides whether that suffices and opens the session with a
master login (there is no password to log in with).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imapguard.auth import oauth, proof
from imapguard.auth.model import Outcome
from imapguard.names import AccountNames
from imapguard.secret import Secret
from imapguard.vocab import Factor

__all__ = ["Proven", "Refused", "bearer", "certificate", "challenge"]


@dataclass(frozen=True)
class Proven:
    user: str
    method: str
    factor: str


@dataclass(frozen=True)
class Refused:
    """Why the login proves nothing (for the audit log only)."""

    outcome: Outcome
    user: str | None
    method: str
    reason: str


async def bearer(
    mechanism: str,
    payload: Secret,
    tokens: oauth.TokenVerifier | None,
    methods: tuple[str, ...],
    names: AccountNames,
) -> Proven | Refused:
    """A bearer token's account and whether its claims show MFA."""
    method = mechanism.lower()
    if tokens is None or method not in methods:
        return Refused(Outcome.INVALID, None, method, f"{mechanism} is not enabled")
    try:
        parse = oauth.parse_oauthbearer if mechanism == "OAUTHBEARER" else oauth.parse_xoauth2
        sasl = parse(payload.reveal())
    except oauth.SaslMalformed as exc:
        return Refused(Outcome.INVALID, None, method, f"malformed {mechanism}: {exc.reason}")
    authzid = None
    if sasl.authzid:
        authzid = names.canonical(sasl.authzid)
        if authzid is None:
            return Refused(Outcome.INVALID, None, method, "malformed authorization identity")
    if sasl.discovery:
        return Refused(Outcome.INVALID, authzid, method, "discovery request (no token)")
    try:
        token = await tokens.verify(sasl.token, authzid)
    except oauth.TokenRejected as exc:
        return Refused(Outcome.INVALID, authzid, method, f"token rejected: {exc.reason}")
    except oauth.IssuerUnavailable as exc:
        return Refused(Outcome.UNAVAILABLE, authzid, method, f"issuer: {exc.reason}")
    user = names.canonical_identity(token.user)
    if user is None:
        return Refused(Outcome.INVALID, None, method, "token names no valid account")
    return Proven(user, method, proof.bearer_factor(token.mfa))


def challenge(mechanism: str, tokens: oauth.TokenVerifier | None, scope: str) -> bytes | None:
    """The RFC 7628 error a failed bearer exchange answers with (where to get a token)."""
    if tokens is None:
        return None
    kind: Any = mechanism
    return oauth.error_challenge(oauth.discovery_url(tokens.settings.issuer), scope, kind)


def certificate(
    cert_user: str | None, authzid: bytes, methods: tuple[str, ...], names: AccountNames
) -> Proven | Refused:
    """The account a verified client certificate names (`cert_user`, already
    under the account-name rule)."""
    method = "client-cert"
    if method not in methods:
        return Refused(Outcome.INVALID, None, method, "EXTERNAL is not enabled")
    if cert_user is None:
        return Refused(
            Outcome.INVALID, None, method, "no verified client certificate naming an account"
        )
    if authzid and names.canonical(authzid) != cert_user:
        return Refused(
            Outcome.INVALID,
            cert_user,
            method,
            "authorization identity differs from the certificate",
        )
    return Proven(cert_user, method, Factor.CLIENT_CERT)
