"""The first access by invitation: a leaked link alone opens nothing, a link
works once, a GET (a mail scanner) spends nothing, every failure is one page,
the token is never logged, and only an invitation's session reaches the enrol
step."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pyotp
import pytest

from imapguard.auth import invites, totp
from imapguard.portal.invite import FAILED
from imapguard.portal.sessions import COOKIE
from tests.unit.portal.support import PASSWORD, Portal, csrf_of, portal

pytestmark = pytest.mark.asyncio

_SECRET = re.compile(r'<code class="secret">([A-Z2-7 ]+)</code>')


def _message(html: str) -> str | None:
    found = re.search(r'<p class="error" role="alert">([^<]*)</p>', html)
    return None if found is None else found.group(1)


def _invite(p: Portal, user: str = "bob", lifetime: float = 3600.0) -> str:
    return invites.issue(p.store, p.deps.keys.invite, user, p.clock(), lifetime)


async def _password(
    p: Portal, token: str, user: str = "bob", password: str = PASSWORD
) -> httpx.Response:
    form = await p.client.get(f"/invite/{token}")
    assert form.status_code == 200
    return await p.post(
        f"/invite/{token}", {"csrf": csrf_of(form), "username": user, "password": password}
    )


def _secret_of(page: httpx.Response) -> str:
    found = _SECRET.search(page.text)
    assert found is not None, page.text
    return found.group(1).replace(" ", "")


async def _enroll(p: Portal, code: str | None = None) -> httpx.Response:
    page = await p.client.get("/invite/enroll")
    assert page.status_code == 200, page.text
    if code is None:
        code = pyotp.TOTP(_secret_of(page)).at(p.clock())
    return await p.post("/invite/enroll", {"csrf": csrf_of(page), "code": code})


async def test_invite_password_enrol_gives_a_full_session_and_a_stored_factor(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        token = _invite(p)
        first = await _password(p, token)
        assert first.status_code == 303
        assert first.headers["location"] == "/invite/enroll"
        page = await p.client.get("/invite/enroll")
        assert page.text.count("<h1>") == 1
        assert "<svg" in page.text
        assert 'for="code"' in page.text
        secret = _secret_of(page)
        done = await p.post(
            "/invite/enroll",
            {"csrf": csrf_of(page), "code": pyotp.TOTP(secret).at(p.clock())},
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/"
        account = await p.client.get("/")
        assert account.status_code == 200
        # The stored factor is the secret shown, sealed.
        record = p.store.get_totp("bob")
        assert record is not None
        stored = totp.unseal(p.deps.services.totp_key, "bob", record.sealed)  # type: ignore[union-attr]
        assert stored.reveal().decode() == secret
        results = [(e["action"], e["result"], e.get("user")) for e in p.events()]
        assert ("invite", "ok", "bob") in results
        assert ("enroll_totp", "ok", "bob") in results
        assert [s.level for s in p.store.live()] == ["full"]


async def test_leaked_link_alone_opens_nothing_and_a_wrong_password_does_not_burn_it(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        token = _invite(p)
        wrong = await _password(p, token, password="guess")
        assert wrong.status_code == 200
        assert _message(wrong.text) == FAILED
        assert p.client.cookies.get(COOKIE) is None
        assert (await p.client.get("/invite/enroll")).headers["location"] == "/signin"
        # The owner's typo did not spend the link.
        assert (await _password(p, token)).status_code == 303


async def test_link_replay_a_used_link_is_refused_with_the_right_password(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        token = _invite(p)
        assert (await _password(p, token)).status_code == 303
        async with p.browser("198.51.100.7") as other:
            again = await _password(other, token)
            assert again.status_code == 200
            assert _message(again.text) == FAILED


async def test_expired_unknown_used_and_forged_links_get_one_page(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        expired = _invite(p, lifetime=60.0)
        used = _invite(p, "alice")
        assert (await _password(p, used, "alice")).status_code == 303
        p.clock.now += 61
        unknown = invites.issue(p.store, b"k" * 32, "bob", p.clock(), 3600.0)  # another key
        forged = "A" * 43
        malformed = "not-a-token"
        pages = []
        for token in (expired, used, unknown, forged, malformed):
            async with p.browser() as b:
                page = await _password(b, token, "alice" if token == used else "bob")
                assert page.status_code == 200
                assert _message(page.text) == FAILED
                pages.append(re.sub(r'value="[^"]*"', "", page.text))
        assert len(set(pages)) == 1


async def test_link_prefetch_a_get_spends_nothing_and_says_nothing(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        token = _invite(p)
        good = await p.client.get(f"/invite/{token}")
        bogus = await p.client.get(f"/invite/{'B' * 43}")
        strip = re.compile(r'value="[^"]*"')
        assert strip.sub("", good.text) == strip.sub("", bogus.text)
        assert good.status_code == bogus.status_code == 200
        for _ in range(3):
            await p.client.get(f"/invite/{token}")
        # No step of the auth service ran and the link still works.
        assert p.service.calls == []
        assert (await _password(p, token)).status_code == 303


async def test_token_in_no_log_and_not_repeated_in_the_page(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        token = _invite(p)
        form = await p.client.get(f"/invite/{token}")
        assert token not in form.text
        await _password(p, token, password="wrong")
        await _password(p, token)
        assert (await _enroll(p)).status_code == 303
        assert token not in p.audit_path.read_text()
        assert p.events()


async def test_invitation_of_another_account_opens_nothing(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        token = _invite(p, "bob")
        # alice's own password with bob's link: no session, for either of them.
        page = await _password(p, token, "alice")
        assert _message(page.text) == FAILED
        assert p.store.live() == []
        assert ("invite", "failed", "alice") in [
            (e["action"], e["result"], e.get("user")) for e in p.events()
        ]


async def test_enrol_step_needs_an_invitation_not_just_a_password_session(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        # alice's ordinary password step gives a "password" session: it must not
        # let whoever has her password replace her factor.
        before = p.store.get_totp("alice")
        assert (await p.password_step("alice")).status_code == 303
        page = await p.client.get("/invite/enroll")
        assert page.status_code == 303
        assert page.headers["location"] == "/signin"
        form = await p.client.get("/signin/code")
        forced = await p.post("/invite/enroll", {"csrf": csrf_of(form), "code": "123456"})
        assert forced.status_code == 303
        assert p.store.get_totp("alice") == before


async def test_wrong_enrolment_code_stores_nothing(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        assert (await _password(p, _invite(p))).status_code == 303
        page = await _enroll(p, "000000")
        assert page.status_code == 200
        assert _message(page.text) is not None
        assert p.store.get_totp("bob") is None
        assert (await p.client.get("/")).status_code == 303
        # The right code still works after a wrong one.
        assert (await _enroll(p)).status_code == 303
        assert p.store.get_totp("bob") is not None


async def test_confirming_code_cannot_be_replayed_at_sign_in(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        assert (await _password(p, _invite(p))).status_code == 303
        page = await p.client.get("/invite/enroll")
        code = pyotp.TOTP(_secret_of(page)).at(p.clock())
        await p.post("/invite/enroll", {"csrf": csrf_of(page), "code": code})
        record = p.store.get_totp("bob")
        assert record is not None
        assert record.last_step == int(p.clock() // 30)


async def test_csrf_invite_post_without_token_or_from_another_origin_is_refused(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        token = _invite(p)
        form = await p.client.get(f"/invite/{token}")
        data = {"username": "bob", "password": PASSWORD}
        no_token = await p.post(f"/invite/{token}", data)
        other = await p.post(
            f"/invite/{token}", {**data, "csrf": csrf_of(form)}, origin="https://evil.test"
        )
        assert no_token.status_code == other.status_code == 403
        assert p.service.calls == []
        assert (await _password(p, token)).status_code == 303


async def test_invite_password_guessing_is_rate_limited(tmp_path: Path) -> None:
    async with portal(tmp_path, max_sign_ins_per_minute=3) as p:
        token = _invite(p)
        codes = [(await _password(p, token, password=f"guess{i}")).status_code for i in range(5)]
        assert codes[:3] == [200, 200, 200]
        assert codes[3:] == [429, 429]
        assert len(p.service.calls) == 3


async def test_store_failure_at_enrolment_answers_503_and_opens_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imapguard.errors import StateUnavailable

    async with portal(tmp_path) as p:
        assert (await _password(p, _invite(p))).status_code == 303

        def down(*args: object) -> None:
            raise StateUnavailable("set_totp", "disk I/O error")

        monkeypatch.setattr(p.store, "set_totp", down)
        page = await _enroll(p)
        assert page.status_code == 503
        assert [s.level for s in p.store.live()] == ["password"]
