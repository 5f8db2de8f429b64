"""An admin watches a password spray live and lifts the block: `imapguard serve`
with `[portal]` in front of real Dovecot; the admin (a member of the admin
group, signed in with password and TOTP) opens the live events page and reads
its server-sent event stream with httpx while the test sprays one password at
several accounts from one source through the gateway; the spray's failures
arrive in the stream, the defense blocks the source, the admin unblocks it on
the blocks page, and the source logs in again with a valid app password.

Source network: 127.0.211.0/24.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from imapguard.portal.admin_live import MAX_PER_ADMIN, RECHECK
from tests.dovecot import DovecotServer, free_port
from tests.gateway import GatewayProcess
from tests.integration.conftest import AUTH_FAILED, RawClient, running_gateway, wait_for
from tests.integration.portal_web import csrf, signed_in_admin

pytestmark = pytest.mark.dovecot

SPRAYER = "127.0.211.5"
# Two members of the admin group, one per test (a TOTP code signs in once).
ADMINS = (f"admin{secrets.token_hex(3)}", f"admin{secrets.token_hex(3)}")
# The spray is detected at the fourth account; delays stay short.
DEFENSE = """
[defense]
spray_accounts = 4
source_free = 3
delay_base = 0.05
delay_max = 0.2
"""


@pytest.fixture(scope="module")
def admin_gw(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[tuple[GatewayProcess, int]]:
    port = free_port()
    portal = f"""
[portal]
listen = "127.0.0.1:{port}"
url = "https://localhost:{port}"

[groups]
admins = ["{ADMINS[0]}", "{ADMINS[1]}"]
"""
    with running_gateway(
        tmp_path_factory.mktemp("gw-admin"),
        dovecot,
        login="master",
        methods=("app-password",),
        limits="max_preauth_per_source = 50\n",
        edit=lambda text: text + portal + DEFENSE,
    ) as gw:
        wait_for(lambda: gw.accepts(port), 15.0, "the portal's listener")
        yield gw, port


def login(gw: GatewayProcess, src: str, user: str, password: str) -> bytes:
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        answer: bytes = c.command(b"a", f'LOGIN "{user}" "{password}"'.encode())[-1]
    return answer


def read_stream(web: httpx.Client, url: str, users: set[str], seen: list[dict[str, Any]]) -> None:
    """Read the SSE stream until every one of `users` appeared in an `auth` event."""
    with web.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: ") and kind == "auth":
                seen.extend(json.loads(line[len("data: ") :]))
                if users <= {e["user"] for e in seen}:
                    return
            elif line.startswith("data: ") and kind == "end":
                raise AssertionError(f"the stream ended: {line}")


def test_admin_sees_a_spray_live_and_unblocks_its_source(
    admin_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = admin_gw
    victims = [f"victim{secrets.token_hex(3)}" for _ in range(5)]
    for name in victims[:-1]:
        dovecot.users[name] = secrets.token_urlsafe(12)
    dovecot.add_user(victims[-1], secrets.token_urlsafe(12))
    device = gw.create_app_password(victims[0], "phone")
    sprayed = f"Winter{secrets.token_hex(3)}!"

    with contextlib.closing(signed_in_admin(gw, port, dovecot, ADMINS[0])) as web:
        page = web.get("/admin/events", params={"source": SPRAYER})
        assert page.status_code == 200
        stream = re.search(r'data-stream="([^"]+)"', page.text)
        assert stream, page.text
        url = stream.group(1).replace("&amp;", "&")

        seen: list[dict[str, Any]] = []
        failure: list[BaseException] = []

        def reader() -> None:
            try:
                read_stream(web, url, set(victims), seen)
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        started = time.monotonic()
        answers = [login(gw, SPRAYER, victim, sprayed) for victim in victims]
        thread.join(30.0)
        assert not thread.is_alive(), f"the spray did not reach the stream: {seen}"
        assert not failure, failure
        assert all(a == b"a " + AUTH_FAILED for a in answers), answers
        assert time.monotonic() - started < 30.0
        # Live: every sprayed account, from the sprayer only, failed; never the password.
        assert {e["user"] for e in seen} >= set(victims)
        assert {e["src"] for e in seen} == {SPRAYER}
        assert all(e["result"] != "ok" for e in seen)
        assert sprayed not in json.dumps(seen)

        # The defense blocked the source; the blocks page shows it with the alert.
        target = f"source:{SPRAYER}"
        wait_for(lambda: target in web.get("/admin/blocks").text, 10.0, "the source's block")
        assert login(gw, SPRAYER, victims[0], device) == b"a " + AUTH_FAILED
        blocks = web.get("/admin/blocks")
        assert "password spraying" in blocks.text or "sprayed password" in blocks.text
        done = web.post("/admin/blocks/clear", data={"csrf": csrf(blocks), "target": target})
        assert done.status_code == 303, done.text
        assert target not in web.get("/admin/blocks").text

    # The source logs in again with its valid app password.
    answer = login(gw, SPRAYER, victims[0], device)
    assert answer.startswith(b"a OK"), answer
    lines = [e for e in gw.events("portal") if e.get("action") == "admin_unblock"]
    assert [(e["user"], e["target"], e["result"]) for e in lines] == [(ADMINS[0], target, "ok")]
    listed = json.loads(gw.cli("blocks", "list", "--json").stdout)
    assert target not in [b["target"] for b in listed]


def test_streams_free_their_slots_on_disconnect_and_end_on_sign_out(
    admin_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    """Through the real server (uvicorn): a browser that goes away gives its
    stream's slot back at once, and signing out ends the admin's open stream
    within seconds."""
    gw, port = admin_gw
    with contextlib.closing(signed_in_admin(gw, port, dovecot, ADMINS[1])) as web:
        url = "/admin/events/stream"
        for _ in range(2):  # twice the per-admin limit, one after the other
            for _ in range(MAX_PER_ADMIN):
                with web.stream("GET", url) as response:
                    assert response.status_code == 200
                    assert next(response.iter_lines()) == "retry: 3000"
                # Leaving the block closed the connection: its slot is free again.
        opened: list[Iterator[str]] = []
        with contextlib.ExitStack() as held:
            for _ in range(MAX_PER_ADMIN):
                lines = held.enter_context(web.stream("GET", url)).iter_lines()
                assert next(lines) == "retry: 3000"
                opened.append(lines)  # kept: the connection stays open
            assert web.get(url).status_code == 429
            started = time.monotonic()
            page = web.get("/admin")
            assert web.post("/signout", data={"csrf": csrf(page)}).status_code == 303
            for lines in opened:
                ends = [line for line in lines if line.startswith("data: ")]
                assert ends[-1] == 'data: "signed-out"'
            assert time.monotonic() - started < 2 * RECHECK + 3.0
