"""The issuer's signing keys: OpenID discovery, the JWKS, its cache and refetch rule.

The key set is found through OpenID discovery at
`{issuer}/.well-known/openid-configuration` (the document's `issuer` must be the
configured one; its `jwks_uri` must be https). It is cached for
`jwks_cache_seconds`, and fetched again when it is older, or when a token names a
kid it does not hold - at most once per `min_refresh_interval`, so a flood of
invented kids costs the issuer one request a minute, not one per login. A kid
that a refresh no longer lists is refused (the issuer retired that key).
Concurrent logins that need a fetch wait for one shared fetch. When a fetch fails
(network, TLS, HTTP status, bad JSON: `IssuerUnavailable`), the keys already held
keep working; with none held the login is UNAVAILABLE, not a failed login.

A key fits an algorithm only as JOSE pairs them: RS*/PS* need an RSA key,
ES256/384/512 an EC key on P-256/384/521, EdDSA an OKP key, and a JWK that names
its `alg` allows only that one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from imapguard.auth.oauth.errors import IssuerUnavailable, TokenRejected, json_object, show
from imapguard.config.oauth import SUPPORTED_ALGORITHMS, OAuthConfig
from imapguard.errors import ConfigError

__all__ = [
    "KEY_FOR_ALG",
    "KID_PATTERN",
    "MAX_DOCUMENT_BYTES",
    "IssuerKeys",
    "Key",
    "check_key_fits",
    "issuer_client",
]

log = logging.getLogger("imapguard.auth.oauth")

#: A discovery document or JWKS larger than this is no honest one (real ones are
#: a few KiB); the cap bounds what a hostile or broken issuer makes us buffer.
MAX_DOCUMENT_BYTES = 512 * 1024
#: Checked before a kid is used for anything (log, lookup, refresh decision).
KID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: alg -> (kty, curves the key may be on; empty: any).
KEY_FOR_ALG: Mapping[str, tuple[str, tuple[str, ...]]] = {
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
# Every algorithm the configuration may name has its key type here.
assert tuple(KEY_FOR_ALG) == SUPPORTED_ALGORITHMS  # noqa: S101
#: Kids remembered as retired, to say so in the audit log (bounded: the issuer
#: decides how many keys it retires).
_RETIRED_KIDS_KEPT = 64
#: JWK members that only a private key has; a JWKS that publishes one is broken.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

PublicKey: TypeAlias = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey
Clock: TypeAlias = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Key:
    kid: str
    kty: str
    crv: str | None
    alg: str | None
    public_key: PublicKey


@dataclass(slots=True)
class _KeyCache:
    keys: dict[str, Key] | None = None
    fetched_at: float = 0.0
    #: When the last fetch ended (success or failure), for the rate limit.
    last_attempt: float | None = None
    last_error: str | None = None
    #: Completed fetches; a waiter that sees it change knows someone fetched.
    attempts: int = 0
    retired: dict[str, None] = field(default_factory=dict)


def issuer_client(
    settings: OAuthConfig, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The HTTPS client for the issuer's documents and endpoints: `oauth.ca_file`
    (a ConfigError naming it when it does not load) or the system's roots;
    trust_env=False: no proxy, netrc or SSL_CERT_FILE from the environment decides
    whom we trust; redirects are not followed either."""
    verify: ssl.SSLContext | bool = True
    if settings.ca_file is not None:
        try:
            verify = ssl.create_default_context(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([("oauth.ca_file", f"cannot load: {exc}")]) from exc
    return httpx.AsyncClient(
        transport=transport,
        verify=verify,
        timeout=settings.http_timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"accept": "application/json"},
    )


class IssuerKeys:
    """The signing keys of one issuer, fetched over HTTPS and cached (see the
    module docstring). `clock` returns Unix time; `transport` replaces httpx's
    network transport (tests use `httpx.MockTransport`)."""

    def __init__(
        self,
        settings: OAuthConfig,
        *,
        clock: Clock = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._cache = _KeyCache()
        self._lock = asyncio.Lock()
        self._client = issuer_client(settings, transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _may_fetch(self, now: float) -> bool:
        last = self._cache.last_attempt
        return last is None or not 0 <= now - last < self.settings.min_refresh_interval

    async def key(self, kid: str) -> Key:
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

    async def _fetch_keys(self) -> dict[str, Key]:
        s = self.settings
        document = await self._get_json(s.discovery_url, "discovery document")
        if document.get("issuer") != s.issuer:
            raise IssuerUnavailable(
                f"discovery document names issuer {show(document.get('issuer'))}, not {s.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme != "https":
            raise IssuerUnavailable(f"jwks_uri {show(jwks_uri)} is not an https:// URL")
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
            return json_object(bytes(body), what)
        except TokenRejected as exc:
            raise IssuerUnavailable(f"{what} {url}: {exc.reason}") from None


def _parse_jwks(document: dict[str, Any]) -> dict[str, Key]:
    """The usable signing keys of a JWKS by kid. Skipped: keys for encryption,
    without a well-formed kid, of an unknown type, with private members, or that
    do not parse; of two keys with one kid, the first."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise IssuerUnavailable("JWKS has no keys list")
    keys: dict[str, Key] = {}
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
        keys[kid] = Key(
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


def check_key_fits(key: Key, alg: str) -> None:
    kty, curves = KEY_FOR_ALG[alg]
    if key.kty != kty or (curves and key.crv not in curves):
        raise TokenRejected(f"alg {alg} does not fit key {key.kid} ({key.kty} {key.crv or ''})")
    if key.alg is not None and key.alg != alg:
        raise TokenRejected(f"alg {alg} does not fit key {key.kid}, which is for {show(key.alg)}")
