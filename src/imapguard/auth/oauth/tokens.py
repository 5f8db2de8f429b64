"""The token half: does a JWT access token (RFC 9068) prove who the user is?

`TokenVerifier.verify()` checks, in this order (each failure is a
`TokenRejected` whose reason names the rule and never contains the token):

1. At most `MAX_TOKEN_BYTES`, a compact JWS (three segments: JWE is refused).
2. Header: `alg` in `[oauth] algorithms` (never `none` or `HS*`: the
   configuration refuses those); no `crit`/`b64` (no JWS extension is
   honoured); `kid` present and matching `KID_PATTERN` *before* it is used for
   anything, even a dictionary lookup. `typ` is not checked, although RFC 9068
   §4 asks for `at+jwt`: Entra ID and Keycloak send `JWT` in access tokens, and
   the `aud` check keeps ID tokens (whose audience is the client) out.
3. Key: the issuer's (imapguard.auth.oauth.keys).
4. The header `alg` fits the key (`check_key_fits`), so an "HS256 token signed
   with the issuer's public key" never meets a verifier that would take the key
   as an HMAC secret. RSA keys under 2048 bits are refused.
5. Signature (PyJWT, with exactly that alg and that key object).
6. Claims, with `leeway` seconds of clock skew and an injectable clock: `iss` is
   the configured issuer; `aud` (string or list) contains the audience; `exp` is
   required and in the future; `nbf` and `iat`, when present, not in the future.
7. User: the `username_claim` (a string), lower-cased. With the default claim
   `email`, the token must also say `"email_verified": true`, or it is refused
   ("email not verified"): an address the issuer never checked is no identity.
   Where users may type their own address into their IdP profile (the "nOAuth"
   flaw: Entra ID tenants, Descope's 2023 write-up), anyone could otherwise log in
   as anyone. `trust_unverified_email` accepts a token without the claim, for an
   issuer that never sends it; `false` is refused even then. When the client gave
   a SASL authorization identity (OAUTHBEARER `a=`, XOAUTH2 `user=`), it must name
   the same user, compared case-insensitively.
8. `amr` (RFC 8176) must be a list of strings and `acr` a string, when present.

Second factor (`VerifiedToken.mfa`): true iff the token satisfies the configured
`require_amr` (any one listed value in `amr`) and `require_acr` (`acr` is one of
the listed values); an empty list is no requirement. With neither configured,
`mfa` is true when `amr` holds one of `MFA_AMR_VALUES`: "mfa" says so outright,
"otp" and "sms" are one-time codes that IdPs ask for as a second step, and
"hwk"/"swk" are proof of a hardware or software key (FIDO2, passkeys), which
IdPs treat as phishing-resistant multi-factor sign-in. "pwd", "pin", "kba" and
the like alone are one factor. The verifier never refuses a token for lacking a
second factor: a valid token without one is a compromise signal of its own, and
the chokepoint decides (and records) what the policy asks for.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from imapguard.auth.oauth.errors import TokenRejected, json_object, show
from imapguard.auth.oauth.keys import KID_PATTERN, Clock, IssuerKeys, check_key_fits
from imapguard.auth.oauth.sasl import MAX_TOKEN_BYTES
from imapguard.config.oauth import OAuthConfig
from imapguard.names import well_formed
from imapguard.secret import Secret

__all__ = ["MFA_AMR_VALUES", "TokenVerifier", "VerifiedToken"]

#: `amr` values (RFC 8176) that show a second factor when no requirement is
#: configured; see the module docstring for the choice.
MFA_AMR_VALUES = ("mfa", "otp", "hwk", "swk", "sms")


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that proved who the user is. `user` is lower case; `mfa` says
    whether it also shows the second factor the settings ask for (see the module
    docstring). `sub`, `jti`, `client_id`, `kid` and `expires_at` are for the
    audit log."""

    user: str
    amr: tuple[str, ...]
    acr: str | None
    mfa: bool
    sub: str | None
    jti: str | None
    client_id: str | None
    kid: str
    expires_at: float


class TokenVerifier:
    """Checks bearer tokens for one issuer (see the module docstring for the rules).

    `clock` returns Unix time (for claims and for the key cache, so tests move
    both); `transport` replaces httpx's network transport (tests use
    `httpx.MockTransport`). Close with `aclose()` or use as an async context manager."""

    def __init__(
        self,
        settings: OAuthConfig,
        *,
        clock: Clock = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._keys = IssuerKeys(settings, clock=clock, transport=transport)
        self._jws = jwt.PyJWS(options={"enforce_minimum_key_length": True})

    async def aclose(self) -> None:
        await self._keys.aclose()

    async def __aenter__(self) -> TokenVerifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def verify(self, token: Secret, authzid: str | None) -> VerifiedToken:
        """The user the token proves, or `TokenRejected` / `IssuerUnavailable`.
        `authzid` is the SASL authorization identity, None (or "") when none."""
        raw = token.reveal()
        if not raw:
            raise TokenRejected("empty token (a discovery request)")
        if len(raw) > MAX_TOKEN_BYTES:
            raise TokenRejected(f"token longer than {MAX_TOKEN_BYTES} bytes")
        header = _jws_header(raw)
        alg, kid = self._check_header(header)
        key = await self._keys.key(kid)
        check_key_fits(key, alg)
        try:
            decoded = self._jws.decode_complete(raw, key=key.public_key, algorithms=[alg])
        except jwt.InvalidKeyError:
            raise TokenRejected(f"key {kid} is too weak for {alg}") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected(f"signature does not verify with key {kid}") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise TokenRejected("malformed JWS") from None
        claims = json_object(decoded["payload"], "payload")
        return self._check_claims(claims, authzid, kid)

    def _check_header(self, header: dict[str, Any]) -> tuple[str, str]:
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenRejected("header has no alg")
        if alg.lower() == "none":
            raise TokenRejected("alg none (an unsigned token)")
        if alg not in self.settings.algorithms:
            raise TokenRejected(f"alg {show(alg)} is not allowed")
        if "crit" in header or "b64" in header:
            raise TokenRejected("header has crit/b64: no JWS extension is supported")
        kid = header.get("kid")
        if kid is None:
            raise TokenRejected("header has no kid")
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            raise TokenRejected("kid is malformed")
        return alg, kid

    def _check_claims(self, claims: dict[str, Any], authzid: str | None, kid: str) -> VerifiedToken:
        s = self.settings
        now = self._clock()
        iss = claims.get("iss")
        if iss != s.issuer:
            raise TokenRejected(f"iss {show(iss)} is not the configured issuer")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or s.audience not in audiences:
            raise TokenRejected(f"aud {show(aud)} does not name {s.audience!r}")
        exp = _time_claim(claims, "exp")
        if exp is None:
            raise TokenRejected("no exp claim")
        if exp <= now - s.leeway:
            raise TokenRejected(f"expired {now - exp:.0f} s ago")
        nbf = _time_claim(claims, "nbf")
        if nbf is not None and nbf > now + s.leeway:
            raise TokenRejected(f"not valid for another {nbf - now:.0f} s (nbf)")
        iat = _time_claim(claims, "iat")
        if iat is not None and iat > now + s.leeway:
            raise TokenRejected(f"issued {iat - now:.0f} s in the future (iat)")

        claimed = claims.get(s.username_claim)
        if not isinstance(claimed, str) or not claimed:
            raise TokenRejected(f"claim {s.username_claim} is missing or not a string")
        user = _account_name(claimed)
        if user is None:
            raise TokenRejected(f"claim {s.username_claim} is not an account name")
        if s.username_claim == "email":
            _check_email_verified(claims, trust_missing=s.trust_unverified_email)
        if authzid and authzid.lower() != user:
            raise TokenRejected(f"token is for {user!r}, authorization identity is {show(authzid)}")

        amr_claim = claims.get("amr", [])
        if not isinstance(amr_claim, list) or not all(isinstance(a, str) for a in amr_claim):
            raise TokenRejected("amr is not a list of strings")
        amr = tuple(amr_claim)
        acr = claims.get("acr")
        if acr is not None and not isinstance(acr, str):
            raise TokenRejected("acr is not a string")
        if s.require_amr or s.require_acr:
            mfa = (not s.require_amr or any(a in amr for a in s.require_amr)) and (
                not s.require_acr or acr in s.require_acr
            )
        else:
            mfa = any(a in amr for a in MFA_AMR_VALUES)
        return VerifiedToken(
            user=user,
            amr=amr,
            acr=acr,
            mfa=mfa,
            sub=_optional_str(claims.get("sub")),
            jti=_optional_str(claims.get("jti")),
            client_id=_optional_str(claims.get("client_id", claims.get("azp"))),
            kid=kid,
            expires_at=exp,
        )


def _jws_header(raw: bytes) -> dict[str, Any]:
    segments = raw.split(b".")
    if len(segments) == 5:
        raise TokenRejected("an encrypted token (JWE) is not supported")
    if len(segments) != 3:
        raise TokenRejected("not a JWT (compact JWS has three segments)")
    try:
        header = base64.b64decode(
            segments[0] + b"=" * (-len(segments[0]) % 4), altchars=b"-_", validate=True
        )
    except (binascii.Error, ValueError):
        raise TokenRejected("header is not base64url") from None
    return json_object(header, "header")


def _time_claim(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected(f"{name} is not a number")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float range
        seconds = math.inf
    if not math.isfinite(seconds):
        raise TokenRejected(f"{name} is not a finite number")
    return seconds


def _check_email_verified(claims: dict[str, Any], *, trust_missing: bool) -> None:
    """OpenID Connect Core §5.1: `email_verified` true means the issuer took steps
    to make sure the address belongs to the user. Only JSON true counts."""
    if "email_verified" not in claims:
        if not trust_missing:
            raise TokenRejected("email not verified (no email_verified claim)")
        return
    verified = claims["email_verified"]
    if verified is False:
        raise TokenRejected("email not verified (email_verified is false)")
    if verified is not True:
        raise TokenRejected(f"email not verified (email_verified is {show(verified)}, not true)")


def _account_name(value: str) -> str | None:
    """Lower case, if it is a well-formed account name (imapguard.names)."""
    return value.lower() if well_formed(value) else None


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
