"""`imapguard user revoke U` from the CLI (another process than the gateway)
ends every live IMAP session of the account within 5 seconds, IDLE included,
with a BYE; another account's session goes on; the account's app passwords log
in no more. Real gateway, real Dovecot, Python's imaplib."""

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


def test_user_revoke_ends_every_session_of_the_account_within_seconds(
    gw: GatewayProcess, dovecot: DovecotServer
) -> None:
    user = f"gone{secrets.token_hex(3)}"
    bystander = f"stays{secrets.token_hex(3)}"
    for name in (user, bystander):
        dovecot.add_user(name, secrets.token_urlsafe(12))
    phone = gw.create_app_password(user, "phone")
    laptop = gw.create_app_password(user, "laptop")
    theirs = gw.create_app_password(bystander, "phone")
    src = source_address(41)
    idler = open_imap(gw, "implicit", src, timeout=15)
    second = open_imap(gw, "starttls", src, timeout=15)
    other = open_imap(gw, "implicit", src, timeout=15)
    try:
        start_idle(idler, user, phone)
        second.login(user, laptop)
        other.login(bystander, theirs)

        revoked_at = time.monotonic()
        out = gw.cli("user", "revoke", user, "--json")
        assert json.loads(out.stdout) == {"user": user, "revoked": True}

        idle_lines = lines_until_closed(idler)
        ended_after = time.monotonic() - revoked_at
        assert idle_lines[-1].startswith(b"* BYE [ALERT]"), idle_lines
        assert ended_after < WITHIN, ended_after
        second_lines = lines_until_closed(second)
        assert second_lines[-1].startswith(b"* BYE"), second_lines
        assert time.monotonic() - revoked_at < WITHIN + 1

        # The other account's session is untouched.
        assert other.noop()[0] == "OK"
    finally:
        close_imap(idler)
        close_imap(second)
        close_imap(other)

    for password in (phone, laptop):
        assert_login_refused(gw, src, user, password)
    admin = [e for e in gw.events("admin") if e.get("user") == user]
    assert [(e["action"], e["result"]) for e in admin] == [("revoke", "ok")]
