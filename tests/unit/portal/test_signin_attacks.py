"""The sign-in steps: uniform failures, no way around the second factor, the
rate limit, the account without a factor, and requests for another host."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imapguard.portal.sessions import COOKIE
from imapguard.portal.signin import FAILED, LISTENER, MAX_CODE_FAILURES
from tests.unit.portal.support import CODE, PASSWORD, csrf_of, portal

pytestmark = pytest.mark.asyncio


def _message(html: str) -> str:
    found = re.search(r'<p class="error" role="alert">([^<]*)</p>', html)
    assert found is not None, html
    return found.group(1)


async def test_user_enumeration_one_failure_for_a_wrong_password_and_a_wrong_code(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        unknown = await p.password_step("mallory", PASSWORD)
        wrong_password = await p.password_step("alice", "wrong")
        empty = await p.password_step("", "")
        too_long = await p.password_step("alice", "x" * 5000)
        await p.password_step()
        wrong_code = await p.code_step("654321")
        malformed = await p.code_step("12345x")
        pages = (unknown, wrong_password, empty, too_long, wrong_code, malformed)
        for page in pages:
            assert page.status_code == 200
            assert _message(page.text) == "The user name, password or code is not right."
            assert _message(page.text) == FAILED.replace("'", "&#39;")
            assert "set-cookie" not in page.headers or COOKIE not in page.headers["set-cookie"]
        # The pages of the two password failures are the same but for the token.
        strip = re.compile(r'value="[^"]*"')
        assert strip.sub("", unknown.text) == strip.sub(
            "", wrong_password.text.replace('value="alice"', 'value="mallory"')
        )
        results = [(e["action"], e["result"]) for e in p.events()]
        assert results.count(("sign_in", "failed")) == 4
        assert results.count(("second_factor", "failed")) == 2


async def test_the_auth_service_alone_checks_credentials_as_the_portal(tmp_path: Path) -> None:
    async with portal(tmp_path, client_ip="::ffff:192.0.2.33") as p:
        await p.sign_in()
        (kind, user, ctx), (kind2, user2, ctx2) = p.service.calls
        assert (kind, user, kind2, user2) == ("password", "alice", "totp", "alice")
        for c in (ctx, ctx2):
            assert c.listener == LISTENER == "portal"
            # The browser's User-Agent: what the sign-in history shows as the client.
            assert c.client_id == p.client.headers["user-agent"]
            assert c.client.ip == "192.0.2.33"  # IPv4-mapped written as IPv4
            assert c.client.local_ip == "portal.test"  # httpx's ASGI server tuple
        # The audit line of each step carries the request id the auth service got.
        steps = p.events()
        assert [e["session"] for e in steps] == [ctx.client.session, ctx2.client.session]
        assert PASSWORD not in p.audit_path.read_text()
        assert CODE not in p.audit_path.read_text()


async def test_second_factor_bypass_a_password_session_reaches_no_page(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.password_step()
        home = await p.client.get("/")
        assert home.status_code == 303
        # Every page behind sign-in (kit.full) sends a half-done sign-in to its code step.
        assert home.headers["location"] == "/signin/code"
        again = await p.client.get("/signin")
        assert again.status_code == 303
        assert again.headers["location"] == "/signin/code"
        assert (await p.client.get("/signin/code")).status_code == 200
        assert p.store.live()[0].level == "password"


async def test_second_factor_bypass_no_code_step_without_a_password_session(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        form = await p.client.get("/signin")
        response = await p.post("/signin/code", {"csrf": csrf_of(form), "code": CODE})
        assert response.status_code == 303
        assert response.headers["location"] == "/signin"
        assert p.service.calls == []


async def test_password_oracle_an_account_without_a_factor_gets_the_uniform_failure(
    tmp_path: Path,
) -> None:
    # A right password of an account with no second factor must not be
    # confirmed to whoever typed it (it may work for SMTP or webmail).
    async with portal(tmp_path) as p:
        right = await p.password_step("bob")
        wrong = await p.password_step("bob", "wrong")
        assert right.status_code == wrong.status_code == 200
        strip = re.compile(r'value="[^"]*"')
        assert strip.sub("", right.text) == strip.sub("", wrong.text)
        assert _message(right.text) == _message(wrong.text)
        # Where such an account starts is said on the sign-in page, to everyone.
        assert "invitation link" in (await p.client.get("/signin")).text
        assert p.store.live() == []
        assert COOKIE not in p.client.cookies
        assert [e["result"] for e in p.events()] == ["no_second_factor", "failed"]


async def test_code_guessing_ends_the_password_session(tmp_path: Path) -> None:
    async with portal(tmp_path, max_sign_ins_per_minute=100) as p:
        await p.password_step()
        for attempt in range(1, MAX_CODE_FAILURES):
            page = await p.code_step(f"{attempt:06d}")
            assert page.status_code == 200
            assert "<h1>Enter your code</h1>" in page.text
        last = await p.code_step("999999")
        assert last.status_code == 200
        assert _message(last.text) == _message(page.text)
        assert "<h1>Sign in</h1>" in last.text  # back to the password
        assert p.store.live() == []
        assert f"{COOKIE}=; Max-Age=0" in last.headers["set-cookie"]
        # The right code is of no use now; the sign-in form on that page works.
        late = await p.post("/signin/code", {"csrf": csrf_of(page), "code": CODE})
        assert late.status_code == 403
        assert p.store.live() == []
        redo = {"csrf": csrf_of(last), "username": "alice", "password": PASSWORD}
        assert (await p.post("/signin", redo)).status_code == 303


async def test_password_guessing_is_rate_limited_per_source(tmp_path: Path) -> None:
    async with portal(tmp_path, max_sign_ins_per_minute=3) as p:
        for _ in range(3):
            assert (await p.password_step("alice", "guess")).status_code == 200
        calls = len(p.service.calls)
        limited = await p.password_step("alice", "guess")
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "60"
        assert len(p.service.calls) == calls  # the password was not even checked
        p.clock.now += 30
        again = await p.password_step("alice", "guess")
        assert again.status_code == 429
        assert again.headers["retry-after"] == "30"
        # One audit line for the run, not one per refused request.
        assert [e["result"] for e in p.events()].count("rate_limited") == 1
        # Another source is not held back; this one is, as Retry-After said, no longer.
        async with p.browser("198.51.100.7") as other:
            assert (await other.password_step()).status_code == 303
        p.clock.now += 31
        assert (await p.password_step()).status_code == 303


async def test_code_guessing_is_rate_limited_too(tmp_path: Path) -> None:
    async with portal(tmp_path, max_sign_ins_per_minute=3) as p:
        await p.password_step()
        assert (await p.code_step("000000")).status_code == 200
        assert (await p.code_step("000001")).status_code == 200
        limited = await p.code_step("000002")
        assert limited.status_code == 429
        assert "retry-after" in limited.headers


async def test_an_ipv6_source_cannot_escape_the_limit_within_its_64(tmp_path: Path) -> None:
    async with portal(tmp_path, client_ip="2001:db8:1:2::1", max_sign_ins_per_minute=1) as p:
        assert (await p.password_step("alice", "guess")).status_code == 200
        async with p.browser("2001:db8:1:2:ffff::9") as neighbour:
            assert (await neighbour.password_step("alice", "guess")).status_code == 429


async def test_dns_rebinding_a_request_for_another_host_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        response = await p.client.get("/signin", headers={"Host": "evil.test"})
        assert response.status_code == 400
        assert "content-security-policy" in response.headers


async def test_the_account_page_names_the_signed_in_user_escaped(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        p.service.users["<b>eve</b>"] = (PASSWORD, True)
        await p.sign_in("<b>eve</b>")
        page = await p.client.get("/")
        assert "&lt;b&gt;eve&lt;/b&gt;" in page.text
        assert "<b>eve" not in page.text
        assert page.text.count("<h1>") == 1


async def test_every_field_has_a_visible_label(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        pages = [await p.client.get("/signin")]
        await p.password_step()
        pages.append(await p.client.get("/signin/code"))
        for page in pages:
            ids = re.findall(r'<input id="([^"]+)"', page.text)
            assert ids
            for field_id in ids:
                assert f'<label for="{field_id}">' in page.text
            assert page.text.count("<h1>") == 1


async def test_an_oversized_body_is_refused_before_it_is_read(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        form = await p.client.get("/signin")
        response = await p.post(
            "/signin", {"csrf": csrf_of(form), "username": "alice", "password": "x" * 70_000}
        )
        assert response.status_code == 413
        assert p.service.calls == []
