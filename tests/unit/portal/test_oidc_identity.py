"""An ID token names an account through the rule for identities
(`AccountNames.canonical_identity`), as compose wires it: a verified e-mail at
another domain is not the local account of the same local part."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from imapguard.auth.oauth import OAuthConfig
from imapguard.auth.oauth.relying_party import RelyingParty
from imapguard.names import AccountNames
from imapguard.portal.oidc import OidcSetup
from imapguard.secret import Secret
from tests.unit.portal.support import portal
from tests.unit.portal.test_oidc_attacks import (
    CLIENT_ID,
    CLIENT_SECRET,
    ISSUER,
    REDIRECT,
    Provider,
    _PortalClock,
    _sign_in,
)

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize(
    ("email", "full_sessions"),
    [("alice@elsewhere.example", []), ("alice@example.org", ["alice"])],
)
async def test_oidc_email_at_another_domain_is_not_the_local_account(
    tmp_path: Path, email: str, full_sessions: list[str]
) -> None:
    clock = _PortalClock()
    provider = Provider(clock)
    rp = RelyingParty(
        OAuthConfig(issuer=ISSUER, audience="imap"),
        client_id=CLIENT_ID,
        client_secret=Secret(CLIENT_SECRET),
        redirect_uri=REDIRECT,
        clock=clock,
        transport=httpx.MockTransport(provider.handle),
    )
    names = AccountNames(username_format="local", realms=("example.org",))
    try:
        async with portal(tmp_path, oidc=OidcSetup(rp, names.canonical_identity)) as p:
            clock.clock = p.clock
            await _sign_in(p, provider, email)
            assert [s.user for s in p.store.live() if s.level == "full"] == full_sessions
    finally:
        await rp.aclose()
