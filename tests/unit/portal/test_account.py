"""The overview page and the portal sessions list: the account's factors at a
glance, its sessions with this one marked; "sign out" ends the named session of
this account only (another account's id ends nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.portal.sessions import COOKIE
from imapguard.state.accounts import DeviceKey
from tests.unit.portal.support import csrf_of, portal

pytestmark = pytest.mark.asyncio


async def test_the_overview_shows_the_factors_and_pending_devices(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        key = DeviceKey("alice", "198.51.100.0/24", "iOS Mail", "17")
        p.store.add_pending_device(key, p.clock.now, "198.51.100.3")
        await p.sign_in()
        page = await p.client.get("/")
        assert page.status_code == 200
        assert page.text.count("<h1>") == 1
        assert "1 waiting for your approval" in page.text
        for link in ("/security", "/app-passwords", "/devices", "/sign-ins"):
            assert f'href="{link}"' in page.text


async def test_the_sessions_list_marks_this_one_and_signs_out_another(tmp_path: Path) -> None:
    async with portal(tmp_path) as p, p.browser("198.51.100.77") as other:
        await other.sign_in()
        await p.sign_in()
        page = await p.client.get("/")
        assert "(this browser)" in page.text
        assert "198.51.100.77" in page.text
        (theirs,) = [s for s in p.store.live() if s.address == "198.51.100.77"]
        done = await p.post("/sessions/revoke", {"csrf": csrf_of(page), "session": theirs.id})
        assert done.headers["location"] == "/?done=session-ended"
        assert (await other.client.get("/")).status_code == 303
        assert (await p.client.get("/")).status_code == 200
        assert p.events()[-1]["action"] == "session_revoke"
        assert p.events()[-1]["user"] == "alice"


async def test_idor_another_accounts_session_id_ends_nothing(tmp_path: Path) -> None:
    async with portal(tmp_path) as p, p.browser("198.51.100.78") as carol:
        await carol.sign_in("carol")
        await p.sign_in("alice")
        (carols,) = [s for s in p.store.live() if s.user == "carol"]
        page = await p.client.get("/")
        assert carols.id not in page.text
        done = await p.post("/sessions/revoke", {"csrf": csrf_of(page), "session": carols.id})
        assert done.headers["location"] == "/?done=nothing"
        assert (await carol.client.get("/")).status_code == 200
        assert p.events()[-1]["result"] == "not_found"


async def test_signing_out_this_session_clears_its_cookie(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        page = await p.client.get("/")
        (mine,) = p.store.live()
        done = await p.post("/sessions/revoke", {"csrf": csrf_of(page), "session": mine.id})
        assert done.headers["location"] == "/signin"
        assert f"{COOKIE}=;" in done.headers["set-cookie"]
        assert p.store.live() == []


async def test_sign_out_everywhere_else_keeps_this_session(tmp_path: Path) -> None:
    async with portal(tmp_path) as p, p.browser("198.51.100.79") as other:
        await other.sign_in()
        await p.sign_in()
        page = await p.client.get("/")
        done = await p.post("/sessions/revoke-others", {"csrf": csrf_of(page)})
        assert done.headers["location"] == "/?done=others-ended"
        assert (await other.client.get("/")).status_code == 303
        assert (await p.client.get("/")).status_code == 200
        assert (
            "Every other session is signed out." in (await p.client.get("/?done=others-ended")).text
        )


async def test_the_notice_is_a_fixed_text_never_the_url(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        page = await p.client.get("/?done=<script>alert(1)</script>")
        assert page.status_code == 200
        assert "alert(1)" not in page.text
