"""The fresh second-factor check (/confirm): where a stale session is sent, what
proves it, that it raises the session under a new token without extending its
life, and that its `next` never leaves the portal (open redirect)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.portal.confirm import MAX_CONFIRM_FAILURES, local_path
from imapguard.portal.sessions import COOKIE
from tests.unit.portal.support import CODE, csrf_of, portal
from tests.unit.portal.test_factors import passkey_options, register_passkey, soft_key

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "/\\evil.example",
        "/\\/evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "evil.example",
        "/%0d%0aSet-Cookie:x=1",
        "/\r\nLocation: https://evil.example",
        "/ok#//evil.example",
        " /security",
        "/\t/evil.example",
        "/" + "a" * 600,
        "",
    ],
)
async def test_open_redirect_refused(target: str) -> None:
    # Only a path of this portal; "%0d%0a" stays escaped in a path, so that one
    # is harmless, but it names no page: both are fine as long as it stays local.
    result = local_path(target)
    assert result.startswith("/")
    assert not result.startswith("//")
    assert "\\" not in result
    assert all(c.isprintable() and c != " " for c in result)
    if target.startswith(("//", "/\\", "https:", "javascript:", " ", "/\r", "/\t")) or not target:
        assert result == "/"


async def test_local_paths_are_kept() -> None:
    for path in ("/security", "/security/totp", "/app-passwords?x=1", "/"):
        assert local_path(path) == path


async def test_stale_session_is_sent_to_confirm_and_back(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        old_token = await p.sign_in()
        (before,) = p.store.live()
        p.clock.now += p.settings.fresh_factor + 1
        stale = await p.client.get("/security/totp")
        assert stale.status_code == 303
        assert stale.headers["location"] == "/confirm?next=/security/totp"
        page = await p.client.get(stale.headers["location"])
        assert page.status_code == 200
        assert 'name="next" value="/security/totp"' in page.text
        form = {"csrf": csrf_of(page), "next": "/security/totp", "method": "totp", "code": CODE}
        done = await p.post("/confirm", form)
        assert done.status_code == 303
        assert done.headers["location"] == "/security/totp"
        assert (await p.client.get("/security/totp")).status_code == 200
        (after,) = p.store.live()
        # A new session under a new token, proved now, ending when the old one would.
        assert after.id != before.id
        assert after.second_factor_at == p.clock.now
        assert after.expires_at == before.expires_at
        new_token = p.client.cookies.get(COOKIE)
        assert new_token
        assert new_token != old_token
        p.client.cookies.clear()
        replay = await p.client.get("/", headers={"Cookie": f"{COOKIE}={old_token}"})
        assert replay.status_code == 303
        results = [(e["action"], e["result"], e.get("reason")) for e in p.events()]
        assert results[-1] == ("confirm", "ok", "totp")


async def test_confirm_next_from_the_form_cannot_leave_the_portal(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        page = await p.client.get("/confirm?next=//evil.example/")
        assert 'name="next" value="/"' in page.text
        form = {"csrf": csrf_of(page), "next": "https://evil.example/", "code": CODE}
        done = await p.post("/confirm", form)
        assert done.status_code == 303
        assert done.headers["location"] == "/"


async def test_confirm_needs_a_full_session(tmp_path: Path) -> None:
    # A password session must not turn itself into a full one here.
    async with portal(tmp_path) as p:
        await p.password_step()
        page = await p.client.get("/signin/code")
        response = await p.post("/confirm", {"csrf": csrf_of(page), "code": CODE})
        assert response.status_code == 303
        assert response.headers["location"] == "/signin/code"
        assert [s.level for s in p.store.live()] == ["password"]
        assert [kind for kind, _, _ in p.service.calls] == ["password"]


async def test_code_guessing_at_confirm_ends_the_session(tmp_path: Path) -> None:
    # A stolen session cookie cannot be used to grind codes on the confirm page.
    async with portal(tmp_path, max_sign_ins_per_minute=100) as p:
        await p.sign_in()
        page = await p.client.get("/confirm?next=/security")
        for n in range(1, MAX_CONFIRM_FAILURES):
            wrong = await p.post("/confirm", {"csrf": csrf_of(page), "code": f"{n:06d}"})
            assert wrong.status_code == 200
            assert "That did not work" in wrong.text
            assert len(p.store.live()) == 1
        last = await p.post("/confirm", {"csrf": csrf_of(page), "code": "999999"})
        assert "<h1>Sign in</h1>" in last.text
        assert p.store.live() == []
        assert f"{COOKIE}=; Max-Age=0" in last.headers["set-cookie"]
        reasons = [e.get("reason") for e in p.events() if e["action"] == "confirm"]
        assert reasons[-1] == "totp; too many, signed out"


async def test_confirm_is_rate_limited_per_source(tmp_path: Path) -> None:
    async with portal(tmp_path, max_sign_ins_per_minute=2) as p:
        await p.sign_in()
        page = await p.client.get("/confirm")
        for _ in range(2):
            await p.post("/confirm", {"csrf": csrf_of(page), "code": "000000"})
        calls = len(p.service.calls)
        limited = await p.post("/confirm", {"csrf": csrf_of(page), "code": CODE})
        assert limited.status_code == 429
        assert len(p.service.calls) == calls


async def test_confirm_with_a_passkey_and_its_challenge_expires(tmp_path: Path) -> None:
    key = soft_key()
    async with portal(tmp_path) as p:
        await p.sign_in()
        await register_passkey(p, key)
        p.clock.now += p.settings.fresh_factor + 1
        page = await p.client.get("/confirm?next=/security/passkeys/new")
        assert 'data-options="/confirm/passkey-options"' in page.text
        options = await passkey_options(p, "/confirm/passkey-options", page)
        form = {
            "csrf": csrf_of(page),
            "next": "/security/passkeys/new",
            "method": "passkey",
            "credential": key.sign(options.text).decode(),
        }
        done = await p.post("/confirm", form)
        assert done.headers["location"] == "/security/passkeys/new"
        assert (await p.client.get("/security/passkeys/new")).status_code == 200
        # A challenge older than its lifetime proves nothing.
        p.clock.now += p.settings.fresh_factor + 1
        page = await p.client.get("/confirm")
        options = await passkey_options(p, "/confirm/passkey-options", page)
        p.clock.now += 301
        form = {
            "csrf": csrf_of(page),
            "method": "passkey",
            "credential": key.sign(options.text).decode(),
        }
        late = await p.post("/confirm", form)
        assert late.status_code == 200
        assert "That did not work" in late.text
        (record,) = p.store.list_passkeys("alice")
        assert record.sign_count == 1  # the late answer was never checked
