"""OAuth 2.0 bearer tokens as a factor: RFC 7628 OAUTHBEARER and Google's XOAUTH2.

Two halves. The SASL half is sans-IO: `parse_oauthbearer` and `parse_xoauth2` turn
the client's (base64-decoded) response into `BearerCredentials` or raise
`SaslMalformed`, and nothing else; `error_challenge` is the JSON the server sends
back on failure. The token half, `TokenVerifier.verify()`, is the only code here
that awaits: it checks a JWT access token (RFC 9068) against the issuer's keys.

The failure exchange (RFC 7628 §3.2.2, §3.2.3): a token that does not verify is
answered with `+ <base64 of error_challenge(...)>`; the client must then send a
single %x01 (`CLIENT_ERROR_ACK`), and only then does the gateway send its tagged
`NO`. Anything else from the client at that point is a protocol error (`BAD`).

Token rules, in the order they are checked; each failure is a `TokenRejected`
whose reason names the rule and never contains the token:

1. At most `MAX_TOKEN_BYTES`, a compact JWS (three segments: JWE is refused).
2. Header: `alg` in `OAuthSettings.algorithms` (never `none` or `HS*`: those are
   refused when the settings are made); no `crit`/`b64` (no JWS extension is
   honoured); `kid` present and matching `KID_PATTERN` *before* it is used for
   anything, even a dictionary lookup. `typ` is not checked, although RFC 9068
   §4 asks for `at+jwt`: Entra ID and Keycloak send `JWT` in access tokens, and
   the `aud` check keeps ID tokens (whose audience is the client) out.
3. Key: the issuer's JWKS, found through OpenID discovery at
   `{issuer}/.well-known/openid-configuration` (the document's `issuer` must be
   the configured one; its `jwks_uri` must be https). The key set is cached for
   `jwks_cache_seconds`, and fetched again when it is older, or when a token names
   a kid it does not hold - at most once per `min_refresh_interval`, so a flood of
   invented kids costs the issuer one request a minute, not one per login. A kid
   that a refresh no longer lists is refused (the issuer retired that key).
   Concurrent logins that need a fetch wait for one shared fetch. When a fetch
   fails (network, TLS, HTTP status, bad JSON: `IssuerUnavailable`), the keys
   already held keep working; with none held the login is UNAVAILABLE, not a
   failed login.
4. The header `alg` fits the key: RS*/PS* need an RSA key, ES256/384/512 an EC key
   on P-256/384/521, EdDSA an OKP key, and a JWK that names its `alg` allows only
   that one. So an "HS256 token signed with the issuer's public key" never meets
   a verifier that would take the key as an HMAC secret. RSA keys under 2048 bits
   are refused.
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

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import ssl
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from imapguard.errors import ConfigError, ImapguardError
from imapguard.names import MAX_USER_BYTES, well_formed
from imapguard.secret import Secret
from imapguard.text import UNSAFE

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
    "OAuthError",
    "OAuthSettings",
    "SaslMalformed",
    "TokenRejected",
    "TokenVerifier",
    "VerifiedToken",
    "discovery_url",
    "error_challenge",
    "parse_oauthbearer",
    "parse_xoauth2",
]

log = logging.getLogger("imapguard.auth.oauth")

#: The longest bearer token accepted. Bearer tokens are made to travel in an HTTP
#: `Authorization` header, and common servers cap a header at 8 KiB (nginx
#: `large_client_header_buffers`, Apache `LimitRequestFieldSize` 8190), so a
#: token an IdP issues for real use fits in 8 KiB; large ones are JWTs with many
#: group claims (Entra ID moves groups out of the token past 200 for that
#: reason). 16 KiB is twice that, and bounds the base64, JSON and signature work
#: an unauthenticated client can make us do per attempt.
MAX_TOKEN_BYTES = 16 * 1024
#: The whole SASL response: the token, a GS2 header with an authorization
#: identity (at most 255 bytes, tripled by escaping) and host/port pairs.
MAX_RESPONSE_BYTES = MAX_TOKEN_BYTES + 2048
#: A discovery document or JWKS larger than this is no honest one (real ones are
#: a few KiB); the cap bounds what a hostile or broken issuer makes us buffer.
MAX_DOCUMENT_BYTES = 512 * 1024
#: Checked before a kid is used for anything (log, lookup, refresh decision).
KID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: Asymmetric algorithms only: an HMAC algorithm would need a secret shared with
#: the issuer, and `none` is no signature.
DEFAULT_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "EdDSA",
)
#: alg -> (kty, curves the key may be on; empty: any).
_KEY_FOR_ALG: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "RS256": ("RSA", ()),
    "RS384": ("RSA", ()),
    "RS512": ("RSA", ()),
    "PS256": ("RSA", ()),
    "PS384": ("RSA", ()),
    "PS512": ("RSA", ()),
    "ES256": ("EC", ("P-256",)),
    "ES384": ("EC", ("P-384",)),
    "ES512": ("EC", ("P-521",)),
    "EdDSA": ("OKP", ("Ed25519", "Ed448")),
}
SUPPORTED_ALGORITHMS = tuple(_KEY_FOR_ALG)
#: `amr` values (RFC 8176) that show a second factor when no requirement is
#: configured; see the module docstring for the choice.
MFA_AMR_VALUES = ("mfa", "otp", "hwk", "swk", "sms")
#: The client's only valid answer to an error challenge (RFC 7628 §3.2.3).
CLIENT_ERROR_ACK = b"\x01"
#: Kids remembered as retired, to say so in the audit log (bounded: the issuer
#: decides how many keys it retires).
_RETIRED_KIDS_KEPT = 64
#: JWK members that only a private key has; a JWKS that publishes one is broken.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

PublicKey: TypeAlias = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey
Clock: TypeAlias = Callable[[], float]


# -- errors ------------------------------------------------------------------------
#
#   ImapguardError
#   └── OAuthError              .reason: for the audit log, never the token
#       ├── SaslMalformed       the SASL response breaks RFC 7628 / XOAUTH2 (BAD)
#       ├── TokenRejected       the token does not prove who the user is (NO)
#       └── IssuerUnavailable   the issuer's keys cannot be had now (NO [UNAVAILABLE])


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


# -- SASL --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BearerCredentials:
    """What a client sent: the SASL authorization identity (b"" when it gave none;
    valid UTF-8 without control characters otherwise) and the bearer token.

    An empty token is an OAUTHBEARER discovery request (`auth=` with no value,
    as PostgreSQL's libpq sends to learn the issuer): answer it with
    `error_challenge`; `TokenVerifier.verify` refuses it too."""

    authzid: bytes
    token: Secret

    @property
    def authorization_identity(self) -> str | None:
        return self.authzid.decode("utf-8") if self.authzid else None

    @property
    def discovery(self) -> bool:
        return not self.token


_KVSEP = b"\x01"
_KEY = re.compile(rb"[A-Za-z]+")
_VALUE = re.compile(rb"[\t\n\r\x20-\x7e]*")  # RFC 7628 §3.1: VCHAR / SP / HTAB / CR / LF
_XOAUTH2_VALUE = re.compile(rb"[\t\n\r\x20-\x7e\x80-\xff]*")  # and UTF-8 user names
_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1


def parse_oauthbearer(payload: bytes) -> BearerCredentials:
    """RFC 7628 §3.1 client response:
    `gs2-header %x01 *(key "=" value %x01) %x01`, with `auth=Bearer <b64token>`.

    The GS2 header (RFC 5801 §4) is `n,` or `y,` (no channel binding: OAUTHBEARER
    has no -PLUS variant, so `p=` is refused), an optional `a=<authzid>` with =2C
    and =3D escapes, and `,`. Keys other than `auth` (`host`, `port`, extensions)
    are checked against the grammar and ignored, as §3.1 asks."""
    _check_size(payload)
    header, sep, rest = payload.partition(_KVSEP)
    if not sep:
        raise SaslMalformed("no %x01 after the GS2 header")
    parts = header.split(b",")
    if len(parts) != 3 or parts[2]:
        raise SaslMalformed("GS2 header is not `flag,[a=authzid],`")
    flag, authz, _ = parts
    if flag.startswith(b"p="):
        raise SaslMalformed("channel binding requested; OAUTHBEARER has none")
    if flag not in (b"n", b"y"):
        raise SaslMalformed("GS2 channel-binding flag is not n or y")
    authzid = b""
    if authz:
        if not authz.startswith(b"a="):
            raise SaslMalformed("GS2 header field is not a=authzid")
        authzid = _check_user(_unescape_saslname(authz[2:]), "authzid")
    pairs = _kvpairs(rest, _VALUE)
    if b"auth" not in pairs:
        raise SaslMalformed("no auth key")
    return BearerCredentials(authzid, _bearer_token(pairs[b"auth"], discovery=True))


def parse_xoauth2(payload: bytes) -> BearerCredentials:
    """Google's XOAUTH2: `user=<user> %x01 auth=Bearer <token> %x01 %x01`
    (the same key/value list as OAUTHBEARER, without a GS2 header; `user` is
    required and becomes the authorization identity)."""
    _check_size(payload)
    pairs = _kvpairs(payload, _XOAUTH2_VALUE)
    if b"user" not in pairs:
        raise SaslMalformed("no user key")
    if b"auth" not in pairs:
        raise SaslMalformed("no auth key")
    user = _check_user(pairs[b"user"], "user")
    return BearerCredentials(user, _bearer_token(pairs[b"auth"], discovery=False))


def _check_size(payload: bytes) -> None:
    if len(payload) > MAX_RESPONSE_BYTES:
        raise SaslMalformed(f"response longer than {MAX_RESPONSE_BYTES} bytes")


def _kvpairs(data: bytes, value_pattern: re.Pattern[bytes]) -> dict[bytes, bytes]:
    """`*(key "=" value %x01) %x01` -> {key: value}; every key at most once."""
    if not data.endswith(_KVSEP):
        raise SaslMalformed("no final %x01")
    *items, last = data[:-1].split(_KVSEP)
    if last:
        raise SaslMalformed("key/value pair without %x01")
    pairs: dict[bytes, bytes] = {}
    for item in items:
        if not item:
            raise SaslMalformed("data after the final %x01")
        key, eq, value = item.partition(b"=")
        if not eq or not _KEY.fullmatch(key):
            raise SaslMalformed("key/value pair is not key=value")
        if not value_pattern.fullmatch(value):
            raise SaslMalformed(f"value of {key.decode()} has a forbidden byte")
        if key in pairs:
            raise SaslMalformed(f"key {key.decode()} given twice")
        pairs[key] = value
    return pairs


def _unescape_saslname(raw: bytes) -> bytes:
    """RFC 5801 saslname: `=2C` is ",", `=3D` is "=" (ABNF strings: any case)."""
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == ord("="):
            escape = raw[i + 1 : i + 3].upper()
            if escape == b"2C":
                out += b","
            elif escape == b"3D":
                out += b"="
            else:
                raise SaslMalformed("authzid has an = that is not =2C or =3D")
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def _check_user(raw: bytes, what: str) -> bytes:
    """Non-empty, bounded, UTF-8, no control characters (they have no place in an
    account name, and keep the audit log readable)."""
    if not raw:
        raise SaslMalformed(f"{what} is empty")
    if len(raw) > MAX_USER_BYTES:
        raise SaslMalformed(f"{what} longer than {MAX_USER_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslMalformed(f"{what} is not UTF-8") from None
    unsafe = UNSAFE.search(text)
    if unsafe:
        kind = "control" if unicodedata.category(unsafe.group()) == "Cc" else "format"
        raise SaslMalformed(f"{what} has a {kind} character")
    return raw


def _bearer_token(auth: bytes, *, discovery: bool) -> Secret:
    """RFC 6750 §2.1 `"Bearer" 1*SP b64token`; the scheme is case-insensitive
    (RFC 7628 §4). Reasons never quote the value: it is the credential."""
    if not auth and discovery:
        return Secret(b"")
    scheme, space, token = auth.partition(b" ")
    if scheme.lower() != b"bearer" or not space:
        raise SaslMalformed("auth value is not `Bearer <token>`")
    token = token.lstrip(b" ")
    if len(token) > MAX_TOKEN_BYTES:
        raise SaslMalformed(f"token longer than {MAX_TOKEN_BYTES} bytes")
    if not _B64TOKEN.fullmatch(token):
        raise SaslMalformed("token is not an RFC 6750 b64token")
    return Secret(token)


def discovery_url(issuer: str) -> str:
    """OpenID Connect Discovery 1.0 §4: the issuer without a trailing slash, then
    `/.well-known/openid-configuration`."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def error_challenge(
    issuer_config_url: str,
    scope: str,
    mechanism: Literal["OAUTHBEARER", "XOAUTH2"] = "OAUTHBEARER",
) -> bytes:
    """The JSON the server sends, base64-encoded in a `+ ` continuation, when a
    token fails. OAUTHBEARER (RFC 7628 §3.2.2): `status` "invalid_token", the
    `scope` to ask for and the `openid-configuration` URL (`discovery_url(issuer)`)
    where the client finds the issuer. XOAUTH2: the shape Gmail sends, an HTTP
    status, the schemes and the scope. The same challenge for every failure: the
    real reason goes to the audit log only. The client must answer with
    `CLIENT_ERROR_ACK` (a single %x01); then the gateway sends its tagged NO."""
    body: dict[str, str]
    if mechanism == "XOAUTH2":
        body = {"status": "401", "schemes": "Bearer", "scope": scope}
    else:
        body = {
            "status": "invalid_token",
            "scope": scope,
            "openid-configuration": issuer_config_url,
        }
    return json.dumps(body, separators=(",", ":")).encode()


# -- settings ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    """The `[oauth]` section. Durations are seconds. `ca_file` replaces the system
    trust store for the issuer's HTTPS (a private CA); without it the usual
    public CAs are trusted. Invalid values raise `ConfigError` naming the key."""

    issuer: str
    audience: str
    username_claim: str = "email"
    require_amr: tuple[str, ...] = ()
    require_acr: tuple[str, ...] = ()
    leeway: float = 30.0
    jwks_cache_seconds: float = 3600.0
    min_refresh_interval: float = 60.0
    http_timeout: float = 5.0
    ca_file: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    # Accept `email` without `email_verified` (see rule 7 of the module docstring).
    trust_unverified_email: bool = False

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []

        def bad(key: str, message: str) -> None:
            problems.append((f"oauth.{key}", message))

        url = urlsplit(self.issuer)
        if url.scheme != "https" or not url.hostname:
            bad("issuer", "must be an https:// URL")
        elif url.query or url.fragment:
            bad("issuer", "must have no query or fragment (OpenID Connect Discovery §2)")
        if not self.audience:
            bad("audience", "must not be empty")
        if not self.username_claim:
            bad("username_claim", "must not be empty")
        if not isinstance(self.trust_unverified_email, bool):
            bad("trust_unverified_email", "must be true or false")
        elif self.trust_unverified_email and self.username_claim != "email":
            bad("trust_unverified_email", 'applies only to username_claim = "email"')
        for key, values in (("require_amr", self.require_amr), ("require_acr", self.require_acr)):
            if any(not isinstance(v, str) or not v for v in values):
                bad(key, "must be a list of non-empty strings")
        if not 0 <= self.leeway <= 300:
            bad("leeway", "must be between 0 and 300 seconds")
        if not self.jwks_cache_seconds > 0:
            bad("jwks_cache_seconds", "must be positive")
        if not self.min_refresh_interval >= 0:
            bad("min_refresh_interval", "must not be negative")
        if not self.http_timeout > 0:
            bad("http_timeout", "must be positive")
        if not self.algorithms:
            bad("algorithms", "must not be empty")
        for alg in self.algorithms:
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                bad("algorithms", f"{alg} is refused: only asymmetric signatures prove the issuer")
            elif alg not in _KEY_FOR_ALG:
                bad("algorithms", f"{alg} is not one of {', '.join(SUPPORTED_ALGORITHMS)}")
        if problems:
            raise ConfigError(problems)

    @property
    def discovery_url(self) -> str:
        return discovery_url(self.issuer)


# -- verification -----------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    kty: str
    crv: str | None
    alg: str | None
    public_key: PublicKey


@dataclass(slots=True)
class _KeyCache:
    keys: dict[str, _Key] | None = None
    fetched_at: float = 0.0
    #: When the last fetch ended (success or failure), for the rate limit.
    last_attempt: float | None = None
    last_error: str | None = None
    #: Completed fetches; a waiter that sees it change knows someone fetched.
    attempts: int = 0
    retired: dict[str, None] = field(default_factory=dict)


class TokenVerifier:
    """Checks bearer tokens for one issuer (see the module docstring for the rules).

    `clock` returns Unix time (for claims and for the cache, so tests move both);
    `transport` replaces httpx's network transport (tests use `httpx.MockTransport`).
    Close with `aclose()` or use as an async context manager."""

    def __init__(
        self,
        settings: OAuthSettings,
        *,
        clock: Clock = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._cache = _KeyCache()
        self._lock = asyncio.Lock()
        self._jws = jwt.PyJWS(options={"enforce_minimum_key_length": True})
        verify: ssl.SSLContext | bool = True
        if settings.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=settings.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError([("oauth.ca_file", f"cannot load: {exc}")]) from exc
        # trust_env=False: no proxy, netrc or SSL_CERT_FILE from the environment
        # decides whom we trust for keys; redirects are not followed either.
        self._client = httpx.AsyncClient(
            transport=transport,
            verify=verify,
            timeout=settings.http_timeout,
            follow_redirects=False,
            trust_env=False,
            headers={"accept": "application/json"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

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
        key = await self._key(kid)
        _check_key_fits(key, alg)
        try:
            decoded = self._jws.decode_complete(raw, key=key.public_key, algorithms=[alg])
        except jwt.InvalidKeyError:
            raise TokenRejected(f"key {kid} is too weak for {alg}") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected(f"signature does not verify with key {kid}") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise TokenRejected("malformed JWS") from None
        claims = _json_object(decoded["payload"], "payload")
        return self._check_claims(claims, authzid, kid)

    def _check_header(self, header: dict[str, Any]) -> tuple[str, str]:
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenRejected("header has no alg")
        if alg.lower() == "none":
            raise TokenRejected("alg none (an unsigned token)")
        if alg not in self.settings.algorithms:
            raise TokenRejected(f"alg {_show(alg)} is not allowed")
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
            raise TokenRejected(f"iss {_show(iss)} is not the configured issuer")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or s.audience not in audiences:
            raise TokenRejected(f"aud {_show(aud)} does not name {s.audience!r}")
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
            raise TokenRejected(
                f"token is for {user!r}, authorization identity is {_show(authzid)}"
            )

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

    # -- keys ---------------------------------------------------------------------

    def _may_fetch(self, now: float) -> bool:
        last = self._cache.last_attempt
        return last is None or not 0 <= now - last < self.settings.min_refresh_interval

    async def _key(self, kid: str) -> _Key:
        cache = self._cache
        now = self._clock()
        keys = cache.keys
        if keys is not None and 0 <= now - cache.fetched_at < self.settings.jwks_cache_seconds:
            key = keys.get(kid)
            if key is not None:
                return key
        # No keys, stale keys, or an unknown kid: one fetch, shared by everyone
        # who gets here while it runs, and no more often than the rate limit.
        seen = cache.attempts
        fetched = False
        async with self._lock:
            if cache.attempts == seen and self._may_fetch(self._clock()):
                await self._fetch()
                fetched = True
            elif cache.attempts != seen:
                fetched = True
        keys = cache.keys
        if keys is not None and kid in keys:
            return keys[kid]  # a fresh set, or the one we hold while the issuer is away
        if cache.last_error is not None:
            raise IssuerUnavailable(cache.last_error)
        if keys is None:  # not reached: a finished fetch leaves keys or an error
            raise IssuerUnavailable("no JWKS fetched yet")
        if kid in cache.retired:
            raise TokenRejected(f"kid {kid} was retired from the issuer's JWKS")
        if not fetched:
            age = self._clock() - cache.fetched_at
            raise TokenRejected(
                f"kid {kid} is not in the issuer's JWKS (fetched {age:.0f} s ago; "
                f"refetch rate-limited to one per {self.settings.min_refresh_interval:g} s)"
            )
        raise TokenRejected(f"kid {kid} is not in the issuer's JWKS")

    async def _fetch(self) -> None:
        """Discovery, then the JWKS; the outcome lands in the cache."""
        cache = self._cache
        started = self._clock()
        try:
            keys = await self._fetch_keys()
        except IssuerUnavailable as exc:
            cache.last_error = exc.reason
            log.warning("oauth: cannot fetch the JWKS of %s: %s", self.settings.issuer, exc.reason)
        else:
            if cache.keys is not None:
                for kid in cache.keys.keys() - keys.keys():
                    cache.retired[kid] = None
            for kid in keys:
                cache.retired.pop(kid, None)
            while len(cache.retired) > _RETIRED_KIDS_KEPT:
                del cache.retired[next(iter(cache.retired))]
            cache.keys = keys
            cache.fetched_at = started
            cache.last_error = None
            log.info("oauth: JWKS of %s: kids %s", self.settings.issuer, ", ".join(sorted(keys)))
        cache.last_attempt = started
        cache.attempts += 1

    async def _fetch_keys(self) -> dict[str, _Key]:
        s = self.settings
        document = await self._get_json(s.discovery_url, "discovery document")
        if document.get("issuer") != s.issuer:
            raise IssuerUnavailable(
                f"discovery document names issuer {_show(document.get('issuer'))}, not {s.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme != "https":
            raise IssuerUnavailable(f"jwks_uri {_show(jwks_uri)} is not an https:// URL")
        keys = _parse_jwks(await self._get_json(jwks_uri, "JWKS"))
        if not keys:
            raise IssuerUnavailable(f"JWKS at {jwks_uri} has no usable signing key")
        return keys

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        # httpx's timeout bounds each read; this bounds the whole request, so an
        # issuer that drips one byte a second cannot hold a login for minutes.
        try:
            async with (
                asyncio.timeout(self.settings.http_timeout),
                self._client.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise IssuerUnavailable(f"{what} {url}: HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise IssuerUnavailable(f"{what} {url}: over {MAX_DOCUMENT_BYTES} bytes")
        except TimeoutError:
            raise IssuerUnavailable(
                f"{what} {url}: no answer in {self.settings.http_timeout:g} s"
            ) from None
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            raise IssuerUnavailable(f"{what} {url}: {type(exc).__name__}: {exc}") from None
        try:
            return _json_object(bytes(body), what)
        except TokenRejected as exc:
            raise IssuerUnavailable(f"{what} {url}: {exc.reason}") from None


def _parse_jwks(document: dict[str, Any]) -> dict[str, _Key]:
    """The usable signing keys of a JWKS by kid. Skipped: keys for encryption,
    without a well-formed kid, of an unknown type, with private members, or that
    do not parse; of two keys with one kid, the first."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise IssuerUnavailable("JWKS has no keys list")
    keys: dict[str, _Key] = {}
    for jwk in entries:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid) or kid in keys:
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        ops = jwk.get("key_ops")
        if isinstance(ops, list) and "verify" not in ops:
            continue
        if _PRIVATE_MEMBERS & jwk.keys():
            log.warning("oauth: the issuer's JWKS publishes private key %s; ignored", kid)
            continue
        key = _public_key(jwk)
        if key is None:
            continue
        alg, crv = jwk.get("alg"), jwk.get("crv")
        keys[kid] = _Key(
            kid=kid,
            kty=str(jwk["kty"]),
            crv=crv if isinstance(crv, str) else None,
            alg=alg if isinstance(alg, str) else None,
            public_key=key,
        )
    return keys


def _public_key(jwk: dict[str, Any]) -> PublicKey | None:
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            key: object = RSAAlgorithm.from_jwk(jwk)
        elif kty == "EC":
            key = ECAlgorithm.from_jwk(jwk)
        elif kty == "OKP":
            key = OKPAlgorithm.from_jwk(jwk)
        else:
            return None
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    if isinstance(key, RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey):
        return key
    return None


def _check_key_fits(key: _Key, alg: str) -> None:
    kty, curves = _KEY_FOR_ALG[alg]
    if key.kty != kty or (curves and key.crv not in curves):
        raise TokenRejected(f"alg {alg} does not fit key {key.kid} ({key.kty} {key.crv or ''})")
    if key.alg is not None and key.alg != alg:
        raise TokenRejected(f"alg {alg} does not fit key {key.kid}, which is for {_show(key.alg)}")


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
    return _json_object(header, "header")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise TokenRejected(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenRejected(f"{what} is not a JSON object")
    return value


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
        raise TokenRejected(f"email not verified (email_verified is {_show(verified)}, not true)")


def _account_name(value: str) -> str | None:
    """Lower case, if it is a well-formed account name (imapguard.names)."""
    return value.lower() if well_formed(value) else None


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _show(value: object) -> str:
    """A value from a token or an issuer, bounded for a log line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
