"""Revocation reaches live sessions: an app password revoked by the CLI (another
process than the gateway, as an admin's shell or the portal would be) ends the
IMAP session that logged in with it within 5 seconds, in the middle of an IDLE,
with a BYE; sessions of the account's other app passwords go on; the revoked
password logs in no more. Real gateway, real Dovecot, Python's imaplib."""

from __future__ import annotations

import json
import secrets
import time

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import close_imap, open_imap
from tests.integration.live_imap import assert_login_refused, lines_until_closed, start_idle

# What the issue promises; the gateway reads the revocation feed once a second.
WITHIN = 5.0


def _app_password(gw: GatewayProcess, user: str, label: str) -> tuple[str, str]:
    created = json.loads(gw.cli("app-password", "create", user, "--label", label, "--json").stdout)
    return created["id"], created["password"]


def test_revoked_app_password_ends_its_idle_session_within_seconds(
    gw: GatewayProcess, dovecot: DovecotServer
) -> None:
    user = f"revoke{secrets.token_hex(3)}"
    dovecot.add_user(user, secrets.token_urlsafe(12))
    phone_id, phone = _app_password(gw, user, "phone")
    _, laptop = _app_password(gw, user, "laptop")
    src = source_address(40)
    idler = open_imap(gw, "implicit", src, timeout=15)
    other = open_imap(gw, "starttls", src, timeout=15)
    try:
        start_idle(idler, user, phone)
        other.login(user, laptop)

        revoked_at = time.monotonic()
        out = gw.cli("app-password", "revoke", user, phone_id, "--json")
        assert json.loads(out.stdout) == {"id": phone_id, "revoked": True}

        lines = lines_until_closed(idler)
        ended_after = time.monotonic() - revoked_at
        assert lines[-1].startswith(b"* BYE [ALERT]"), lines
        assert ended_after < WITHIN, ended_after

        # The laptop's session is untouched.
        assert other.noop()[0] == "OK"
    finally:
        close_imap(idler)
        close_imap(other)

    # The revoked password logs in no more.
    assert_login_refused(gw, src, user, phone)

    revoked = [e for e in gw.events("revoked") if e.get("user") == user]
    assert [e["credential"] for e in revoked] == [f"app-password:{phone_id}"]
