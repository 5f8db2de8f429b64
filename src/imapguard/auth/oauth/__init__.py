"""OAuth 2.0 bearer tokens as a factor: RFC 7628 OAUTHBEARER and Google's XOAUTH2.

    sasl      sans-IO: the client's SASL response → `BearerCredentials` or
              `SaslMalformed`; `error_challenge`, the JSON sent back on failure
    tokens    `TokenVerifier.verify()`: a JWT access token (RFC 9068) → the
              account it proves (`VerifiedToken`) or `TokenRejected`
    keys      the issuer's signing keys: discovery, JWKS, cache, refetch rule
    errors    OAuthError → SaslMalformed, TokenRejected, IssuerUnavailable

The verifier takes the `[oauth]` section (imapguard.config.OAuthConfig) as it is.
Only `keys` does I/O (HTTPS to the issuer); the rest is pure.
"""

from imapguard.auth.oauth.errors import IssuerUnavailable, OAuthError, SaslMalformed, TokenRejected
from imapguard.auth.oauth.keys import KID_PATTERN
from imapguard.auth.oauth.sasl import (
    CLIENT_ERROR_ACK,
    MAX_RESPONSE_BYTES,
    MAX_TOKEN_BYTES,
    BearerCredentials,
    error_challenge,
    parse_oauthbearer,
    parse_xoauth2,
)
from imapguard.auth.oauth.tokens import MFA_AMR_VALUES, TokenVerifier, VerifiedToken
from imapguard.config.oauth import (
    DEFAULT_ALGORITHMS,
    SUPPORTED_ALGORITHMS,
    OAuthConfig,
    discovery_url,
)

__all__ = [
    "CLIENT_ERROR_ACK",
    "DEFAULT_ALGORITHMS",
    "KID_PATTERN",
    "MAX_RESPONSE_BYTES",
    "MAX_TOKEN_BYTES",
    "MFA_AMR_VALUES",
    "SUPPORTED_ALGORITHMS",
    "BearerCredentials",
    "IssuerUnavailable",
    "OAuthConfig",
    "OAuthError",
    "SaslMalformed",
    "TokenRejected",
    "TokenVerifier",
    "VerifiedToken",
    "discovery_url",
    "error_challenge",
    "parse_oauthbearer",
    "parse_xoauth2",
]
