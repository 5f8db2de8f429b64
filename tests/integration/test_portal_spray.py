"""A password spray split between the portal and IMAP is one spray: `imapguard
serve` with `[portal]` in front of real Dovecot, one wrong password tried on some
accounts through the portal's /signin form (httpx, like a browser: Origin and the
form's CSRF token) and on other accounts over IMAP (imaplib), every try from an
address of its own, so no per-source or per-account limit is near. Neither
channel alone reaches `spray_accounts`; together they do, and from then on that
password is refused on both channels, at accounts never tried, from addresses
never seen, before Dovecot is asked.

Source network: 127.0.212.0/24.
"""

from __future__ import annotations

import imaplib
import secrets
import ssl
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from imapguard.portal.signin import FAILED
from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.conftest import close_imap, dovecot_lines, open_imap, wait_for
from tests.integration.portal_web import csrf, portal_gateway

pytestmark = pytest.mark.dovecot

# A password is a spray once it failed on this many accounts. The test tries it
# on half as many over IMAP and on the other half at the portal.
SPRAY_ACCOUNTS = 4
DEFENSE = f"""
[defense]
spray_accounts = {SPRAY_ACCOUNTS}
"""
SPRAYING = "password spraying"


def src(n: int) -> str:
    return f"127.0.212.{n}"


def accounts(dovecot: DovecotServer, count: int) -> list[str]:
    """Real Dovecot accounts, each with a password of its own (never the sprayed one)."""
    names = [f"spray{secrets.token_hex(3)}" for _ in range(count)]
    for name in names:
        dovecot.add_user(name, secrets.token_urlsafe(12))
    return names


def imap_try(gw: GatewayProcess, source: str, user: str, password: str) -> None:
    """One IMAP LOGIN from `source`; every one in this test must be refused."""
    conn = open_imap(gw, "implicit", source)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            conn.login(user, password)
    finally:
        close_imap(conn)


def portal_try(gw: GatewayProcess, port: int, source: str, user: str, password: str) -> None:
    """One password sign-in at the portal from a browser on `source`; every one
    in this test must be refused (the one page for every failure)."""
    origin = f"https://localhost:{port}"
    transport = httpx.HTTPTransport(
        verify=ssl.create_default_context(cafile=str(gw.ca_cert)), local_address=source
    )
    with httpx.Client(
        base_url=origin, transport=transport, timeout=30.0, headers={"Origin": origin}
    ) as web:
        form = web.get("/signin")
        assert form.status_code == 200, form.text
        page = web.post(
            "/signin", data={"csrf": csrf(form), "username": user, "password": password}
        )
    assert page.status_code == 200, page.text
    assert FAILED in page.text


def auth_of(gw: GatewayProcess, user: str) -> dict[str, Any]:
    """The one `auth` event of `user` (each account is tried once), once it is written."""
    found: list[dict[str, Any]] = wait_for(
        lambda: [e for e in gw.events("auth") if e.get("user") == user],
        what=f"the auth event of {user}",
    )
    assert len(found) == 1, found
    return found[0]


def fingerprint_alerts(gw: GatewayProcess) -> list[dict[str, Any]]:
    return [e for e in gw.events("spray_alert") if e.get("by") == "fingerprint"]


def fingerprint_blocks(gw: GatewayProcess) -> list[dict[str, Any]]:
    return [e for e in gw.events("defense_block") if e.get("target_kind") == "fingerprint"]


def test_a_password_sprayed_at_the_portal_and_over_imap_is_one_spray(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    sprayed = f"Autumn-{secrets.token_hex(4)}!"
    half = SPRAY_ACCOUNTS // 2
    over_imap, at_portal, fresh = (
        accounts(dovecot, half),
        accounts(dovecot, half),
        accounts(dovecot, 3),
    )
    imap_sources = [src(10 + n) for n in range(half)]
    portal_sources = [src(20 + n) for n in range(half)]
    with portal_gateway(tmp_path / "gw", dovecot, DEFENSE) as (gw, port):
        # IMAP's half: wrong passwords, refused by Dovecot, and no spray yet.
        for source, user in zip(imap_sources, over_imap, strict=True):
            imap_try(gw, source, user, sprayed)
            tried = auth_of(gw, user)
            assert tried["listener"] != "portal", tried
            assert tried["reason"].startswith("wrong password"), tried
        # The portal's half, one by one: the alert waits for the portal's last
        # try. Every try before it was counted and refused by Dovecot, not blocked.
        for source, user in zip(portal_sources, at_portal, strict=True):
            # An alert (or block) is written before the auth event of the try
            # that earned it: none so far, with the last try's event written.
            assert fingerprint_alerts(gw) == [], "a spray before the portal's tries counted"
            assert fingerprint_blocks(gw) == []
            portal_try(gw, port, source, user, sprayed)
            tried = auth_of(gw, user)
            assert tried["listener"] == "portal", tried
            assert tried["src"] == source, tried
            assert tried["reason"].startswith("wrong password"), tried
        # Crossed by the portal's last try: one alert, from that try's session,
        # naming every source of both channels; the password's fingerprint blocked.
        alerts = wait_for(lambda: fingerprint_alerts(gw), what="the spray alert")
        assert len(alerts) == 1, alerts
        alert = alerts[0]
        assert alert["accounts"] == SPRAY_ACCOUNTS, alert
        assert alert["session"] == tried["session"], (alert, tried)
        assert sorted(alert["sources"]) == sorted(imap_sources + portal_sources), alert
        blocks = fingerprint_blocks(gw)
        assert [b["target"] for b in blocks] == [f"fingerprint:{alert['key']}"], blocks
        assert SPRAYING in blocks[0]["reason"], blocks

        # The same password at accounts never tried, from addresses never seen:
        # refused as the spray on both channels.
        imap_try(gw, src(30), fresh[0], sprayed)
        portal_try(gw, port, src(31), fresh[1], sprayed)
        for user, at_the_portal in ((fresh[0], False), (fresh[1], True)):
            refused = auth_of(gw, user)
            assert (refused["listener"] == "portal") is at_the_portal, refused
            assert refused["reason"].startswith("blocked: "), refused
            assert SPRAYING in refused["reason"], refused
        # The control: another wrong password from the same address is a wrong
        # password (the sprayed password is refused, not the address or everyone).
        imap_try(gw, src(30), fresh[2], f"Other-{secrets.token_hex(4)}!")
        assert auth_of(gw, fresh[2])["reason"].startswith("wrong password")
        assert len(fingerprint_alerts(gw)) == 1
        # Dovecot logs every account it was asked about, the last one included;
        # it never heard of the two the spray's block refused.
        for user in (*over_imap, *at_portal, fresh[2]):
            wait_for(partial(dovecot_lines, dovecot, user), what=f"{user} in Dovecot's log")
        assert dovecot_lines(dovecot, fresh[0]) == [], "Dovecot was asked"
        assert dovecot_lines(dovecot, fresh[1]) == [], "Dovecot was asked"
