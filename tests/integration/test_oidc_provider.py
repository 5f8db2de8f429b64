"""TokenVerifier against a real OpenID provider (oidc-provider on Node.js, HTTPS
with a test CA): discovery, JWKS, signatures made by the provider, MFA claims,
key rotation and retirement, audience, and TLS verification of the issuer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from imapguard.auth.oauth import (
    IssuerUnavailable,
    OAuthConfig,
    TokenRejected,
    TokenVerifier,
    parse_oauthbearer,
    parse_xoauth2,
)
from imapguard.secret import Secret
from tests.oidc_provider import OidcProvider, oidc_provider

__all__ = ["oidc_provider"]


def settings_for(idp: OidcProvider, **overrides: Any) -> OAuthConfig:
    options: dict[str, Any] = {
        "issuer": idp.issuer,
        "audience": "imap",
        "ca_file": idp.ca_file,
        "require_amr": ("mfa",),
        **overrides,
    }
    return OAuthConfig(**options)


class ShiftedClock:
    """Real time plus an offset the test moves (to age the JWKS cache)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest_asyncio.fixture
async def verifier(oidc_provider: OidcProvider) -> AsyncIterator[TokenVerifier]:
    async with TokenVerifier(settings_for(oidc_provider)) as v:
        yield v


@pytest.mark.asyncio
async def test_token_with_mfa(oidc_provider: OidcProvider, verifier: TokenVerifier) -> None:
    token = oidc_provider.mint("Alice@Example.org", amr=["pwd", "mfa"], acr="urn:mfa")
    result = await verifier.verify(Secret(token), "alice@example.org")
    assert result.user == "alice@example.org"
    assert result.mfa is True
    assert result.amr == ("pwd", "mfa")
    assert result.acr == "urn:mfa"
    assert result.kid == oidc_provider.current_kid
    assert result.client_id == "imapguard-tests"
    assert result.jti


@pytest.mark.asyncio
async def test_token_without_mfa(oidc_provider: OidcProvider, verifier: TokenVerifier) -> None:
    result = await verifier.verify(Secret(oidc_provider.mint("bob@example.org", amr=["pwd"])), None)
    assert (result.user, result.mfa) == ("bob@example.org", False)
    result = await verifier.verify(Secret(oidc_provider.mint("bob@example.org")), None)
    assert (result.amr, result.mfa) == ((), False)


@pytest.mark.asyncio
async def test_acr_requirement(oidc_provider: OidcProvider) -> None:
    async with TokenVerifier(
        settings_for(oidc_provider, require_amr=(), require_acr=("urn:mfa",))
    ) as v:
        gold = oidc_provider.mint("carol@example.org", acr="urn:mfa")
        plain = oidc_provider.mint("carol@example.org", acr="urn:pwd")
        assert (await v.verify(Secret(gold), None)).mfa is True
        assert (await v.verify(Secret(plain), None)).mfa is False


@pytest.mark.asyncio
async def test_wrong_audience(oidc_provider: OidcProvider, verifier: TokenVerifier) -> None:
    token = oidc_provider.mint("alice@example.org", amr=["mfa"], audience="webmail")
    with pytest.raises(TokenRejected) as info:
        await verifier.verify(Secret(token), None)
    assert info.value.reason == "aud 'webmail' does not name 'imap'"


@pytest.mark.asyncio
async def test_expired_token(oidc_provider: OidcProvider) -> None:
    clock = ShiftedClock()
    async with TokenVerifier(settings_for(oidc_provider), clock=clock) as v:
        token = Secret(oidc_provider.mint("alice@example.org", amr=["mfa"], ttl=60))
        await v.verify(token, None)
        clock.offset = 60 + 31
        with pytest.raises(TokenRejected) as info:
            await v.verify(token, None)
        assert info.value.reason.startswith("expired")


@pytest.mark.asyncio
async def test_another_user_than_the_authzid(
    oidc_provider: OidcProvider, verifier: TokenVerifier
) -> None:
    token = oidc_provider.mint("alice@example.org", amr=["mfa"])
    with pytest.raises(TokenRejected) as info:
        await verifier.verify(Secret(token), "bob@example.org")
    assert "token is for 'alice@example.org'" in info.value.reason


@pytest.mark.asyncio
async def test_unverified_email(oidc_provider: OidcProvider, verifier: TokenVerifier) -> None:
    token = oidc_provider.mint("eve@example.org", amr=["mfa"], email_verified=False)
    with pytest.raises(TokenRejected, match="email_verified is false"):
        await verifier.verify(Secret(token), None)


@pytest.mark.asyncio
async def test_sasl_round_trip(oidc_provider: OidcProvider, verifier: TokenVerifier) -> None:
    token = oidc_provider.mint("alice@example.org", amr=["pwd", "mfa"]).encode()
    for creds in (
        parse_oauthbearer(b"n,a=alice@example.org,\x01auth=Bearer " + token + b"\x01\x01"),
        parse_xoauth2(b"user=alice@example.org\x01auth=Bearer " + token + b"\x01\x01"),
    ):
        result = await verifier.verify(creds.token, creds.authorization_identity)
        assert result.user == "alice@example.org"


@pytest.mark.asyncio
async def test_issuer_tls_is_verified(oidc_provider: OidcProvider) -> None:
    """Without the test CA the issuer's certificate is not trusted: no keys, no login."""
    async with TokenVerifier(settings_for(oidc_provider, ca_file=None)) as v:
        with pytest.raises(IssuerUnavailable) as info:
            await v.verify(Secret(oidc_provider.mint("alice@example.org")), None)
    assert "CERTIFICATE_VERIFY_FAILED" in info.value.reason


# -- key rotation (a provider of its own: these tests change its keys) --------------------


@pytest.fixture
def rotating_idp(tmp_path: Path) -> Iterator[OidcProvider]:
    with OidcProvider(tmp_path) as idp:
        yield idp


@pytest.mark.asyncio
@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_key_rotation(rotating_idp: OidcProvider, alg: str) -> None:
    idp = rotating_idp
    clock = ShiftedClock()
    async with TokenVerifier(settings_for(idp), clock=clock) as v:
        old_kid = idp.current_kid
        old_token = Secret(idp.mint("alice@example.org", amr=["mfa"], ttl=3 * 3600))
        assert (await v.verify(old_token, None)).kid == old_kid

        # A new current key: its first token names a kid the verifier does not
        # hold, which makes it fetch the JWKS again (once the rate limit allows).
        clock.offset = 61
        new_kid = idp.rotate(alg)
        assert idp.kids() == [new_kid, old_kid]
        new_token = Secret(idp.mint("alice@example.org", amr=["mfa"], ttl=3 * 3600))
        assert (await v.verify(new_token, None)).kid == new_kid
        assert (await v.verify(old_token, None)).kid == old_kid  # still published

        # The old key is retired: once the cache is refreshed, its tokens are refused.
        assert idp.remove_kid(old_kid) == [new_kid]
        clock.offset = 61 + 3600
        with pytest.raises(TokenRejected) as info:
            await v.verify(old_token, None)
        assert info.value.reason == f"kid {old_kid} was retired from the issuer's JWKS"
        assert (await v.verify(new_token, None)).kid == new_kid


@pytest.mark.asyncio
async def test_a_fresh_verifier_refuses_a_removed_kid(rotating_idp: OidcProvider) -> None:
    idp = rotating_idp
    old_kid = idp.current_kid
    old_token = Secret(idp.mint("alice@example.org", amr=["mfa"]))
    idp.rotate()
    idp.remove_kid(old_kid)
    async with TokenVerifier(settings_for(idp)) as v:
        with pytest.raises(TokenRejected) as info:
            await v.verify(old_token, None)
    assert info.value.reason == f"kid {old_kid} is not in the issuer's JWKS"
