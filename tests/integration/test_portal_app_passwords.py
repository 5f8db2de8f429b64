"""App passwords made in the portal work through the real gateway in front of
real Dovecot, and revoking one in the page ends its live IDLE session with a
BYE within 5 seconds and refuses the next login; the profile downloaded from
the page names 993 with SSL and the same password, once."""

from __future__ import annotations

import plistlib
import re
import time
from collections.abc import Iterator

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import close_imap, open_imap
from tests.integration.live_imap import assert_login_refused, lines_until_closed, start_idle
from tests.integration.portal_web import csrf, new_user, portal_gateway, signed_in, submit

pytestmark = pytest.mark.dovecot

# What the issue promises; the gateway reads the revocation feed once a second.
WITHIN = 5.0


@pytest.fixture(scope="module")
def portal_gw(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[tuple[GatewayProcess, int]]:
    with portal_gateway(tmp_path_factory.mktemp("gw-portal-ap"), dovecot) as running:
        yield running


def test_an_app_password_made_in_the_page_logs_in_and_its_revocation_ends_idle(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = portal_gw
    user = new_user(gw, dovecot)
    with signed_in(gw, port, user) as web:
        made = submit(web, "/app-passwords", "/app-passwords", {"label": "phone"})
        assert made.status_code == 200, made.text
        found = re.search(r'<output id="new-password"[^>]*>([^<]+)</output>', made.text)
        assert found is not None
        password = found.group(1)
        sealed = re.search(r'name="sealed" value="([^"]+)"', made.text)
        assert sealed is not None

        # The Apple profile from the page: 993 with SSL, the same password; once.
        form = {"csrf": csrf(made), "kind": "apple", "sealed": sealed.group(1)}
        profile = web.post("/app-passwords/setup", data=form)
        assert profile.status_code == 200
        assert profile.headers["content-type"] == "application/x-apple-aspen-config"
        (mail,) = plistlib.loads(profile.content)["PayloadContent"]
        assert mail["IncomingMailServerHostName"] == "localhost"  # portal.mail_host
        assert mail["IncomingMailServerPortNumber"] == 993
        assert mail["IncomingMailServerUseSSL"] is True
        assert mail["IncomingPassword"] == password
        assert mail["IncomingMailServerUsername"] == user.name
        assert web.post("/app-passwords/setup", data=form).status_code == 410

        idler = open_imap(gw, "implicit", source_address(61), timeout=15)
        try:
            start_idle(idler, user.name, password)

            listed = web.get("/app-passwords")
            record = re.search(r'name="id" value="([^"]+)"', listed.text)
            assert record is not None
            revoked_at = time.monotonic()
            done = web.post(
                "/app-passwords/revoke", data={"csrf": csrf(listed), "id": record.group(1)}
            )
            assert done.status_code == 303
            assert done.headers["location"] == "/app-passwords?done=revoked"

            lines = lines_until_closed(idler)
            ended_after = time.monotonic() - revoked_at
            assert lines[-1].startswith(b"* BYE"), lines
            assert ended_after < WITHIN, ended_after
        finally:
            close_imap(idler)

    assert_login_refused(gw, source_address(61), user.name, password)

    text = gw.audit_path.read_text() + gw.log_text()
    assert password not in text
    assert password.replace("-", "") not in text
    portal = [e for e in gw.events("portal") if e.get("user") == user.name]
    assert [e["action"] for e in portal if e["action"].startswith("app_password")] == [
        "app_password_create",
        "app_password_setup",
        "app_password_setup",
        "app_password_revoke",
    ]
    revoked = [e for e in gw.events("revoked") if e.get("user") == user.name]
    assert [e["credential"] for e in revoked] == [f"app-password:{record.group(1)}"]


def test_a_scoped_app_password_works_only_from_its_network(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = portal_gw
    user = new_user(gw, dovecot)
    with signed_in(gw, port, user) as web:
        made = submit(
            web, "/app-passwords", "/app-passwords", {"label": "office", "network": "127.0.1.62/32"}
        )
        assert made.status_code == 200, made.text
        found = re.search(r'<output id="new-password"[^>]*>([^<]+)</output>', made.text)
        assert found is not None
    inside = open_imap(gw, "implicit", source_address(62), timeout=15)
    try:
        assert inside.login(user.name, found.group(1))[0] == "OK"
    finally:
        close_imap(inside)
    assert_login_refused(gw, source_address(63), user.name, found.group(1))
