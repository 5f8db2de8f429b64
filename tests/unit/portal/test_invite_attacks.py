"""The first access by invitation: a leaked link alone opens nothing, a link
works once, a GET (a mail scanner) spends nothing, every failure is one page,
the token is never logged, and only an invitation's session reaches the enrol
step."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import httpx
import pyotp
import pytest

from imapguard.auth import invites, totp
from imapguard.portal.app import create_app
from imapguard.portal.enrolment import begin_totp
from imapguard.portal.invite import ENROL_COOKIE, FAILED
from imapguard.portal.sessions import COOKIE, PENDING_LIFETIME
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
        p.service.users["dave"] = (PASSWORD, False)  # another account without a factor
        expired = _invite(p, lifetime=60.0)
        used = _invite(p, "dave")
        assert (await _password(p, used, "dave")).status_code == 303
        p.clock.now += 61
        unknown = invites.issue(p.store, b"k" * 32, "bob", p.clock(), 3600.0)  # another key
        forged = "A" * 43
        malformed = "not-a-token"
        pages = []
        for token in (expired, used, unknown, forged, malformed):
            async with p.browser() as b:
                page = await _password(b, token, "dave" if token == used else "bob")
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
        p.service.users["dave"] = (PASSWORD, False)
        token = _invite(p, "bob")
        # dave's own password with bob's link: no session, for either of them ...
        page = await _password(p, token, "dave")
        assert _message(page.text) == FAILED
        assert p.store.live() == []
        assert ("invite", "failed") in [(e["action"], e["result"]) for e in p.events()]
        # ... and bob's link was not spent by it.
        async with p.browser("198.51.100.7") as bob:
            assert (await _password(bob, token, "bob")).status_code == 303


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


def _cookie(response: httpx.Response, name: str) -> str | None:
    """The Set-Cookie header of `response` for `name`, if it has one."""
    found = [c for c in response.headers.get_list("set-cookie") if c.startswith(f"{name}=")]
    assert len(found) <= 1
    return found[0] if found else None


async def _bob_enrolling(p: Portal) -> tuple[str, str]:
    """bob's invitation redeemed in `p`: his seal (the cookie) and his new secret."""
    assert (await _password(p, _invite(p))).status_code == 303
    sealed = p.client.cookies.get(ENROL_COOKIE)
    assert sealed is not None
    return sealed, _secret_of(await p.client.get("/invite/enroll"))


async def test_enrol_seal_is_a_strict_host_cookie_without_the_secret_and_goes_once_used(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        first = await _password(p, _invite(p))
        header = _cookie(first, ENROL_COOKIE)
        assert header is not None
        for attribute in ("Path=/", "SameSite=Strict", "Secure", "HttpOnly"):
            assert attribute in header
        assert f"Max-Age={int(PENDING_LIFETIME)}" in header
        page = await p.client.get("/invite/enroll")
        secret = _secret_of(page)
        sealed = p.client.cookies.get(ENROL_COOKIE)
        assert sealed is not None
        assert secret not in sealed
        # A reload shows the same secret (the one the app may already have).
        assert _secret_of(await p.client.get("/invite/enroll")) == secret
        done = await _enroll(p)
        assert done.status_code == 303
        cleared = _cookie(done, ENROL_COOKIE)
        assert cleared is not None
        assert "Max-Age=0" in cleared
        assert p.client.cookies.get(ENROL_COOKIE) is None
        assert secret not in p.audit_path.read_text()


async def test_enrol_seal_replanted_in_another_session_opens_nothing(tmp_path: Path) -> None:
    """bob's seal, copied into a browser with alice's ordinary password session
    or with dave's own invitation, sets no factor for anyone."""
    async with portal(tmp_path) as p:
        p.service.users["dave"] = (PASSWORD, False)
        sealed, secret = await _bob_enrolling(p)
        alice_before = p.store.get_totp("alice")
        async with p.browser("198.51.100.7") as alice:
            assert (await alice.password_step("alice")).status_code == 303
            alice.client.cookies.set(ENROL_COOKIE, sealed)
            assert (await alice.client.get("/invite/enroll")).headers["location"] == "/signin"
            form = await alice.client.get("/signin/code")
            code = pyotp.TOTP(secret).at(p.clock())
            forced = await alice.post("/invite/enroll", {"csrf": csrf_of(form), "code": code})
            assert forced.status_code == 303
            assert forced.headers["location"] == "/signin"
        async with p.browser("198.51.100.8") as dave:
            assert (await _password(dave, _invite(dave, "dave"), "dave")).status_code == 303
            page = await dave.client.get("/invite/enroll")
            dave.client.cookies.set(ENROL_COOKIE, sealed)
            code = pyotp.TOTP(secret).at(p.clock())
            forced = await dave.post("/invite/enroll", {"csrf": csrf_of(page), "code": code})
            assert forced.headers["location"] == "/signin"
        assert p.store.get_totp("alice") == alice_before
        assert p.store.get_totp("dave") is None
        assert p.store.get_totp("bob") is None
        refused = [
            e.get("user")
            for e in p.events()
            if (e["action"], e["result"]) == ("enroll_totp", "failed")
        ]
        assert refused == ["alice", "dave"]


async def test_enrol_seal_of_the_security_page_opens_no_invitation_step(tmp_path: Path) -> None:
    """A seal bound to the session's bare id (what the security page makes)
    does not pass for an invitation's: the binding carries the purpose."""
    async with portal(tmp_path) as p:
        await _bob_enrolling(p)
        (session,) = p.store.live()
        key = p.deps.services.totp_key  # type: ignore[union-attr]
        other = begin_totp(key, session.id, "bob", p.clock(), p.settings.organisation)
        p.client.cookies.set(ENROL_COOKIE, other.token)
        assert (await p.client.get("/invite/enroll")).headers["location"] == "/signin"


async def test_tampered_enrol_seal_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        sealed, _secret = await _bob_enrolling(p)
        flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
        p.client.cookies.set(ENROL_COOKIE, flipped)
        assert (await p.client.get("/invite/enroll")).headers["location"] == "/signin"
        p.client.cookies.set(ENROL_COOKIE, sealed)
        assert (await p.client.get("/invite/enroll")).status_code == 200


async def test_enrolment_after_the_password_session_ended_stores_nothing(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        _sealed, secret = await _bob_enrolling(p)
        p.clock.now += PENDING_LIFETIME + 1
        assert (await p.client.get("/invite/enroll")).headers["location"] == "/signin"
        # The seal itself is still within enrolment.PENDING_LIFETIME: the session bounds it.
        form = await p.client.get("/signin")
        code = pyotp.TOTP(secret).at(p.clock())
        late = await p.post("/invite/enroll", {"csrf": csrf_of(form), "code": code})
        assert late.status_code == 303
        assert late.headers["location"] == "/signin"
        assert p.store.get_totp("bob") is None


async def test_enrolment_survives_a_restarted_portal_process(tmp_path: Path) -> None:
    """Nothing of the enrolment is in the portal's memory: a new app on the same
    store and keys (the portal process started again) finishes it."""
    async with portal(tmp_path) as p:
        _sealed, secret = await _bob_enrolling(p)
        restarted = dataclasses.replace(p, app=create_app(p.deps))
        async with restarted.browser() as b:
            for name in (COOKIE, ENROL_COOKIE):
                value = p.client.cookies.get(name)
                assert value is not None
                b.client.cookies.set(name, value)
            page = await b.client.get("/invite/enroll")
            assert _secret_of(page) == secret
            done = await _enroll(b)
            assert done.headers["location"] == "/"
        assert p.store.get_totp("bob") is not None


async def test_cancelled_enrolment_signs_out_and_drops_the_seal(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await _bob_enrolling(p)
        page = await p.client.get("/invite/enroll")
        assert 'action="/signout"' in page.text
        out = await p.post("/signout", {"csrf": csrf_of(page)})
        assert out.status_code == 303
        assert p.client.cookies.get(ENROL_COOKIE) is None
        assert p.client.cookies.get(COOKIE) is None
        assert (await p.client.get("/invite/enroll")).headers["location"] == "/signin"
        assert p.store.get_totp("bob") is None
