""" "This wasn't me" for real: an app password logs in through the gateway and
idles; its owner finds the sign-in on the portal's recent sign-ins page and
disowns it; the session ends with a BYE within 5 seconds, the app password no
longer works, and the source is blocked: for the account, and (no other account
logged in from it) for everyone."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import close_imap, open_imap, wait_for
from tests.integration.live_imap import (
    assert_login_refused,
    lines_until_closed,
    logs_in,
    start_idle,
)
from tests.integration.portal_web import csrf, new_user, portal_gateway, signed_in

pytestmark = pytest.mark.dovecot

WITHIN = 5.0


@pytest.fixture(scope="module")
def portal_gw(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[tuple[GatewayProcess, int]]:
    with portal_gateway(tmp_path_factory.mktemp("gw-portal-disown"), dovecot) as running:
        yield running


def _history_row(web: httpx.Client, source: str) -> tuple[str, str]:
    """The id of the sign-in from `source` on the recent sign-ins page and the page's
    CSRF token, once the row is there (the history is written behind the login)."""

    def row() -> tuple[str, str] | None:
        page = web.get("/sign-ins")
        found = re.search(
            r'<tr id="sign-in-([0-9a-f]+)">\s*<td>[^<]*</td>\s*<td>' + re.escape(source),
            page.text,
        )
        return (found.group(1), csrf(page)) if found else None

    found: tuple[str, str] = wait_for(row, what="the IMAP sign-in in the history")
    return found


def test_disowning_a_sign_in_ends_its_session_and_blocks_the_source(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = portal_gw
    user = new_user(gw, dovecot, "own")
    app_password = gw.create_app_password(user.name, "stolen")
    thief = source_address(71)
    idler = open_imap(gw, "implicit", thief, timeout=15)
    try:
        start_idle(idler, user.name, app_password)
        with signed_in(gw, port, user) as web:
            sign_in_id, token = _history_row(web, thief)
            disowned_at = time.monotonic()
            done = web.post("/sign-ins/disown", data={"csrf": token, "id": sign_in_id})
            assert done.status_code == 200, done.text
            assert "no longer works" in done.text
            assert f"The address {thief} is blocked." in done.text

            lines = lines_until_closed(idler)
            ended_after = time.monotonic() - disowned_at
            assert lines[-1].startswith(b"* BYE"), lines
            assert ended_after < WITHIN, ended_after
    finally:
        close_imap(idler)

    blocks = json.loads(gw.cli("blocks", "list", "--json").stdout)
    targets = {b.get("target") for b in blocks}
    assert {f"source:{thief}", f"account-source:{thief}|{user.name}"} <= targets, blocks
    assert_login_refused(gw, source_address(72), user.name, app_password)  # revoked: anywhere
    (event,) = [e for e in gw.events("disowned") if e.get("user") == user.name]
    assert (event["sign_in"], event["blocked"]) == (
        sign_in_id,
        f"account-source:{thief}|{user.name} source:{thief}",
    )
    assert event["revoked"].startswith("app-password:")


def test_disowning_a_sign_in_from_a_shared_address_keeps_it_open_for_the_others(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    """The organisation's webmail: a neighbour logged in from its address; the
    owner disowns a sign-in of theirs from there. The neighbour goes on logging
    in from it; the owner's account does not, not even with a new app password."""
    gw, port = portal_gw
    webmail = source_address(73)
    neighbour = new_user(gw, dovecot, "nbr")
    neighbours = gw.create_app_password(neighbour.name, "webmail")
    assert logs_in(gw, webmail, neighbour.name, neighbours)
    user = new_user(gw, dovecot, "own")
    stolen = gw.create_app_password(user.name, "webmail")
    assert logs_in(gw, webmail, user.name, stolen)
    with signed_in(gw, port, user) as web:
        sign_in_id, token = _history_row(web, webmail)
        done = web.post("/sign-ins/disown", data={"csrf": token, "id": sign_in_id})
        assert done.status_code == 200, done.text
        assert f"The address {webmail} is blocked for your account." in done.text

    blocks = json.loads(gw.cli("blocks", "list", "--json").stdout)
    targets = {b.get("target") for b in blocks}
    assert f"account-source:{webmail}|{user.name}" in targets, blocks
    assert f"source:{webmail}" not in targets, blocks
    assert logs_in(gw, webmail, neighbour.name, neighbours)
    fresh = gw.create_app_password(user.name, "new phone")
    assert not logs_in(gw, webmail, user.name, fresh)
    assert logs_in(gw, source_address(74), user.name, fresh)
