"""Cross-site request forgery: a state-changing request that did not come from
one of the portal's own pages is refused (403), whatever its path, before any
credential is looked at; the sign-in form itself included (login CSRF)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.portal.csrf import REFUSED_TEXT
from imapguard.portal.sessions import PRE_COOKIE
from tests.unit.portal.support import CODE, ORIGIN, PASSWORD, Portal, csrf_of, portal

pytestmark = pytest.mark.asyncio


async def _signed_in_token(p: Portal) -> str:
    await p.sign_in()
    return csrf_of(await p.client.get("/"))


def _refused(p: Portal, status: int) -> bool:
    return status == 403 and p.events()[-1]["result"] == "csrf"


async def test_a_form_without_token_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await _signed_in_token(p)
        response = await p.post("/signout", {"other": "field"})
        assert response.status_code == 403
        assert response.text == REFUSED_TEXT
        assert _refused(p, response.status_code)
        assert len(p.store.live()) == 1  # still signed in
        assert p.events()[-1]["reason"] == "no token"


async def test_a_form_with_a_wrong_token_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        token = await _signed_in_token(p)
        for wrong in ("x", token[:-1] + ("A" if token[-1] != "A" else "B"), "é" * 43):
            response = await p.post("/signout", {"csrf": wrong})
            assert _refused(p, response.status_code)
        assert len(p.store.live()) == 1


async def test_a_token_of_another_session_is_refused(tmp_path: Path) -> None:
    # An attacker with an account of their own cannot reuse their token on a victim.
    async with portal(tmp_path) as p:
        attackers = await _signed_in_token(p)
        async with p.browser() as victim:
            await victim.sign_in()
            response = await victim.post("/signout", {"csrf": attackers})
            assert _refused(victim, response.status_code)


async def test_several_tokens_in_one_form_are_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        token = await _signed_in_token(p)
        response = await p.client.post(
            "/signout",
            content=f"csrf={token}&csrf=other",
            headers={"Origin": ORIGIN, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert _refused(p, response.status_code)


async def test_a_request_from_a_foreign_origin_is_refused_even_with_the_token(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        token = await _signed_in_token(p)
        for origin in (
            "https://evil.test",
            "http://portal.test",
            "https://portal.test:444",
            "https://portal.test.evil.test",
            "null",
        ):
            response = await p.post("/signout", {"csrf": token}, origin=origin)
            assert _refused(p, response.status_code), origin
        assert len(p.store.live()) == 1


async def test_no_origin_and_a_cross_site_fetch_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        token = await _signed_in_token(p)
        for site in ("cross-site", "same-site", "none"):
            response = await p.post(
                "/signout", {"csrf": token}, origin=None, headers={"Sec-Fetch-Site": site}
            )
            assert _refused(p, response.status_code), site
        # Neither header: no browser we serve sends that.
        response = await p.post("/signout", {"csrf": token}, origin=None)
        assert _refused(p, response.status_code)
        assert len(p.store.live()) == 1


async def test_origin_null_from_a_sandboxed_frame_or_data_page_is_refused(tmp_path: Path) -> None:
    # An opaque origin (sandboxed iframe, data: URL) sends `Origin: null`; its
    # fetch metadata says cross-site, and a null without metadata is no browser of ours.
    async with portal(tmp_path) as p:
        token = await _signed_in_token(p)
        for site in ("cross-site", "same-site", "none", None):
            headers = {"Sec-Fetch-Site": site} if site is not None else {}
            response = await p.post("/signout", {"csrf": token}, origin="null", headers=headers)
            assert _refused(p, response.status_code), site
            assert p.events()[-1]["reason"].startswith("Origin null"), p.events()[-1]
        assert len(p.store.live()) == 1


async def test_a_form_of_the_portal_under_no_referrer_origin_null_is_accepted(
    tmp_path: Path,
) -> None:
    # Referrer-Policy: no-referrer makes a browser send `Origin: null` on the
    # portal's own form posts (Fetch, "serializing a request origin"); Chromium
    # does, see tests/e2e. Fetch metadata says same-origin; the token still counts.
    async with portal(tmp_path) as p:
        token = await _signed_in_token(p)
        same = {"Sec-Fetch-Site": "same-origin"}
        wrong = await p.post("/signout", {"csrf": token[:-1]}, origin="null", headers=same)
        assert _refused(p, wrong.status_code)
        response = await p.post("/signout", {"csrf": token}, origin="null", headers=same)
        assert response.status_code == 303
        assert p.store.live() == []


async def test_no_origin_but_same_origin_fetch_metadata_is_accepted(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        token = await _signed_in_token(p)
        response = await p.post(
            "/signout", {"csrf": token}, origin=None, headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert response.status_code == 303
        assert p.store.live() == []


async def test_login_csrf_a_sign_in_form_of_another_browser_is_refused(tmp_path: Path) -> None:
    # The attacker fetched a sign-in form in their own browser and makes the
    # victim's browser post it with the attacker's credentials (the victim would
    # then work in the attacker's account). Its token is bound to the attacker's
    # pre-sign-in cookie, which the victim's browser does not have.
    async with portal(tmp_path) as p:
        attackers_form = await p.client.get("/signin")
        stolen = csrf_of(attackers_form)
        async with p.browser("192.0.2.20") as victim:
            data = {"csrf": stolen, "username": "alice", "password": PASSWORD}
            no_cookie = await victim.post("/signin", data)
            assert _refused(victim, no_cookie.status_code)
            await victim.client.get("/signin")  # the victim has a pre cookie of their own
            assert PRE_COOKIE in victim.client.cookies
            own_cookie = await victim.post("/signin", data)
            assert _refused(victim, own_cookie.status_code)
        assert p.service.calls == []  # no password was ever checked
        assert p.store.live() == []


async def test_a_json_body_without_the_token_header_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.client.get("/signin")
        response = await p.client.post(
            "/signin",
            json={"username": "alice", "password": PASSWORD},
            headers={"Origin": ORIGIN},
        )
        assert _refused(p, response.status_code)
        assert p.service.calls == []


async def test_the_token_header_is_accepted_in_place_of_the_field(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.password_step()
        token = csrf_of(await p.client.get("/signin/code"))
        response = await p.client.post(
            "/signin/code",
            data={"code": CODE},
            headers={"Origin": ORIGIN, "X-CSRF-Token": token},
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/"


async def test_unsafe_methods_on_any_path_need_the_token(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await _signed_in_token(p)
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for path in ("/", "/signout", "/not/yet/a/route", "/static/portal.css"):
                response = await p.client.request(method, path, headers={"Origin": ORIGIN})
                assert response.status_code == 403, (method, path)


async def test_origin_null_with_same_origin_fetch_metadata_is_accepted(tmp_path: Path) -> None:
    # What Chromium sends for the portal's own forms and fetches: the pages'
    # Referrer-Policy no-referrer makes the origin of a POST serialize as "null".
    async with portal(tmp_path) as p:
        token = await _signed_in_token(p)
        for site in ("cross-site", "same-site", "none"):
            response = await p.post(
                "/signout", {"csrf": token}, origin="null", headers={"Sec-Fetch-Site": site}
            )
            assert _refused(p, response.status_code), site
        assert len(p.store.live()) == 1
        response = await p.post(
            "/signout", {"csrf": token}, origin="null", headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert response.status_code == 303
        assert p.store.live() == []
