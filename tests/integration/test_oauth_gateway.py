"""OAuth 2.0 bearer tokens through the gateway to a real Dovecot (master mode): tokens
made and signed by a real OpenID provider (oidc-provider on Node.js, over HTTPS with
a test CA), AUTHENTICATE OAUTHBEARER with SASL-IR (raw client) and XOAUTH2 with a
continuation (Python's imaplib), MFA claims required, the RFC 7628 error reply, and
signing-key rotation. Token forgeries are in test_oauth_token_confusion.py.

Source addresses: 127.0.1.130-149.
"""

from __future__ import annotations

import base64
import imaplib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import (
    AUTH_FAILED,
    GatewayIMAP4SSL,
    RawClient,
    close_imap,
    running_gateway,
)
from tests.oidc_provider import OidcProvider

pytestmark = pytest.mark.dovecot

MFA = ["pwd", "mfa"]


def oauth_gateway(base: Path, dovecot: DovecotServer, idp: OidcProvider, **oauth: object) -> Any:
    """A master-mode gateway taking app passwords and both bearer mechanisms."""
    lines = [
        "[oauth]",
        f'issuer = "{idp.issuer}"',
        'audience = "imap"',
        'require_amr = ["mfa"]',
        f'ca_file = "{idp.ca_file}"',
        "min_refresh_interval = 1",
        *(f"{k} = {json.dumps(v)}" for k, v in oauth.items()),
    ]
    return running_gateway(
        base,
        dovecot,
        login="master",
        methods=("app-password", "oauthbearer", "xoauth2"),
        edit=lambda text: text + "\n".join(lines) + "\n",
    )


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    with OidcProvider(tmp_path_factory.mktemp("idp")) as provider:
        yield provider


@pytest.fixture(scope="module")
def gw_oauth(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer, idp: OidcProvider
) -> Iterator[GatewayProcess]:
    with oauth_gateway(tmp_path_factory.mktemp("gw-oauth"), dovecot, idp) as gw:
        yield gw


def oauthbearer(user: str, token: str) -> bytes:
    """RFC 7628 §3.1 client response, base64 for the wire."""
    payload = f"n,a={user},\x01host=localhost\x01port=993\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(payload.encode())


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def bearer_login(gw: GatewayProcess, src: str, user: str, token: str) -> list[bytes]:
    """AUTHENTICATE OAUTHBEARER with SASL-IR; on the error challenge, answer with
    the RFC 7628 dummy response (0x01). Returns the lines up to the tagged one."""
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()  # greeting
        c.send(b"a AUTHENTICATE OAUTHBEARER " + oauthbearer(user, token) + b"\r\n")
        lines = [c.line()]
        if lines[0].startswith(b"+ "):
            c.send(b"AQ==\r\n")
            lines.append(c.line())
        else:
            while not lines[-1].startswith(b"a "):
                lines.append(c.line())
        if lines[-1].startswith(b"a OK"):
            lines += c.command(b"b", b"SELECT INBOX")
        return lines


def test_oauthbearer_with_mfa_logs_in(gw_oauth: GatewayProcess, idp: OidcProvider) -> None:
    token = idp.mint("alice@example.org", amr=MFA)
    lines = bearer_login(gw_oauth, source_address(130), "alice@example.org", token)
    assert lines[0].startswith(b"a OK [CAPABILITY "), lines
    assert lines[-1].startswith(b"b OK"), lines
    event = [e for e in gw_oauth.events("auth") if e.get("src") == source_address(130)][-1]
    assert (event["result"], event["method"], event["factor"]) == ("ok", "oauthbearer", "oauth-mfa")
    assert token not in gw_oauth.audit_path.read_text()
    assert token not in gw_oauth.log_text()


def test_xoauth2_through_imaplib(gw_oauth: GatewayProcess, idp: OidcProvider) -> None:
    token = idp.mint("bob@example.org", amr=MFA)
    conn = GatewayIMAP4SSL(gw_oauth.implicit_port, source_address(131), gw_oauth.client_ssl())
    try:
        typ, _ = conn.authenticate("XOAUTH2", lambda _: xoauth2("bob@example.org", token))
        assert typ == "OK"
        typ, data = conn.select("INBOX")
        assert typ == "OK", data
    finally:
        close_imap(conn)


def test_token_without_mfa_gets_the_rfc7628_error_and_no(
    gw_oauth: GatewayProcess, idp: OidcProvider
) -> None:
    token = idp.mint("alice@example.org", amr=["pwd"])
    lines = bearer_login(gw_oauth, source_address(132), "alice@example.org", token)
    challenge = json.loads(base64.b64decode(lines[0][2:]))
    assert challenge["status"] == "invalid_token"
    assert challenge["openid-configuration"] == idp.issuer + "/.well-known/openid-configuration"
    assert lines[1] == b"a " + AUTH_FAILED
    event = [e for e in gw_oauth.events("auth") if e.get("src") == source_address(132)][-1]
    assert event["result"] == "missing_factor"
    assert "MFA" in event["reason"]


def test_xoauth2_failure_through_imaplib(gw_oauth: GatewayProcess, idp: OidcProvider) -> None:
    token = idp.mint("bob@example.org", amr=["pwd"])
    conn = GatewayIMAP4SSL(gw_oauth.implicit_port, source_address(133), gw_oauth.client_ssl())
    answers: list[bytes] = []

    def respond(challenge: bytes) -> bytes:
        answers.append(challenge)
        return xoauth2("bob@example.org", token) if len(answers) == 1 else b""

    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            conn.authenticate("XOAUTH2", respond)
        assert json.loads(answers[1])["status"] == "401"  # Google's XOAUTH2 error shape
    finally:
        close_imap(conn)


def test_signing_key_rotation(
    tmp_path: Path, dovecot: DovecotServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with (
        OidcProvider(tmp_path_factory.mktemp("idp-rotate")) as idp,
        oauth_gateway(tmp_path, dovecot, idp) as gw,
    ):
        src = source_address(134)
        first_kid = idp.current_kid
        old = idp.mint("carol@example.org", amr=MFA)
        assert bearer_login(gw, src, "carol@example.org", old)[0].startswith(b"a OK")

        # A new current key: its tokens name a kid the gateway has never seen, and
        # are accepted once it has fetched the JWKS again (at most once per
        # min_refresh_interval, here 1 s).
        time.sleep(1.2)
        idp.rotate("ES256")
        new = idp.mint("carol@example.org", amr=MFA)
        assert bearer_login(gw, src, "carol@example.org", new)[0].startswith(b"a OK")

        # The old key is retired by the issuer. The gateway learns it at its next
        # JWKS fetch (here: a third key's first token, past min_refresh_interval),
        # and from then on a token signed with the retired key is refused.
        idp.remove_kid(first_kid)
        time.sleep(1.2)
        idp.rotate("RS256")
        third = idp.mint("carol@example.org", amr=MFA)
        assert bearer_login(gw, src, "carol@example.org", third)[0].startswith(b"a OK")
        time.sleep(1.2)
        lines = bearer_login(gw, src, "carol@example.org", old)
        assert lines[-1] == b"a " + AUTH_FAILED
        event = [e for e in gw.events("auth") if e.get("src") == src][-1]
        assert event["result"] == "invalid"
        assert first_kid in event["reason"] or "kid" in event["reason"]
