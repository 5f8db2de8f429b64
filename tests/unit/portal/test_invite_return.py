"""An invited user who left the enrol page half-way: sent back to it, not asked
on the code page for a code of a factor they do not have yet; and the code page
of an account without any factor says so."""

from __future__ import annotations

from pathlib import Path

import httpx
import pyotp
import pytest

from imapguard.portal.invite import ENROL_COOKIE
from imapguard.portal.sessions import PENDING_LIFETIME
from tests.unit.portal.support import ORIGIN, Portal, csrf_of, portal
from tests.unit.portal.test_invite_attacks import _invite, _password, _secret_of

pytestmark = pytest.mark.asyncio


async def walk(p: Portal, path: str) -> tuple[list[str], httpx.Response]:
    """Follow the redirects from `path` (at most 6): the paths passed, the page."""
    passed = [path]
    page = await p.client.get(path)
    while page.status_code == 303:
        assert len(passed) < 6, passed
        location = page.headers["location"]
        passed.append(location)
        page = await p.client.get(location)
    return passed, page


def asks_for_a_code(page: httpx.Response) -> bool:
    return 'name="code"' in page.text


async def test_an_invited_user_who_opens_the_start_page_is_sent_back_to_the_enrolment(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        assert (await _password(p, _invite(p))).status_code == 303
        secret = _secret_of(await p.client.get("/invite/enroll"))
        for start in ("/", "/signin", "/security", "/signin/code"):
            passed, page = await walk(p, start)
            assert passed[-1] == "/invite/enroll", passed
            assert page.status_code == 200
            # The same secret: the app set up from the first visit still fits.
            assert _secret_of(page) == secret
        code = pyotp.TOTP(secret).at(p.clock())
        done = await p.post("/invite/enroll", {"csrf": csrf_of(page), "code": code})
        assert done.headers["location"] == "/"
        assert p.store.get_totp("bob") is not None
        assert (await p.client.get("/")).status_code == 200


async def test_the_code_page_asks_an_account_without_a_factor_for_no_code(
    tmp_path: Path,
) -> None:
    """The enrolment cookie is gone (another tab cancelled it, the browser
    dropped it): the "password" session of bob, who has no factor, is told why
    there is nothing to enter here and how to go on."""
    async with portal(tmp_path) as p:
        assert (await _password(p, _invite(p))).status_code == 303
        p.client.cookies.delete(ENROL_COOKIE)
        passed, page = await walk(p, "/")
        assert passed == ["/", "/signin/code"]
        assert page.status_code == 200
        assert not asks_for_a_code(page)
        assert "Use a passkey" not in page.text
        assert "<h1>No second factor yet</h1>" in page.text
        assert "ask your administrator for a new invitation" in page.text
        assert 'action="/signout"' in page.text
        # An account with a factor is still asked for its code.
        async with p.browser("198.51.100.9") as alice:
            assert (await alice.password_step("alice")).status_code == 303
            _, code_page = await walk(alice, "/signin/code")
            assert asks_for_a_code(code_page)
            assert "No second factor yet" not in code_page.text


async def test_another_sessions_enrolment_cookie_sends_nobody_to_the_enrolment(
    tmp_path: Path,
) -> None:
    """bob's seal in a browser where alice signed in once his session ended (or
    a planted one) opens for no other session: alice gets her code page, and
    her sign-in drops the seal that no longer opens."""
    async with portal(tmp_path) as p:
        assert (await _password(p, _invite(p))).status_code == 303
        sealed = p.client.cookies.get(ENROL_COOKIE)
        assert sealed is not None
        p.clock.now += PENDING_LIFETIME + 1  # bob's session is over, his seal not yet
        signed = await p.password_step("alice")
        assert signed.headers["location"] == "/signin/code"
        cleared = [v for v in signed.headers.get_list("set-cookie") if ENROL_COOKIE in v]
        (header,) = cleared
        assert "Max-Age=0" in header
        p.client.cookies.set(ENROL_COOKIE, sealed, domain=ORIGIN.removeprefix("https://"))
        passed, page = await walk(p, "/")
        assert passed == ["/", "/signin/code"]
        assert asks_for_a_code(page)


async def test_an_enrolment_cookie_that_no_longer_opens_is_dropped(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        assert (await _password(p, _invite(p))).status_code == 303
        host = ORIGIN.removeprefix("https://")
        p.client.cookies.set(ENROL_COOKIE, "A" * 60, domain=host)
        gone = await p.client.get("/invite/enroll")
        assert gone.headers["location"] == "/signin"
        cleared = [v for v in gone.headers.get_list("set-cookie") if ENROL_COOKIE in v]
        (header,) = cleared
        assert "Max-Age=0" in header
        passed, page = await walk(p, "/")
        assert passed == ["/", "/signin/code"]
        assert "No second factor yet" in page.text
