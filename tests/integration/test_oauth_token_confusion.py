"""Attack-named: forged and misdirected bearer tokens through the gateway. Every one
must be refused with the uniform failure, and the audit log must say why:

* a token for another audience, from another issuer (a second real provider whose
  tokens are perfectly valid — for someone else), expired;
* a token whose `nbf` lies in the future, `alg=none`, an HS256 token "signed" with
  the provider's RSA public key as the HMAC secret (the classic key confusion), a
  `kid` with path characters — forged here from the real provider's claims and keys;
* a valid token presented for another user than the SASL authorization identity;
* "nOAuth": a token whose `email` the issuer never verified (`email_verified`
  false or absent), as an IdP issues it for whatever address a user typed into
  their own profile.

Source addresses: 127.0.1.150-169.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import AUTH_FAILED
from tests.integration.test_oauth_gateway import MFA, bearer_login, oauth_gateway
from tests.oidc_provider import OidcProvider

pytestmark = pytest.mark.dovecot


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    with OidcProvider(tmp_path_factory.mktemp("idp-confusion")) as provider:
        yield provider


@pytest.fixture(scope="module")
def gw_strict(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer, idp: OidcProvider
) -> Iterator[GatewayProcess]:
    # No clock leeway, so that a one-second token expires within the test.
    with oauth_gateway(tmp_path_factory.mktemp("gw-confusion"), dovecot, idp, leeway=0) as gw:
        yield gw


def _refused(gw: GatewayProcess, n: int, user: str, token: str) -> str:
    """Present the token from 127.0.1.n; assert the uniform refusal; the audit reason."""
    lines = bearer_login(gw, source_address(n), user, token)
    assert lines[0].startswith(b"+ "), lines  # the RFC 7628 error challenge
    assert lines[-1] == b"a " + AUTH_FAILED, lines
    event = [e for e in gw.events("auth") if e.get("src") == source_address(n)][-1]
    assert event["result"] == "invalid", event
    assert token not in json.dumps(event)
    return str(event["reason"])


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(idp: OidcProvider, user: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a real token of the provider (not its signature)."""
    token = idp.mint(user, amr=MFA)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    return header, claims


def _public_key_pem(idp: OidcProvider, kid: str) -> bytes:
    context = ssl.create_default_context(cafile=idp.ca_file)
    jwks = httpx.get(f"{idp.issuer}/jwks", verify=context).json()
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]
    key = RSAAlgorithm.from_jwk(json.dumps(jwk))
    assert isinstance(key, rsa.RSAPublicKey)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_wrong_audience(gw_strict: GatewayProcess, idp: OidcProvider) -> None:
    token = idp.mint("alice@example.org", amr=MFA, audience="https://other.example.org/api")
    assert "aud" in _refused(gw_strict, 150, "alice@example.org", token).lower()


def test_token_of_another_issuer(
    gw_strict: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with OidcProvider(tmp_path_factory.mktemp("idp-other")) as other:
        token = other.mint("alice@example.org", amr=MFA)
    reason = _refused(gw_strict, 151, "alice@example.org", token)
    assert "iss" in reason.lower() or "kid" in reason.lower()


def test_expired(gw_strict: GatewayProcess, idp: OidcProvider) -> None:
    token = idp.mint("alice@example.org", amr=MFA, ttl=1)
    time.sleep(2.2)
    assert "expired" in _refused(gw_strict, 152, "alice@example.org", token).lower()


def test_not_yet_valid(gw_strict: GatewayProcess, idp: OidcProvider) -> None:
    token = idp.mint("alice@example.org", amr=MFA, nbf=int(time.time()) + 3600)
    assert jwt.decode(token, options={"verify_signature": False})["nbf"] > time.time()
    assert "(nbf)" in _refused(gw_strict, 153, "alice@example.org", token)


def test_alg_none(gw_strict: GatewayProcess, idp: OidcProvider) -> None:
    header, claims = _claims(idp, "alice@example.org")
    token = _b64({**header, "alg": "none"}) + "." + _b64(claims) + "."
    assert "alg" in _refused(gw_strict, 154, "alice@example.org", token).lower()


def test_hs256_signed_with_the_public_key(gw_strict: GatewayProcess, idp: OidcProvider) -> None:
    header, claims = _claims(idp, "alice@example.org")
    pem = _public_key_pem(idp, header["kid"])
    signing = b".".join([_b64({**header, "alg": "HS256"}).encode(), _b64(claims).encode()])
    signature = base64.urlsafe_b64encode(hmac.new(pem, signing, hashlib.sha256).digest())
    token = (signing + b"." + signature.rstrip(b"=")).decode()
    assert "alg" in _refused(gw_strict, 155, "alice@example.org", token).lower()


def test_kid_with_path_characters(gw_strict: GatewayProcess, idp: OidcProvider) -> None:
    header, claims = _claims(idp, "alice@example.org")
    token = _b64({**header, "kid": "../../../etc/passwd"}) + "." + _b64(claims) + ".AAAA"
    assert "kid" in _refused(gw_strict, 156, "alice@example.org", token).lower()


def test_token_for_another_user_than_the_authorization_identity(
    gw_strict: GatewayProcess, idp: OidcProvider
) -> None:
    token = idp.mint("alice@example.org", amr=MFA)
    reason = _refused(gw_strict, 157, "bob@example.org", token)
    assert "bob@example.org" in reason or "authorization" in reason.lower()
    # The same token for its own user is fine: the refusal was about the mismatch.
    assert bearer_login(gw_strict, source_address(158), "alice@example.org", token)[0].startswith(
        b"a OK"
    )


def test_noauth_token_whose_email_the_issuer_never_verified(
    gw_strict: GatewayProcess, idp: OidcProvider
) -> None:
    for n, verified in ((159, None), (160, False)):
        token = idp.mint("alice@example.org", amr=MFA, email_verified=verified)
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims.get("email_verified", "absent") == ("absent" if verified is None else False)
        assert "email not verified" in _refused(gw_strict, n, "alice@example.org", token)
    # The same user, the issuer vouching for the address: in.
    token = idp.mint("alice@example.org", amr=MFA, email_verified=True)
    lines = bearer_login(gw_strict, source_address(161), "alice@example.org", token)
    assert lines[0].startswith(b"a OK"), lines


def test_trust_unverified_email_accepts_no_claim_but_never_false(
    tmp_path: Path, dovecot: DovecotServer, idp: OidcProvider
) -> None:
    """The opt-out for an issuer that never sends email_verified."""
    with oauth_gateway(tmp_path, dovecot, idp, trust_unverified_email=True) as gw:
        token = idp.mint("bob@example.org", amr=MFA, email_verified=None)
        lines = bearer_login(gw, source_address(162), "bob@example.org", token)
        assert lines[0].startswith(b"a OK"), lines
        token = idp.mint("bob@example.org", amr=MFA, email_verified=False)
        assert "email_verified is false" in _refused(gw, 163, "bob@example.org", token)
