"""New devices in the portal, for real: a password-only login from a new device
is refused and shows up on the devices page as waiting; approved there, the
device logs in (from that address); rejected there, it stays out and its
address is blocked."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.live_imap import logs_in
from tests.integration.portal_web import new_user, portal_gateway, signed_in, submit

pytestmark = pytest.mark.dovecot


@pytest.fixture(scope="module")
def portal_gw(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[tuple[GatewayProcess, int]]:
    with portal_gateway(tmp_path_factory.mktemp("gw-portal-dev"), dovecot) as running:
        yield running


def devices(gw: GatewayProcess, user: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(gw.cli("device", "list", user, "--json").stdout)
    return listed


def test_a_pending_device_approved_in_the_page_logs_in(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = portal_gw
    user = new_user(gw, dovecot, "dev")
    assert not logs_in(gw, "127.0.41.1", user.name, user.password)
    (device,) = devices(gw, user.name)
    assert device["status"] == "pending"
    with signed_in(gw, port, user) as web:
        page = web.get("/devices")
        assert f'id="device-{device["id"]}"' in page.text
        assert "127.0.41.1" in page.text
        done = submit(web, "/devices", "/devices/approve", {"id": device["id"]})
        assert done.status_code == 303
        assert done.headers["location"] == "/devices?done=approved"
    (approved,) = devices(gw, user.name)
    assert (approved["status"], approved["trusted"], approved["bound_to"]) == (
        "trusted",
        True,
        "127.0.41.1",
    )
    assert logs_in(gw, "127.0.41.1", user.name, user.password)
    # The approval is for that address only.
    assert not logs_in(gw, "127.0.42.1", user.name, user.password)


def test_a_pending_device_rejected_in_the_page_stays_out_and_is_blocked(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = portal_gw
    user = new_user(gw, dovecot, "rej")
    assert not logs_in(gw, "127.0.43.1", user.name, user.password)
    (device,) = devices(gw, user.name)
    with signed_in(gw, port, user) as web:
        done = submit(web, "/devices", "/devices/reject", {"id": device["id"]})
        assert done.headers["location"] == "/devices?done=rejected"
        assert device["id"] not in re.sub(r"\s+", " ", web.get("/devices").text)
    blocks = json.loads(gw.cli("blocks", "list", "--json").stdout)
    targets = {b.get("target") for b in blocks}
    # Only this account was seen there: blocked for it, and for everyone.
    assert {"source:127.0.43.1", f"account-source:127.0.43.1|{user.name}"} <= targets, blocks
    # Refused by the block even with the password and a right code now.
    assert not logs_in(gw, "127.0.43.1", user.name, user.password + user.otp.now())
