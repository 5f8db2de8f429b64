"""Session cookies: their attributes, fixation, and a cookie that must no
longer sign anyone in (after sign-out, idle time, the absolute lifetime, a
revocation, or a code step not finished in time)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from imapguard.portal.sessions import (
    COOKIE,
    PENDING_LIFETIME,
    PRE_COOKIE,
    new_token,
    token_digest,
)
from tests.unit.portal.support import Portal, csrf_of, portal

pytestmark = pytest.mark.asyncio

ATTRIBUTES = "; Path=/; SameSite=Strict; Secure; HttpOnly"


async def _with_cookie(p: Portal, token: str) -> httpx.Response:
    """GET / as a browser that holds only this session cookie."""
    p.client.cookies.clear()
    return await p.client.get("/", headers={"Cookie": f"{COOKIE}={token}"})


async def test_cookies_are_host_only_secure_httponly_and_strict(tmp_path: Path) -> None:
    # Script cannot read them, other sites cannot send them, a subdomain or plain
    # HTTP cannot set or see them (__Host-: Secure, Path=/, no Domain).
    async with portal(tmp_path) as p:
        form = await p.client.get("/signin")
        (pre,) = form.headers.get_list("set-cookie")
        assert pre.startswith(f"{PRE_COOKIE}=")
        assert pre.endswith(ATTRIBUTES)
        assert "Domain" not in pre
        step = await p.post(
            "/signin", {"csrf": csrf_of(form), "username": "alice", "password": "x" * 5}
        )
        assert not any(c.startswith(f"{COOKIE}=") for c in step.headers.get_list("set-cookie"))
        step = await p.password_step()
        (cookie,) = step.headers.get_list("set-cookie")
        token = cookie.split(";")[0].removeprefix(f"{COOKIE}=")
        assert len(token) == 43
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert cookie == f"{COOKIE}={token}; Max-Age={int(PENDING_LIFETIME)}{ATTRIBUTES}"
        done = await p.code_step()
        (cookie,) = done.headers.get_list("set-cookie")
        lifetime = int(p.settings.session_lifetime)
        assert cookie.endswith(f"; Max-Age={lifetime}{ATTRIBUTES}")


async def test_session_fixation_a_new_token_on_each_sign_in_step(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        planted = new_token()  # what an attacker managed to put in the browser
        p.client.cookies.set(COOKIE, planted, domain="portal.test")
        await p.password_step()
        after_password = p.client.cookies[COOKIE]
        assert after_password != planted
        await p.code_step()
        after_code = p.client.cookies[COOKIE]
        assert after_code not in (planted, after_password)
        # The password-level session is gone, not promoted: its token is worthless.
        assert (await _with_cookie(p, after_password)).status_code == 303
        assert [s.level for s in p.store.live()] == ["full"]


async def test_a_second_sign_in_never_reuses_the_first_session(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        first = await p.sign_in()
        await p.post("/signout", {"csrf": csrf_of(await p.client.get("/"))})
        second = await p.sign_in()
        assert first != second
        assert len(p.store.live()) == 1


async def test_the_store_holds_no_token_only_its_keyed_digest(tmp_path: Path) -> None:
    # A copy of the database must not sign anyone in.
    async with portal(tmp_path) as p:
        token = await p.sign_in()
        (digest,) = p.store.session_digests()
        assert token.encode() not in Path(p.store.path).read_bytes()  # noqa: ASYNC240
        assert digest == token_digest(p.deps.keys.session, token)
        assert digest != token_digest(b"\0" * 32, token)
        assert len(digest) == 32


async def test_a_cookie_after_sign_out_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        token = await p.sign_in()
        out = await p.post("/signout", {"csrf": csrf_of(await p.client.get("/"))})
        assert out.status_code == 303
        assert out.headers["location"] == "/signin"
        assert f"{COOKIE}=; Max-Age=0{ATTRIBUTES}" in out.headers.get_list("set-cookie")
        replay = await _with_cookie(p, token)
        assert replay.status_code == 303
        assert replay.headers["location"] == "/signin"
        assert [e["action"] for e in p.events()][-1] == "sign_out"


async def test_a_cookie_after_idle_expiry_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        token = await p.sign_in()
        p.clock.now += p.settings.session_idle - 1
        assert (await _with_cookie(p, token)).status_code == 200  # used: idle starts again
        p.clock.now += p.settings.session_idle + 1
        stale = await _with_cookie(p, token)
        assert stale.status_code == 303
        # The browser is told to drop it.
        assert f"{COOKIE}=; Max-Age=0{ATTRIBUTES}" in stale.headers.get_list("set-cookie")


async def test_a_cookie_past_the_absolute_lifetime_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path, session_idle=3600, session_lifetime=7200) as p:
        token = await p.sign_in()
        for _ in range(4):  # busy all along: idle never expires
            p.clock.now += 1800
            response = await _with_cookie(p, token)
        assert response.status_code == 200
        p.clock.now += 1
        assert (await _with_cookie(p, token)).status_code == 303


async def test_a_cookie_after_revocation_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        token = await p.sign_in()
        assert (await _with_cookie(p, token)).status_code == 200
        p.store.revoke_portal_sessions("alice")  # "sign out everywhere", an admin
        assert (await _with_cookie(p, token)).status_code == 303


async def test_an_unfinished_code_step_expires(tmp_path: Path) -> None:
    # A stolen password-level cookie cannot wait for a code to leak.
    async with portal(tmp_path) as p:
        await p.password_step()
        form = await p.client.get("/signin/code")
        p.clock.now += PENDING_LIFETIME + 1
        late = await p.post("/signin/code", {"csrf": csrf_of(form), "code": "123456"})
        assert late.status_code == 403  # its session (and so its CSRF binding) is gone
        again = await p.client.get("/signin/code")
        assert again.status_code == 303
        assert again.headers["location"] == "/signin"


async def test_a_forged_or_malformed_cookie_is_ignored(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        for forged in (new_token(), "A" * 43, "x" * 10_000, "../../etc", ""):
            assert (await _with_cookie(p, forged)).status_code == 303


async def test_activity_is_written_at_most_once_a_minute(tmp_path: Path) -> None:
    # A page view must not cost a store write each (the gateway shares the store).
    async with portal(tmp_path) as p:
        token = await p.sign_in()
        before = p.store.touches
        for _ in range(5):
            await _with_cookie(p, token)
        assert p.store.touches == before
        p.clock.now += 61
        await _with_cookie(p, token)
        await _with_cookie(p, token)
        assert p.store.touches == before + 1
