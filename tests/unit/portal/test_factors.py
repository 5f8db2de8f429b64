"""The sign-in methods page: TOTP enrolment (a wrong code stores nothing, the
pending secret cannot be replanted), recovery codes (shown once, used once),
the last factor, and the fresh-factor check in front of every change."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pyotp
import pytest

from imapguard.auth import recovery, totp
from imapguard.portal.enrolment import PENDING_LIFETIME
from imapguard.portal.headers import CONTENT_SECURITY_POLICY
from imapguard.secret import Secret
from tests.softkey import SoftKey
from tests.unit.portal.support import ORIGIN, Portal, csrf_of, portal

pytestmark = pytest.mark.asyncio

_SECRET = re.compile(r'<code class="secret">([A-Z2-7 ]+)</code>')
_PENDING = re.compile(r'name="pending" value="([^"]+)"')


def shown_secret(page: httpx.Response) -> str:
    found = _SECRET.search(page.text)
    assert found is not None, page.text
    return found.group(1).replace(" ", "")


def pending_of(page: httpx.Response) -> str:
    found = _PENDING.search(page.text)
    assert found is not None, page.text
    return found.group(1)


def soft_key() -> SoftKey:
    return SoftKey(rp_id="portal.test", origin=ORIGIN)


async def passkey_options(p: Portal, path: str, page: httpx.Response) -> httpx.Response:
    """The options a page's script fetches (POST with the X-CSRF-Token header)."""
    return await p.client.post(path, headers={"Origin": ORIGIN, "X-CSRF-Token": csrf_of(page)})


async def register_passkey(p: Portal, key: SoftKey, name: str = "Laptop") -> httpx.Response:
    """What static/webauthn.js does on /security/passkeys/new, with a soft key."""
    page = await p.client.get("/security/passkeys/new")
    assert page.status_code == 200, page.text
    options = await passkey_options(p, "/security/passkeys/options", page)
    assert options.status_code == 200, options.text
    credential = key.register(options.text).decode()
    form = {"csrf": csrf_of(page), "name": name, "credential": credential}
    return await p.post("/security/passkeys", form)


async def test_security_page_lists_the_methods(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        assert (await register_passkey(p, soft_key(), "Work laptop")).status_code == 303
        made = await p.post("/security/recovery", {"csrf": csrf_of(await p.client.get("/"))})
        assert made.status_code == 200
        page = await p.client.get("/security")
        assert page.status_code == 200
        assert page.text.count("<h1>") == 1
        assert "Set up on 2027-01-15 08:00 UTC." in page.text  # alice has TOTP
        assert "Work laptop" in page.text
        assert "never" in page.text  # not used yet
        assert "10 unused recovery codes left." in page.text
        for code in re.findall(r"<code>([0-9A-Z-]{11})</code>", made.text):
            assert code not in page.text


async def test_security_pages_need_a_full_session(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        for path in ("/security", "/security/totp", "/security/recovery", "/confirm"):
            response = await p.client.get(path)
            assert response.status_code == 303
            assert response.headers["location"] == "/signin"
        await p.password_step()
        for path in ("/security", "/security/passkeys/new", "/confirm"):
            response = await p.client.get(path)
            assert response.headers["location"] == "/signin/code"


async def test_totp_enrol_with_a_wrong_code_stores_nothing(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        before = p.store.get_totp("alice")
        page = await p.client.get("/security/totp")
        assert page.status_code == 200
        secret = shown_secret(page)
        right = pyotp.TOTP(secret).at(p.clock.now)
        wrong = f"{(int(right) + 1) % 1_000_000:06d}"
        form = {"csrf": csrf_of(page), "pending": pending_of(page), "code": wrong}
        refused = await p.post("/security/totp", form)
        assert refused.status_code == 200
        assert "That code is not right" in refused.text
        assert p.store.get_totp("alice") == before
        # The same secret can be confirmed on the page that said no.
        assert shown_secret(refused) == secret
        form = {"csrf": csrf_of(refused), "pending": pending_of(refused), "code": right}
        done = await p.post("/security/totp", form)
        assert done.status_code == 303
        assert done.headers["location"] == "/security?done=totp"
        record = p.store.get_totp("alice")
        assert record is not None
        assert totp.unseal(p.deps.services.totp_key, "alice", record.sealed) == Secret(secret)  # type: ignore[union-attr]
        # The code typed to enrol is spent: it signs nobody in afterwards.
        assert record.last_step == int(p.clock.now) // 30
        results = [(e["action"], e["result"], e.get("reason")) for e in p.events()]
        assert ("totp_enrol", "failed", "wrong code") in results
        assert ("totp_enrol", "ok", "replaced") in results
        assert secret not in p.audit_path.read_text()


async def test_totp_pending_secret_replanted_in_another_session_is_refused(
    tmp_path: Path,
) -> None:
    # A secret an attacker enrolled on their own account (or planted in a page)
    # must not become someone else's second factor.
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        theirs = await p.client.get("/security/totp")
        planted, code = pending_of(theirs), pyotp.TOTP(shown_secret(theirs)).at(p.clock.now)
        async with p.browser() as victim:
            await victim.sign_in("alice")
            before = victim.store.get_totp("alice")
            page = await victim.client.get("/security/totp")
            form = {"csrf": csrf_of(page), "pending": planted, "code": code}
            response = await victim.post("/security/totp", form)
            assert response.status_code == 303
            assert response.headers["location"] == "/security/totp"
            assert victim.store.get_totp("alice") == before
            tampered = pending_of(page)[:-2] + (
                "AA" if not pending_of(page).endswith("AA") else "BB"
            )
            form = {"csrf": csrf_of(page), "pending": tampered, "code": code}
            assert (await victim.post("/security/totp", form)).headers["location"] == (
                "/security/totp"
            )
            assert victim.store.get_totp("alice") == before
            # Alice's own secret, shown to another of her sessions (a page left
            # open elsewhere, or read over a shoulder), opens in that one only.
            async with p.browser() as elsewhere:
                await elsewhere.sign_in("alice")
                shown = await elsewhere.client.get("/security/totp")
                secret = shown_secret(shown)
                form = {
                    "csrf": csrf_of(page),
                    "pending": pending_of(shown),
                    "code": pyotp.TOTP(secret).at(p.clock.now),
                }
                response = await victim.post("/security/totp", form)
                assert response.headers["location"] == "/security/totp"
                assert victim.store.get_totp("alice") == before
        failed = [e for e in p.events() if e["action"] == "totp_enrol"]
        assert [(e["user"], e["result"]) for e in failed] == [("alice", "failed")] * 3


async def test_totp_pending_secret_expires(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        page = await p.client.get("/security/totp")
        secret = shown_secret(page)
        before = p.store.get_totp("alice")
        p.clock.now += PENDING_LIFETIME + 1
        # (the session is no longer fresh either: confirm it again first)
        confirm = await p.client.get("/confirm?next=/security/totp")
        await p.post("/confirm", {"csrf": csrf_of(confirm), "method": "totp", "code": "123456"})
        code = pyotp.TOTP(secret).at(p.clock.now)
        fresh = await p.client.get("/security")
        form = {"csrf": csrf_of(fresh), "pending": pending_of(page), "code": code}
        response = await p.post("/security/totp", form)
        assert response.headers["location"] == "/security/totp"
        assert p.store.get_totp("alice") == before


async def test_totp_qr_code_passes_the_csp(tmp_path: Path) -> None:
    # No inline script or style (the CSP allows neither): the QR is an SVG drawn
    # with presentation attributes only, and the secret is also shown as text.
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    async with portal(tmp_path) as p:
        await p.sign_in()
        page = await p.client.get("/security/totp")
        assert "<svg" in page.text
        assert 'fill="#fff"' in page.text  # light modules drawn: it reads on a dark page
        assert "style=" not in page.text.lower()
        assert "<script" not in page.text.lower()
        assert "<style" not in page.text.lower()
        assert "otpauth://" not in page.text  # the URI is only in the QR code
        assert len(shown_secret(page)) == 32
        assert '<form method="post" action="/security/totp">' in page.text


async def test_removing_the_last_second_factor_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        page = await p.client.get("/security")
        refused = await p.post("/security/totp/remove", {"csrf": csrf_of(page)})
        assert refused.headers["location"] == "/security?done=last"
        assert p.store.get_totp("alice") is not None
        assert "your last second factor" in (await p.client.get("/security?done=last")).text
        # With a passkey besides, the authenticator app can go; then the passkey cannot.
        assert (await register_passkey(p, soft_key())).status_code == 303
        removed = await p.post("/security/totp/remove", {"csrf": csrf_of(page)})
        assert removed.headers["location"] == "/security?done=totp_removed"
        assert p.store.get_totp("alice") is None
        (only,) = p.store.list_passkeys("alice")
        last = await p.post("/security/passkeys/remove", {"csrf": csrf_of(page), "id": only.id})
        assert last.headers["location"] == "/security?done=last"
        assert p.store.list_passkeys("alice") == [only]
        results = [(e["action"], e["result"]) for e in p.events() if e["action"] != "sign_in"]
        assert ("totp_remove", "refused") in results
        assert ("totp_remove", "ok") in results
        assert ("passkey_remove", "refused") in results


async def test_recovery_codes_shown_once_stored_hashed_and_usable_once(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        page = await p.client.get("/security/recovery")
        made = await p.post("/security/recovery", {"csrf": csrf_of(page)})
        assert made.status_code == 200
        assert made.headers["cache-control"] == "no-store"
        codes = re.findall(r"<code>([0-9A-Z]{5}-[0-9A-Z]{5})</code>", made.text)
        assert len(codes) == recovery.COUNT == len(set(codes))
        # Never again on a page, in the audit log or in the store's file.
        for path in ("/security", "/security/recovery"):
            text = (await p.client.get(path)).text
            assert not any(code in text for code in codes)
        audit = p.audit_path.read_text()
        database = (tmp_path / "state.db").read_bytes()
        for code in codes:
            assert code not in audit
            assert code.replace("-", "").encode() not in database
        assert p.store.count_recovery_codes("alice") == recovery.COUNT
        async with p.browser() as other:
            await other.password_step()
            step = await other.client.get("/signin/code")
            assert 'name="recovery"' in step.text
            typed = codes[3].lower().replace("-", " ")  # typing is forgiving
            form = {"csrf": csrf_of(step), "method": "recovery", "recovery": typed}
            done = await other.post("/signin/code", form)
            assert done.status_code == 303
            assert done.headers["location"] == "/"
        assert p.store.count_recovery_codes("alice") == recovery.COUNT - 1
        async with p.browser() as again:
            await again.password_step()
            step = await again.client.get("/signin/code")
            form = {"csrf": csrf_of(step), "method": "recovery", "recovery": codes[3]}
            reused = await again.post("/signin/code", form)
            assert reused.status_code == 200
            assert "The user name, password or code is not right." in reused.text
        # A new set replaces the old one, used or not.
        fresh = await p.client.get("/security/recovery")
        await p.post("/security/recovery", {"csrf": csrf_of(fresh)})
        async with p.browser() as old:
            await old.password_step()
            step = await old.client.get("/signin/code")
            form = {"csrf": csrf_of(step), "method": "recovery", "recovery": codes[0]}
            assert (await old.post("/signin/code", form)).status_code == 200
        made_lines = [e for e in p.events() if e["action"] == "recovery_codes"]
        assert [(e["user"], e["result"]) for e in made_lines] == [("alice", "ok")] * 2


async def test_stale_session_changes_no_factor_and_goes_to_confirm(tmp_path: Path) -> None:
    # A session left open on a shared computer cannot add or remove a factor
    # without the second factor again.
    async with portal(tmp_path) as p:
        await p.sign_in()
        page = await p.client.get("/security")
        p.clock.now += p.settings.fresh_factor + 1
        attempts = {
            "/security/recovery": {"csrf": csrf_of(page)},
            "/security/totp/remove": {"csrf": csrf_of(page)},
            "/security/passkeys/remove": {"csrf": csrf_of(page), "id": "x"},
            "/security/totp": {"csrf": csrf_of(page), "pending": "x", "code": "123456"},
            "/security/passkeys": {"csrf": csrf_of(page), "credential": "{}"},
        }
        for path, form in attempts.items():
            response = await p.post(path, form)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/confirm?next=/security"), path
        for path in ("/security/totp", "/security/passkeys/new"):
            response = await p.client.get(path)
            assert response.headers["location"] == f"/confirm?next={path}"
        options = await passkey_options(p, "/security/passkeys/options", page)
        assert options.status_code == 401
        assert options.json() == {"location": "/confirm?next=/security/passkeys/new"}
        assert p.store.count_recovery_codes("alice") == 0
        assert p.store.get_totp("alice") is not None
        assert [e["action"] for e in p.events()] == ["sign_in", "second_factor"]
        # The overview itself needs no fresh check.
        assert (await p.client.get("/security")).status_code == 200


async def test_csrf_factor_changes_need_the_token(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        for path in ("/security/recovery", "/security/totp/remove", "/security/passkeys/options"):
            response = await p.post(path, {})
            assert response.status_code == 403, path
            foreign = await p.client.post(
                path, headers={"Origin": "https://evil.example", "X-CSRF-Token": "x"}
            )
            assert foreign.status_code == 403, path
        assert p.store.get_totp("alice") is not None
        assert p.store.count_recovery_codes("alice") == 0


async def test_security_page_says_when_codes_are_locked(tmp_path: Path) -> None:
    # Someone with the password is guessing codes: the owner sees it here.
    async with portal(tmp_path) as p:
        await p.sign_in()
        assert "Codes are locked" not in (await p.client.get("/security")).text
        p.store.record_totp_failure("alice", p.clock.now, 300.0, 1, 300.0)
        assert "Codes are locked" in (await p.client.get("/security")).text
        p.clock.now += 301
        assert "Codes are locked" not in (await p.client.get("/security")).text
