"""OAuth bearer tokens: RFC 7628 / XOAUTH2 parsing, and the token rules of
`TokenVerifier` against a fake issuer (httpx.MockTransport, keys made here).

Attack-named tests: alg none, HS256 signed with the public key, kid path
traversal, a token for another user, a flood of unknown kids, a retired key."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from imapguard.auth.oauth import (
    CLIENT_ERROR_ACK,
    MAX_TOKEN_BYTES,
    BearerCredentials,
    IssuerUnavailable,
    OAuthConfig,
    SaslMalformed,
    TokenRejected,
    TokenVerifier,
    VerifiedToken,
    discovery_url,
    error_challenge,
    parse_oauthbearer,
    parse_xoauth2,
)
from imapguard.errors import ConfigError
from imapguard.secret import Secret

ISSUER = "https://idp.example.org/realms/mail"
DISCOVERY = ISSUER + "/.well-known/openid-configuration"
JWKS_URI = ISSUER + "/protocol/openid-connect/certs"
AUDIENCE = "imap"
NOW = 1_800_000_000.0
DROP = object()  # a claim value that means "leave the claim out"


# -- keys, tokens and a fake issuer ------------------------------------------------------


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any
    jwk_alg: bool = True  # publish "alg" in the JWK

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        data.update(kid=self.kid, use="sig")
        if self.jwk_alg:
            data["alg"] = self.alg
        return data

    def public_pem(self) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem


RSA_A = SigningKey("rsa-a", "RS256", rsa.generate_private_key(65537, 2048))
RSA_B = SigningKey("rsa-b", "RS256", rsa.generate_private_key(65537, 2048))
RSA_NO_ALG = SigningKey("rsa-any", "PS256", rsa.generate_private_key(65537, 2048), jwk_alg=False)
EC_KEY = SigningKey("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1()))
ED_KEY = SigningKey("ed-1", "EdDSA", ed25519.Ed25519PrivateKey.generate())


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": NOW + 300,
        "iat": NOW,
        "sub": "u-1234",
        "jti": "jti-1",
        "client_id": "thunderbird",
        "email": "Alice@Example.org",
        "email_verified": True,
        "amr": ["pwd", "mfa"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


def token(
    key: SigningKey = RSA_A,
    *,
    alg: str | None = None,
    header: dict[str, Any] | None = None,
    **overrides: Any,
) -> Secret:
    headers: dict[str, Any] = {"kid": key.kid, **(header or {})}
    headers = {k: v for k, v in headers.items() if v is not DROP}
    text = jwt.encode(claims(**overrides), key.private, algorithm=alg or key.alg, headers=headers)
    return Secret(text)


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> Secret:
    """A JWS put together by hand (for what PyJWT refuses to make)."""
    return Secret(
        b64url(json.dumps(header).encode())
        + b"."
        + b64url(json.dumps(payload).encode())
        + b"."
        + b64url(signature)
    )


@dataclass
class FakeIdP:
    keys: list[SigningKey]
    discovery: dict[str, Any] = field(
        default_factory=lambda: {"issuer": ISSUER, "jwks_uri": JWKS_URI}
    )
    extra_jwks: list[Any] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    down: bool = False
    gate: asyncio.Event | None = None
    answers: dict[str, Callable[[httpx.Request], httpx.Response]] = field(default_factory=dict)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.requests.append(url)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if url in self.answers:
            return self.answers[url](request)
        if url == DISCOVERY:
            return httpx.Response(200, json=self.discovery)
        if url == JWKS_URI:
            return httpx.Response(
                200, json={"keys": [k.jwk() for k in self.keys] + self.extra_jwks}
            )
        return httpx.Response(404)

    def count(self, url: str = JWKS_URI) -> int:
        return self.requests.count(url)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def make_verifier(
    idp: FakeIdP, clock: Clock | None = None, **overrides: Any
) -> AsyncIterator[TokenVerifier]:
    options: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, **overrides}
    async with TokenVerifier(
        OAuthConfig(**options),
        clock=clock or Clock(),
        transport=httpx.MockTransport(idp.handle),
    ) as verifier:
        yield verifier


async def rejected(verifier: TokenVerifier, tok: Secret, authzid: str | None = None) -> str:
    """The reason `tok` is refused; the reason must never quote the token."""
    with pytest.raises(TokenRejected) as info:
        await verifier.verify(tok, authzid)
    text = tok.reveal().decode(errors="replace")
    for part in text.split("."):
        if len(part) > 8:
            assert part not in str(info.value)
    return info.value.reason


async def verified(
    verifier: TokenVerifier, tok: Secret, authzid: str | None = None
) -> VerifiedToken:
    return await verifier.verify(tok, authzid)


# -- SASL: OAUTHBEARER -----------------------------------------------------------------

JWT_TEXT = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_~+/=="


def test_oauthbearer_with_authzid_host_and_port() -> None:
    payload = (
        b"n,a=alice@example.org,\x01host=imap.example.org\x01port=993\x01auth=Bearer "
        + JWT_TEXT
        + b"\x01\x01"
    )
    creds = parse_oauthbearer(payload)
    assert creds.authzid == b"alice@example.org"
    assert creds.authorization_identity == "alice@example.org"
    assert creds.token.reveal() == JWT_TEXT
    assert not creds.discovery


def test_oauthbearer_without_authzid_and_lower_case_scheme() -> None:
    creds = parse_oauthbearer(b"n,,\x01auth=bearer   " + JWT_TEXT + b"\x01\x01")
    assert creds.authzid == b""
    assert creds.authorization_identity is None
    assert creds.token.reveal() == JWT_TEXT


def test_oauthbearer_authzid_escapes() -> None:
    creds = parse_oauthbearer(b"y,a=we=2Cird=3dname,\x01auth=Bearer x\x01\x01")
    assert creds.authzid == b"we,ird=name"


def test_oauthbearer_utf8_authzid() -> None:
    creds = parse_oauthbearer("n,a=jürgen@example.org,\x01auth=Bearer x\x01\x01".encode())
    assert creds.authorization_identity == "jürgen@example.org"


def test_oauthbearer_unknown_keys_are_ignored() -> None:
    creds = parse_oauthbearer(b"n,,\x01xtra=whatever you like\x01auth=Bearer x\x01\x01")
    assert creds.token.reveal() == b"x"


def test_oauthbearer_empty_auth_is_a_discovery_request() -> None:
    creds = parse_oauthbearer(b"n,,\x01auth=\x01\x01")
    assert creds.discovery


def test_oauthbearer_token_of_exactly_the_limit() -> None:
    tok = b"a" * MAX_TOKEN_BYTES
    assert parse_oauthbearer(b"n,,\x01auth=Bearer " + tok + b"\x01\x01").token.reveal() == tok


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "GS2 header"),
        (CLIENT_ERROR_ACK, "GS2 header"),
        (b"n,,auth=Bearer x", "no %x01 after the GS2 header"),
        (b"n,,auth=Bearer x\x01\x01", "GS2 header is not"),
        (b"p=tls-unique,,\x01auth=Bearer x\x01\x01", "channel binding"),
        (b"F,n,,\x01auth=Bearer x\x01\x01", "GS2 header"),
        (b"x,,\x01auth=Bearer x\x01\x01", "flag"),
        (b"n,b=alice,\x01auth=Bearer x\x01\x01", "a=authzid"),
        (b"n,a=,\x01auth=Bearer x\x01\x01", "authzid is empty"),
        (b"n,a=al=2Xice,\x01auth=Bearer x\x01\x01", "=2C or =3D"),
        (b"n,a=al=2,\x01auth=Bearer x\x01\x01", "=2C or =3D"),
        (b"n,a=\xff\xfe,\x01auth=Bearer x\x01\x01", "not UTF-8"),
        (b"n,a=al\tice,\x01auth=Bearer x\x01\x01", "control character"),
        (b"n,a=" + b"a" * 256 + b",\x01auth=Bearer x\x01\x01", "longer than 255"),
        (b"n,,\x01auth=Bearer x\x01", "pair without %x01"),
        (b"n,,\x01auth=Bearer x", "no final %x01"),
        (b"n,,\x01\x01", "no auth key"),
        (b"n,,\x01host=h\x01\x01", "no auth key"),
        (b"n,,\x01auth=Bearer x\x01\x01host=h\x01\x01", "after the final"),
        (b"n,,\x01auth=Bearer x\x01auth=Bearer y\x01\x01", "given twice"),
        (b"n,,\x01au th=Bearer x\x01\x01", "key=value"),
        (b"n,,\x01auth\x01\x01", "key=value"),
        (b"n,,\x01=x\x01\x01", "key=value"),
        (b"n,,\x01auth=Bearer x\x00\x01\x01", "forbidden byte"),
        (b"n,,\x01host=\xc3\xa9\x01auth=Bearer x\x01\x01", "forbidden byte"),
        (b"n,,\x01auth=Basic eDp5\x01\x01", "Bearer <token>"),
        (b"n,,\x01auth=Bearer\x01\x01", "Bearer <token>"),
        (b"n,,\x01auth=Bearer \x01\x01", "b64token"),
        # A bidi override would make the authzid display as another account.
        ("n,a=al\u202eice,\x01auth=Bearer x\x01\x01".encode(), "format character"),
        (b"n,,\x01auth=Bearer ab=cd\x01\x01", "b64token"),
        (b"n,,\x01auth=Bearer a b\x01\x01", "b64token"),
        (b"n,,\x01auth=Bearer " + b"a" * (MAX_TOKEN_BYTES + 1) + b"\x01\x01", "longer than"),
        (b"n,,\x01auth=Bearer " + b"a" * 20_000 + b"\x01\x01", "response longer than"),
    ],
)
def test_oauthbearer_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(SaslMalformed) as info:
        parse_oauthbearer(payload)
    assert reason in info.value.reason


def test_malformed_token_is_never_quoted() -> None:
    for payload in (
        b"n,,\x01auth=Bearer sEcReTtOkEn$\x01\x01",
        b"n,,\x01auth=Token sEcReTtOkEn\x01\x01",
        b"n,,\x01auth=Bearer sEcReTtOkEn\x00\x01\x01",
    ):
        with pytest.raises(SaslMalformed) as info:
            parse_oauthbearer(payload)
        assert "sEcReT" not in str(info.value)
        assert "sEcReT" not in repr(info.value)


def test_credentials_do_not_show_the_token() -> None:
    creds = parse_oauthbearer(b"n,,\x01auth=Bearer sEcReTtOkEn\x01\x01")
    assert "sEcReT" not in repr(creds)
    assert "sEcReT" not in f"{creds}"


# -- SASL: XOAUTH2 ----------------------------------------------------------------------


def test_xoauth2() -> None:
    creds = parse_xoauth2(b"user=alice@example.org\x01auth=Bearer " + JWT_TEXT + b"\x01\x01")
    assert creds == BearerCredentials(b"alice@example.org", Secret(JWT_TEXT))
    assert creds.authorization_identity == "alice@example.org"


def test_xoauth2_utf8_user() -> None:
    creds = parse_xoauth2("user=jürgen@example.org\x01auth=Bearer x\x01\x01".encode())
    assert creds.authorization_identity == "jürgen@example.org"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "no final"),
        (b"auth=Bearer x\x01\x01", "no user"),
        (b"user=alice\x01\x01", "no auth"),
        (b"user=\x01auth=Bearer x\x01\x01", "user is empty"),
        (b"user=a\xffb\x01auth=Bearer x\x01\x01", "not UTF-8"),
        (b"user=alice\x01auth=\x01\x01", "Bearer <token>"),
        (b"user=alice\x01auth=Bearer x\x01", "pair without"),
        (b"n,,\x01user=alice\x01auth=Bearer x\x01\x01", "key=value"),
    ],
)
def test_xoauth2_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(SaslMalformed) as info:
        parse_xoauth2(payload)
    assert reason in info.value.reason


# -- SASL: properties -------------------------------------------------------------------

_PIECES = [
    b"n,", b"y,", b"p=x,", b"F,", b"a=", b"=2C", b"=3d", b"=", b",", b"\x01", b"\x01\x01",
    b"auth=", b"Bearer ", b"bearer", b"user=", b"host=h", b"port=1", b"tok.en", b"==",
    b"\xff", b"\xc3\xa9", b" ", b"\x00", b"abc", b"\t", b"a" * 40,
]  # fmt: skip
_FUZZ = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from(_PIECES), max_size=24).map(b"".join),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_FUZZ)
def test_parsers_raise_only_sasl_malformed(payload: bytes) -> None:
    for parse in (parse_oauthbearer, parse_xoauth2):
        try:
            creds = parse(payload)
        except SaslMalformed:
            continue
        assert isinstance(creds.token, Secret)
        creds.authzid.decode("utf-8")  # always valid UTF-8


# Any name imapguard.text calls safe to show (others are refused: test above).
_AUTHZID = st.text(
    st.one_of(
        st.just(" "),
        st.characters(
            min_codepoint=0x21,
            blacklist_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zs", "Zl", "Zp"),
        ),
    ),
    min_size=1,
    max_size=40,
).filter(lambda s: len(s.encode()) <= 255)
_B64TOKEN = st.from_regex(r"[A-Za-z0-9\-._~+/]{1,200}={0,2}", fullmatch=True)


@settings(max_examples=200)
@given(_AUTHZID, _B64TOKEN)
def test_oauthbearer_round_trip(authzid: str, tok: str) -> None:
    escaped = authzid.replace("=", "=3D").replace(",", "=2C").encode()
    payload = b"n,a=" + escaped + b",\x01auth=Bearer " + tok.encode() + b"\x01\x01"
    creds = parse_oauthbearer(payload)
    assert creds.authorization_identity == authzid
    assert creds.token.reveal() == tok.encode()


# -- error challenge --------------------------------------------------------------------


def test_error_challenge_oauthbearer() -> None:
    body = json.loads(error_challenge(discovery_url(ISSUER + "/"), "openid email"))
    assert body == {
        "status": "invalid_token",
        "scope": "openid email",
        "openid-configuration": DISCOVERY,
    }


def test_error_challenge_xoauth2_has_gmail_shape() -> None:
    body = json.loads(error_challenge(DISCOVERY, "https://mail.google.com/", "XOAUTH2"))
    assert body == {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"algorithms": ("RS256", "HS256")}, "oauth.algorithms"),
        ({"algorithms": ("none",)}, "oauth.algorithms"),
        ({"algorithms": ("ES256K",)}, "oauth.algorithms"),
        ({"algorithms": ()}, "oauth.algorithms"),
        ({"issuer": "http://idp.example.org"}, "oauth.issuer"),
        ({"issuer": "https://idp.example.org/?realm=mail"}, "oauth.issuer"),
        ({"audience": ""}, "oauth.audience"),
        ({"username_claim": ""}, "oauth.username_claim"),
        (
            {"username_claim": "preferred_username", "trust_unverified_email": True},
            "oauth.trust_unverified_email",
        ),
        ({"trust_unverified_email": "yes"}, "oauth.trust_unverified_email"),
        ({"require_amr": ("",)}, "oauth.require_amr"),
        ({"leeway": -1.0}, "oauth.leeway"),
        ({"jwks_cache_seconds": 0.0}, "oauth.jwks_cache_seconds"),
        ({"min_refresh_interval": -1.0}, "oauth.min_refresh_interval"),
        ({"http_timeout": 0.0}, "oauth.http_timeout"),
        # One set of bounds for the file and the verifier: the stricter one.
        ({"jwks_cache_seconds": 5.0}, "oauth.jwks_cache_seconds"),
        ({"min_refresh_interval": 0.0}, "oauth.min_refresh_interval"),
        ({"http_timeout": 61.0}, "oauth.http_timeout"),
        ({"leeway": 301.0}, "oauth.leeway"),
    ],
)
def test_settings_refuse(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        OAuthConfig.checked({"issuer": ISSUER, "audience": AUDIENCE, **overrides})
    assert key in [k for k, _ in info.value.problems]


def test_settings_defaults() -> None:
    s = OAuthConfig(issuer=ISSUER, audience=AUDIENCE)
    assert s.username_claim == "email"
    assert s.trust_unverified_email is False
    assert not any(a.startswith("HS") or a == "none" for a in s.algorithms)
    assert s.discovery_url == DISCOVERY


def test_missing_ca_file_is_a_config_error(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as info:
        TokenVerifier(
            OAuthConfig(issuer=ISSUER, audience=AUDIENCE, ca_file=str(tmp_path / "none.pem"))
        )
    assert info.value.problems[0][0] == "oauth.ca_file"


# -- verifying: the good path -----------------------------------------------------------


@pytest.mark.asyncio
async def test_valid_token() -> None:
    idp = FakeIdP([RSA_A])
    async with make_verifier(idp, require_amr=("mfa",)) as v:
        result = await v.verify(token(), "ALICE@example.org")
    assert result == VerifiedToken(
        user="alice@example.org",
        amr=("pwd", "mfa"),
        acr=None,
        mfa=True,
        sub="u-1234",
        jti="jti-1",
        client_id="thunderbird",
        kid="rsa-a",
        expires_at=NOW + 300,
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (RSA_A, "RS256"),
        (RSA_NO_ALG, "RS384"),
        (RSA_NO_ALG, "RS512"),
        (RSA_NO_ALG, "PS256"),
        (RSA_NO_ALG, "PS512"),
        (EC_KEY, "ES256"),
        (ED_KEY, "EdDSA"),
    ],
)
async def test_every_default_key_type(key: SigningKey, alg: str) -> None:
    async with make_verifier(FakeIdP([key])) as v:
        assert (await v.verify(token(key, alg=alg), None)).user == "alice@example.org"


@pytest.mark.asyncio
async def test_no_authzid_and_empty_authzid_are_the_same() -> None:
    async with make_verifier(FakeIdP([RSA_A])) as v:
        assert (await v.verify(token(), None)).user == "alice@example.org"
        assert (await v.verify(token(), "")).user == "alice@example.org"


@pytest.mark.asyncio
async def test_audience_in_a_list_and_skew_within_leeway() -> None:
    async with make_verifier(FakeIdP([RSA_A])) as v:
        await v.verify(token(aud=["other", AUDIENCE]), None)
        await v.verify(token(exp=NOW - 29), None)
        await v.verify(token(nbf=NOW + 29, iat=NOW + 29), None)


@pytest.mark.asyncio
async def test_other_username_claim() -> None:
    async with make_verifier(FakeIdP([RSA_A]), username_claim="preferred_username") as v:
        result = await v.verify(token(preferred_username="Bob", email=DROP), "bob")
    assert result.user == "bob"


# -- verifying: the header ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_alg_none_is_refused() -> None:
    idp = FakeIdP([RSA_A])
    async with make_verifier(idp) as v:
        for alg in ("none", "None", "NONE"):
            reason = await rejected(v, unsigned({"alg": alg, "kid": "rsa-a"}, claims()))
            assert "alg none" in reason
    assert idp.requests == []


@pytest.mark.asyncio
async def test_hs256_signed_with_the_public_key_is_refused() -> None:
    """The classic key-confusion attack: the issuer's public key (PEM, as published)
    used as an HMAC secret. It must never reach a verifier."""
    idp = FakeIdP([RSA_A])
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-a"}
    signing_input = (
        b64url(json.dumps(header).encode()) + b"." + b64url(json.dumps(claims()).encode())
    )
    for secret in (RSA_A.public_pem(), json.dumps(RSA_A.jwk()).encode()):
        mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
        forged = Secret(signing_input + b"." + b64url(mac))
        async with make_verifier(idp) as v:
            assert "alg 'HS256' is not allowed" in await rejected(v, forged)
    assert idp.requests == []


@pytest.mark.asyncio
async def test_alg_must_fit_the_key_type() -> None:
    idp = FakeIdP([RSA_A, EC_KEY])
    async with make_verifier(idp) as v:
        # A real ES256 signature, but the header names the RSA key.
        reason = await rejected(v, token(EC_KEY, header={"kid": "rsa-a"}))
        assert "does not fit key rsa-a" in reason
        # An RSA signature claiming the EC key.
        reason = await rejected(v, token(RSA_A, header={"kid": "ec-1"}))
        assert "does not fit key ec-1" in reason


@pytest.mark.asyncio
async def test_alg_must_match_the_jwk_alg() -> None:
    async with make_verifier(FakeIdP([RSA_A])) as v:  # the JWK says RS256
        assert "which is for 'RS256'" in await rejected(v, token(RSA_A, alg="PS256"))


@pytest.mark.asyncio
async def test_alg_outside_the_settings_is_refused() -> None:
    async with make_verifier(FakeIdP([RSA_A]), algorithms=("ES256",)) as v:
        assert "not allowed" in await rejected(v, token())


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kid", "reason"),
    [
        ("../../etc/passwd", "kid is malformed"),
        ("/etc/passwd", "kid is malformed"),
        ("a" * 129, "kid is malformed"),
        ("", "kid is malformed"),
        ("k\n", "kid is malformed"),
        ("ключ", "kid is malformed"),
        (DROP, "no kid"),
    ],
)
async def test_kid_path_traversal_and_friends(kid: object, reason: str) -> None:
    idp = FakeIdP([RSA_A])
    async with make_verifier(idp) as v:
        assert reason in await rejected(v, token(header={"kid": kid}))
    assert idp.requests == []  # refused before the kid was used for anything


@pytest.mark.asyncio
async def test_kid_that_is_not_a_string() -> None:
    async with make_verifier(FakeIdP([RSA_A])) as v:
        for kid in (7, None, ["rsa-a"], {"a": 1}):
            tok = unsigned({"alg": "RS256", "kid": kid}, claims(), b"sig")
            assert "kid" in await rejected(v, tok)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("tok", "reason"),
    [
        (Secret(b""), "empty token"),
        (Secret(b"a" * (MAX_TOKEN_BYTES + 1)), "longer than"),
        (Secret(b"a.b.c.d.e"), "JWE"),
        (Secret(b"a.b"), "three segments"),
        (Secret(b"!!!.e30.c2ln"), "not base64url"),
        (Secret(b64url(b"{not json") + b".e30.c2ln"), "header is not JSON"),
        (Secret(b64url(b"[1]") + b".e30.c2ln"), "header is not a JSON object"),
        (Secret(b64url(b'{"kid":"rsa-a"}') + b".e30.c2ln"), "no alg"),
    ],
)
async def test_malformed_tokens(tok: Secret, reason: str) -> None:
    async with make_verifier(FakeIdP([RSA_A])) as v:
        assert reason in await rejected(v, tok)


@pytest.mark.asyncio
async def test_crit_and_b64_headers_are_refused() -> None:
    async with make_verifier(FakeIdP([RSA_A])) as v:
        assert "crit" in await rejected(v, token(header={"crit": ["exp"], "exp": 1}))
        b64_false = unsigned({"alg": "RS256", "kid": "rsa-a", "b64": False}, claims())
        assert "crit" in await rejected(v, b64_false)


@pytest.mark.asyncio
async def test_bad_signatures() -> None:
    async with make_verifier(FakeIdP([RSA_A, RSA_B])) as v:
        good = token().reveal()
        head, _, sig = good.split(b".")
        tampered = Secret(
            head + b"." + b64url(json.dumps(claims(email="mallory@x")).encode()) + b"." + sig
        )
        assert "signature does not verify" in await rejected(v, tampered)
        # Signed by B, claiming A.
        assert "signature does not verify" in await rejected(
            v, token(RSA_B, header={"kid": "rsa-a"})
        )
        assert "signature does not verify" in await rejected(v, Secret(head + b".e30."))


@pytest.mark.asyncio
async def test_weak_rsa_key_is_refused() -> None:
    weak = SigningKey("weak", "RS256", rsa.generate_private_key(65537, 1024))  # noqa: S505
    header = {"alg": "RS256", "kid": "weak"}
    signing_input = (
        b64url(json.dumps(header).encode()) + b"." + b64url(json.dumps(claims()).encode())
    )
    signature = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input, weak.private)
    async with make_verifier(FakeIdP([weak])) as v:
        forged = Secret(signing_input + b"." + b64url(signature))
        assert "too weak" in await rejected(v, forged)


# -- verifying: claims ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "webmail"}, "aud 'webmail' does not name 'imap'"),
        ({"aud": ["webmail", "calendar"]}, "does not name"),
        ({"aud": DROP}, "aud None"),
        ({"aud": 5}, "does not name"),
        ({"iss": "https://evil.example.org"}, "not the configured issuer"),
        ({"iss": ISSUER + "/"}, "not the configured issuer"),
        ({"iss": DROP}, "not the configured issuer"),
        ({"exp": NOW - 31}, "expired 31 s ago"),
        ({"exp": DROP}, "no exp"),
        ({"exp": "tomorrow"}, "exp is not a number"),
        ({"exp": True}, "exp is not a number"),
        ({"exp": math.inf}, "exp is not a finite number"),
        ({"exp": 10**400}, "exp is not a finite number"),
        ({"iat": -math.inf}, "iat is not a finite number"),
        ({"nbf": NOW + 120}, "not valid for another 120 s"),
        ({"nbf": "later"}, "nbf is not a number"),
        ({"iat": NOW + 3600}, "in the future (iat)"),
        ({"email": DROP}, "claim email is missing"),
        ({"email": ["alice@example.org"]}, "claim email is missing or not a string"),
        ({"email": "alice @example.org"}, "not an account name"),
        ({"email": "a" * 256}, "not an account name"),
        ({"email_verified": False}, "email not verified (email_verified is false)"),
        ({"email_verified": DROP}, "email not verified (no email_verified claim)"),
        ({"email_verified": "true"}, "email not verified (email_verified is 'true', not true)"),
        ({"email_verified": 1}, "email not verified (email_verified is 1, not true)"),
        ({"amr": "mfa"}, "amr is not a list of strings"),
        ({"amr": ["pwd", 1]}, "amr is not a list of strings"),
        ({"acr": 2}, "acr is not a string"),
    ],
)
async def test_claim_rules(overrides: dict[str, Any], reason: str) -> None:
    async with make_verifier(FakeIdP([RSA_A])) as v:
        assert reason in await rejected(v, token(**overrides))


@pytest.mark.asyncio
async def test_token_for_another_user_than_the_authzid() -> None:
    async with make_verifier(FakeIdP([RSA_A])) as v:
        reason = await rejected(v, token(), "bob@example.org")
        assert "token is for 'alice@example.org'" in reason
        assert "'bob@example.org'" in reason
        await v.verify(token(), "Alice@EXAMPLE.org")


@pytest.mark.asyncio
async def test_email_verified_true_is_fine() -> None:
    async with make_verifier(FakeIdP([RSA_A])) as v:
        await v.verify(token(email_verified=True), None)


@pytest.mark.asyncio
async def test_noauth_token_with_an_address_the_issuer_never_verified() -> None:
    """nOAuth: at an issuer where users edit their own profile address, a token for
    "Alice@Example.org" proves nothing unless the issuer says it verified it."""
    async with make_verifier(FakeIdP([RSA_A])) as v:
        for claim in (False, DROP, None, "yes"):
            reason = await rejected(v, token(email_verified=claim), "alice@example.org")
            assert reason.startswith("email not verified"), reason


@pytest.mark.asyncio
async def test_trust_unverified_email_accepts_a_missing_claim_never_false() -> None:
    async with make_verifier(FakeIdP([RSA_A]), trust_unverified_email=True) as v:
        assert (await v.verify(token(email_verified=DROP), None)).user == "alice@example.org"
        assert "email_verified is false" in await rejected(v, token(email_verified=False))
    # Another username claim: email_verified says nothing about it.
    async with make_verifier(FakeIdP([RSA_A]), username_claim="preferred_username") as v:
        tok = token(preferred_username="bob", email_verified=False)
        assert (await v.verify(tok, None)).user == "bob"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("require_amr", "require_acr", "amr", "acr", "mfa"),
    [
        ((), (), ["pwd", "mfa"], None, True),
        ((), (), ["pwd", "otp"], None, True),
        ((), (), ["hwk"], None, True),
        ((), (), ["pwd"], None, False),
        ((), (), ["pwd", "kba"], None, False),
        ((), (), DROP, None, False),
        (("mfa",), (), ["pwd", "mfa"], None, True),
        (("mfa",), (), ["pwd", "otp"], None, False),
        (("mfa", "hwk"), (), ["hwk"], None, True),
        ((), ("urn:mfa", "gold"), ["pwd"], "gold", True),
        ((), ("urn:mfa",), ["pwd", "mfa"], "silver", False),
        ((), ("urn:mfa",), ["pwd", "mfa"], DROP, False),
        (("mfa",), ("urn:mfa",), ["mfa"], "urn:mfa", True),
        (("mfa",), ("urn:mfa",), ["pwd"], "urn:mfa", False),
        (("mfa",), ("urn:mfa",), ["mfa"], "bronze", False),
    ],
)
async def test_mfa(
    require_amr: tuple[str, ...], require_acr: tuple[str, ...], amr: Any, acr: Any, mfa: bool
) -> None:
    async with make_verifier(
        FakeIdP([RSA_A]), require_amr=require_amr, require_acr=require_acr
    ) as v:
        result = await v.verify(token(amr=amr, acr=acr if acr is not None else DROP), None)
    assert result.mfa is mfa
    assert result.acr == (None if acr is DROP else acr)


# -- keys: cache, refresh, rotation --------------------------------------------------------


@pytest.mark.asyncio
async def test_keys_are_cached_and_refreshed_when_old() -> None:
    idp, clock = FakeIdP([RSA_A]), Clock()
    async with make_verifier(idp, clock) as v:
        await v.verify(token(), None)
        await v.verify(token(), None)
        assert idp.requests == [DISCOVERY, JWKS_URI]
        clock.now += 3600
        await v.verify(token(exp=NOW + 7200), None)
        assert idp.count() == 2


@pytest.mark.asyncio
async def test_unknown_kid_triggers_one_refresh_then_is_rate_limited() -> None:
    idp, clock = FakeIdP([RSA_A]), Clock()
    async with make_verifier(idp, clock) as v:
        await v.verify(token(), None)
        clock.now += 61
        # A flood of random kids: the first one costs one refresh, the rest none.
        reason = await rejected(v, token(RSA_B, header={"kid": "ghost-1"}))
        assert reason == "kid ghost-1 is not in the issuer's JWKS"
        assert idp.count() == 2
        for n in range(2, 50):
            clock.now += 1
            reason = await rejected(v, token(RSA_B, header={"kid": f"ghost-{n}"}))
            assert "rate-limited" in reason
        assert idp.count() == 2
        await v.verify(token(), None)  # known kids keep working meanwhile
        clock.now += 60
        await rejected(v, token(RSA_B, header={"kid": "ghost-x"}))
        assert idp.count() == 3


@pytest.mark.asyncio
async def test_rotation_new_kid_is_fetched() -> None:
    idp, clock = FakeIdP([RSA_A]), Clock()
    async with make_verifier(idp, clock) as v:
        await v.verify(token(), None)
        idp.keys = [RSA_B, RSA_A]
        clock.now += 61
        assert (await v.verify(token(RSA_B), None)).kid == "rsa-b"
        assert idp.count() == 2
        await v.verify(token(RSA_A), None)
        assert idp.count() == 2


@pytest.mark.asyncio
async def test_removed_kid_is_refused_after_refresh() -> None:
    idp, clock = FakeIdP([RSA_A, RSA_B]), Clock()
    async with make_verifier(idp, clock) as v:
        await v.verify(token(RSA_A), None)
        idp.keys = [RSA_B]
        # Until the cache is refreshed the key it holds is trusted ...
        await v.verify(token(RSA_A), None)
        clock.now += 3600
        # ... and after a refresh that no longer lists it, it is not.
        reason = await rejected(v, token(RSA_A, exp=NOW + 7200))
        assert reason == "kid rsa-a was retired from the issuer's JWKS"
        assert idp.count() == 2
        await v.verify(token(RSA_B, exp=NOW + 7200), None)


@pytest.mark.asyncio
async def test_removed_kid_is_refused_after_a_refresh_for_a_new_kid() -> None:
    idp, clock = FakeIdP([RSA_A]), Clock()
    async with make_verifier(idp, clock) as v:
        await v.verify(token(RSA_A), None)
        idp.keys = [RSA_B]
        clock.now += 61
        await v.verify(token(RSA_B), None)
        assert "retired" in await rejected(v, token(RSA_A))


@pytest.mark.asyncio
async def test_idp_down_with_a_warm_cache() -> None:
    idp, clock = FakeIdP([RSA_A]), Clock()
    async with make_verifier(idp, clock) as v:
        await v.verify(token(), None)
        idp.down = True
        clock.now += 3600
        # The cache is stale and the refresh fails: the keys we hold still work.
        assert (await v.verify(token(exp=NOW + 7200), None)).kid == "rsa-a"
        assert idp.requests[-1] == DISCOVERY
        requests = len(idp.requests)
        await v.verify(token(exp=NOW + 7200), None)
        assert len(idp.requests) == requests  # no retry within the rate limit
        # A kid we do not hold cannot be checked now.
        clock.now += 61
        with pytest.raises(IssuerUnavailable) as info:
            await v.verify(token(RSA_B, exp=NOW + 7200), None)
        assert "ConnectError" in info.value.reason


@pytest.mark.asyncio
async def test_idp_down_with_a_cold_cache() -> None:
    idp, clock = FakeIdP([RSA_A]), Clock()
    idp.down = True
    async with make_verifier(idp, clock) as v:
        with pytest.raises(IssuerUnavailable) as info:
            await v.verify(token(), None)
        assert info.value.reason.startswith(f"discovery document {DISCOVERY}: ConnectError")
        assert len(idp.requests) == 1
        with pytest.raises(IssuerUnavailable):
            await v.verify(token(), None)
        assert len(idp.requests) == 1  # rate-limited: no hammering while it is down
        idp.down = False
        clock.now += 60
        await v.verify(token(exp=NOW + 600), None)


def _answer(status: int, body: bytes) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, content=body)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("url", "answer", "reason"),
    [
        (DISCOVERY, _answer(500, b"oops"), "HTTP 500"),
        (DISCOVERY, _answer(301, b""), "HTTP 301"),
        (DISCOVERY, _answer(200, b"<html>"), "is not JSON"),
        (DISCOVERY, _answer(200, b"[]"), "is not a JSON object"),
        (DISCOVERY, _answer(200, b"[" * 100_000), "is not JSON"),
        (DISCOVERY, _answer(200, b" " * (600 * 1024)), "over 524288 bytes"),
        (
            DISCOVERY,
            _answer(200, json.dumps({"issuer": "https://evil", "jwks_uri": JWKS_URI}).encode()),
            "names issuer 'https://evil'",
        ),
        (DISCOVERY, _answer(200, json.dumps({"issuer": ISSUER}).encode()), "jwks_uri None"),
        (
            DISCOVERY,
            _answer(
                200,
                json.dumps({"issuer": ISSUER, "jwks_uri": "http://idp.example.org/certs"}).encode(),
            ),
            "not an https:// URL",
        ),
        (
            JWKS_URI,
            _answer(404, b""),
            "JWKS https://idp.example.org/realms/mail/protocol/openid-connect/certs: HTTP 404",
        ),
        (JWKS_URI, _answer(200, b"{}"), "no keys list"),
        (JWKS_URI, _answer(200, b'{"keys": []}'), "no usable signing key"),
    ],
)
async def test_issuer_trouble_is_unavailable(
    url: str, answer: Callable[[httpx.Request], httpx.Response], reason: str
) -> None:
    idp = FakeIdP([RSA_A])
    idp.answers[url] = answer
    async with make_verifier(idp) as v:
        with pytest.raises(IssuerUnavailable) as info:
            await v.verify(token(), None)
    assert reason in info.value.reason


@pytest.mark.asyncio
async def test_issuer_that_does_not_answer_in_time() -> None:
    idp = FakeIdP([RSA_A])
    idp.gate = asyncio.Event()  # never set
    async with make_verifier(idp, http_timeout=0.05) as v:
        with pytest.raises(IssuerUnavailable) as info:
            await v.verify(token(), None)
    assert "no answer in 0.05 s" in info.value.reason


@pytest.mark.asyncio
async def test_unusable_jwks_entries_are_skipped() -> None:
    idp = FakeIdP([RSA_A])
    private = RSA_B.jwk() | RSAAlgorithm.to_jwk(RSA_B.private, as_dict=True) | {"kid": "leaked"}
    idp.extra_jwks = [
        "not an object",
        {"kty": "RSA"},  # no kid
        RSA_B.jwk() | {"kid": "../x"},
        RSA_B.jwk() | {"kid": "enc", "use": "enc"},
        RSA_B.jwk() | {"kid": "wrap", "key_ops": ["wrapKey"]},
        private,
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "XYZ", "kid": "alien"},
        RSA_B.jwk() | {"kid": "rsa-a"},  # a second key with a taken kid
    ]
    async with make_verifier(idp) as v:
        await v.verify(token(RSA_A), None)
        for kid in ("enc", "wrap", "leaked", "hmac", "broken", "alien"):
            assert "not in the issuer's JWKS" in await rejected(
                v, token(RSA_B, header={"kid": kid})
            )
        assert "signature does not verify" in await rejected(
            v, token(RSA_B, header={"kid": "rsa-a"})
        )


@pytest.mark.asyncio
async def test_concurrent_verifies_share_one_fetch() -> None:
    idp = FakeIdP([RSA_A])
    idp.gate = asyncio.Event()
    async with make_verifier(idp) as v:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(v.verify(token(jti=f"j{n}"), None)) for n in range(25)]
            for _ in range(10):
                await asyncio.sleep(0)
            assert idp.requests == [DISCOVERY]  # one fetch in flight, 24 waiting
            idp.gate.set()
        assert [t.result().jti for t in tasks] == [f"j{n}" for n in range(25)]
    assert idp.requests == [DISCOVERY, JWKS_URI]


@pytest.mark.asyncio
async def test_concurrent_verifies_share_one_failure() -> None:
    idp = FakeIdP([RSA_A])
    idp.down = True
    idp.gate = asyncio.Event()
    async with make_verifier(idp) as v:

        async def attempt() -> str:
            try:
                await v.verify(token(), None)
            except IssuerUnavailable as exc:
                return exc.reason
            return "verified"

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(attempt()) for _ in range(10)]
            await asyncio.sleep(0)
            idp.gate.set()
        assert all("ConnectError" in t.result() for t in tasks)
    assert idp.requests == [DISCOVERY]


@pytest.mark.asyncio
async def test_a_cancelled_fetch_lets_the_next_caller_fetch() -> None:
    idp = FakeIdP([RSA_A])
    idp.gate = asyncio.Event()
    async with make_verifier(idp) as v:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await v.verify(token(), None)
        idp.gate.set()
        await v.verify(token(), None)


# -- verifying: any input -----------------------------------------------------------------

_TOKEN_FUZZ = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.sampled_from(
            [
                b".",
                b"e30",
                b"eyJhbGciOiJSUzI1NiJ9",
                b"eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS1hIn0",
                b"=",
                b"!",
                b"\xff",
                b"abc",
            ]
        ),
        max_size=12,
    ).map(b"".join),
)


def test_any_token_is_verified_or_rejected() -> None:
    """Random tokens raise TokenRejected and nothing else (one loop, one verifier)."""
    with asyncio.Runner() as runner:
        verifier = TokenVerifier(
            OAuthConfig(issuer=ISSUER, audience=AUDIENCE),
            clock=Clock(),
            transport=httpx.MockTransport(FakeIdP([RSA_A]).handle),
        )

        @settings(max_examples=300, deadline=None)
        @given(_TOKEN_FUZZ)
        def check(raw: bytes) -> None:
            with contextlib.suppress(TokenRejected):
                runner.run(verifier.verify(Secret(raw), None))

        try:
            check()
        finally:
            runner.run(verifier.aclose())
