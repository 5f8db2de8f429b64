"""The OAuth errors, and how a value from a token or an issuer appears in a reason.

ImapguardError
└── OAuthError              .reason: for the audit log, never the token
    ├── SaslMalformed       the SASL response breaks RFC 7628 / XOAUTH2 (BAD)
    ├── TokenRejected       the token does not prove who the user is (NO)
    └── IssuerUnavailable   the issuer's keys cannot be had now (NO [UNAVAILABLE])
"""

from __future__ import annotations

import json
from typing import Any

from imapguard.errors import ImapguardError

__all__ = ["IssuerUnavailable", "OAuthError", "SaslMalformed", "TokenRejected"]


class OAuthError(ImapguardError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SaslMalformed(OAuthError):
    pass


class TokenRejected(OAuthError):
    pass


class IssuerUnavailable(OAuthError):
    pass


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """`data` as a JSON object, or TokenRejected naming `what` it should have been."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise TokenRejected(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenRejected(f"{what} is not a JSON object")
    return value


def show(value: object) -> str:
    """A value from a token or an issuer, bounded for a log line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
