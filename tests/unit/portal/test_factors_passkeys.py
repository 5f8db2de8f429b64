"""Passkeys through the pages, with a software authenticator (tests/softkey.py):
register, sign in with one, and what an attacker would try: a cloned
authenticator, a replayed challenge, another account's passkey or id, another
origin."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from imapguard.portal.challenges import LIFETIME, MAX_PENDING, Challenges
from imapguard.portal.signin import FAILED, MAX_CODE_FAILURES
from imapguard.state.portal import MAX_PASSKEYS
from tests.softkey import SoftKey
from tests.unit.portal.support import ORIGIN, Portal, csrf_of, portal
from tests.unit.portal.test_factors import passkey_options, register_passkey, soft_key

pytestmark = pytest.mark.asyncio


async def passkey_step(
    p: Portal, key: SoftKey, user: str = "alice", **sign: object
) -> httpx.Response:
    """Password, then the code page's passkey form, as the page's script does it."""
    assert (await p.password_step(user)).status_code == 303
    page = await p.client.get("/signin/code")
    options = await passkey_options(p, "/signin/passkey-options", page)
    assert options.status_code == 200, options.text
    credential = key.sign(options.text, **sign).decode()  # type: ignore[arg-type]
    form = {"csrf": csrf_of(page), "method": "passkey", "credential": credential}
    return await p.post("/signin/code", form)


async def test_register_a_passkey_and_sign_in_with_it(tmp_path: Path) -> None:
    key = soft_key()
    async with portal(tmp_path) as p:
        await p.sign_in()
        added = await register_passkey(p, key, "Phone")
        assert added.status_code == 303
        assert added.headers["location"] == "/security?done=passkey"
        (record,) = p.store.list_passkeys("alice")
        assert (record.name, record.credential_id, record.last_used_at) == (
            "Phone",
            key.credential_id,
            None,
        )
        async with p.browser() as other:
            done = await passkey_step(other, key)
            assert done.status_code == 303, done.text
            assert done.headers["location"] == "/"
            home = await other.client.get("/")
            assert home.status_code == 200
        (used,) = p.store.list_passkeys("alice")
        assert (used.sign_count, used.last_used_at) == (1, 1.0)
        kinds = [kind for kind, _, _ in p.service.calls]
        assert kinds[-1] == "passkey"
        assert ("passkey_add", "ok") in [(e["action"], e["result"]) for e in p.events()]
        assert ("second_factor", "ok", "passkey") in [
            (e["action"], e["result"], e.get("reason")) for e in p.events()
        ]


async def test_a_passkey_alone_is_a_second_factor(tmp_path: Path) -> None:
    # An account whose only factor is a passkey gets past the password step
    # and is offered the passkey (no code form).
    key = soft_key()
    async with portal(tmp_path) as p:
        await p.sign_in()
        await register_passkey(p, key)
        page = await p.client.get("/security")
        await p.post("/security/totp/remove", {"csrf": csrf_of(page)})
        assert p.store.get_totp("alice") is None
        p.service.users["alice"] = (p.service.users["alice"][0], False)
        async with p.browser() as other:
            assert (await other.password_step()).status_code == 303
            step = await other.client.get("/signin/code")
            assert 'data-webauthn="get"' in step.text
            assert 'name="code"' not in step.text
            assert '<script src="/static/webauthn.js" defer></script>' in step.text
        async with p.browser() as other:
            assert (await passkey_step(other, key)).headers["location"] == "/"


async def test_cloned_authenticator_counter_that_did_not_grow_is_refused(tmp_path: Path) -> None:
    key = soft_key()
    async with portal(tmp_path) as p:
        await p.sign_in()
        await register_passkey(p, key)
        async with p.browser() as first:
            assert (await passkey_step(first, key, bump=5)).status_code == 303
        # A copy of the key made before those uses signs with an older counter.
        key.counter = 2
        async with p.browser() as clone:
            refused = await passkey_step(clone, key)
            assert refused.status_code == 200
            assert "The user name, password or code is not right." in refused.text
            assert (await clone.client.get("/")).status_code == 303
        (record,) = p.store.list_passkeys("alice")
        assert record.sign_count == 5


async def test_replayed_challenge_is_refused(tmp_path: Path) -> None:
    key = soft_key()
    async with portal(tmp_path) as p:
        await p.sign_in()
        await register_passkey(p, key)
        async with p.browser() as other:
            assert (await other.password_step()).status_code == 303
            page = await other.client.get("/signin/code")
            options = await passkey_options(other, "/signin/passkey-options", page)
            first = key.sign(options.text).decode()
            second = key.sign(options.text).decode()  # a higher counter, the same challenge
            form = {"csrf": csrf_of(page), "method": "passkey", "credential": first}
            # The challenge is spent by any answer, even a wrong one...
            broken = dict(form, credential=json.dumps({"id": "x"}))
            assert (await other.post("/signin/code", broken)).status_code == 200
            assert (await other.post("/signin/code", form)).status_code == 200
            form["credential"] = second
            assert (await other.post("/signin/code", form)).status_code == 200
            assert (await other.client.get("/")).status_code == 303


async def test_a_challenge_of_one_session_proves_nothing_in_another(tmp_path: Path) -> None:
    key = soft_key()
    async with portal(tmp_path) as p:
        await p.sign_in()
        await register_passkey(p, key)
        async with p.browser() as one, p.browser() as two:
            await one.password_step()
            page_one = await one.client.get("/signin/code")
            options = await passkey_options(one, "/signin/passkey-options", page_one)
            await two.password_step()
            page_two = await two.client.get("/signin/code")
            answer = key.sign(options.text).decode()
            form = {"csrf": csrf_of(page_two), "method": "passkey", "credential": answer}
            assert (await two.post("/signin/code", form)).status_code == 200
            assert (await two.client.get("/")).status_code == 303


async def test_another_accounts_passkey_signs_nobody_in(tmp_path: Path) -> None:
    alice_key, carol_key = soft_key(), soft_key()
    async with portal(tmp_path) as p:
        await p.sign_in()
        await register_passkey(p, alice_key)
        async with p.browser() as carol:
            await carol.sign_in("carol")
            await register_passkey(carol, carol_key)
        async with p.browser() as mallory:
            # Carol's challenge, answered with alice's passkey.
            refused = await passkey_step(mallory, alice_key, user="carol")
            assert refused.status_code == 200
            assert (await mallory.client.get("/")).status_code == 303


async def test_passkey_idor_another_accounts_id_is_neither_renamed_nor_removed(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        await register_passkey(p, soft_key(), "Alice one")
        await register_passkey(p, soft_key(), "Alice two")
        theirs = p.store.list_passkeys("alice")
        async with p.browser() as carol:
            await carol.sign_in("carol")
            await register_passkey(carol, soft_key(), "Carol's")
            page = await carol.client.get("/security")
            assert "Alice one" not in page.text
            for record in theirs:
                renamed = await carol.post(
                    "/security/passkeys/rename",
                    {"csrf": csrf_of(page), "id": record.id, "name": "pwned"},
                )
                assert renamed.headers["location"] == "/security"
                removed = await carol.post(
                    "/security/passkeys/remove", {"csrf": csrf_of(page), "id": record.id}
                )
                assert removed.headers["location"] == "/security"
        assert p.store.list_passkeys("alice") == theirs
        refused = [
            (e["user"], e["action"], e["result"])
            for e in p.events()
            if e["action"] in ("passkey_rename", "passkey_remove")
        ]
        assert (
            refused
            == [("carol", "passkey_rename", "failed"), ("carol", "passkey_remove", "failed")] * 2
        )


async def test_rename_and_remove_own_passkeys(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        await register_passkey(p, soft_key(), "Old name")
        await register_passkey(p, soft_key(), "Spare")
        first, spare = p.store.list_passkeys("alice")
        page = await p.client.get("/security")
        bad = await p.post(
            "/security/passkeys/rename",
            {"csrf": csrf_of(page), "id": first.id, "name": "evil\u202ename"},
        )
        assert bad.headers["location"] == "/security"
        assert p.store.list_passkeys("alice")[0].name == "Old name"
        # Any printable text is a name (the CSRF check once refused a form with "ü").
        umlaut = await p.post(
            "/security/passkeys/rename",
            {"csrf": csrf_of(page), "id": first.id, "name": "Jürgens Telefon"},
        )
        assert umlaut.headers["location"] == "/security?done=passkey_renamed"
        assert p.store.list_passkeys("alice")[0].name == "Jürgens Telefon"
        done = await p.post(
            "/security/passkeys/rename", {"csrf": csrf_of(page), "id": first.id, "name": "<b>New"}
        )
        assert done.headers["location"] == "/security?done=passkey_renamed"
        shown = (await p.client.get("/security")).text
        assert "&lt;b&gt;New" in shown
        assert "<b>New" not in shown
        gone = await p.post("/security/passkeys/remove", {"csrf": csrf_of(page), "id": spare.id})
        assert gone.headers["location"] == "/security?done=passkey_removed"
        assert [k.id for k in p.store.list_passkeys("alice")] == [first.id]


async def test_registration_replayed_or_from_another_origin_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        key = soft_key()
        page = await p.client.get("/security/passkeys/new")
        options = await passkey_options(p, "/security/passkeys/options", page)
        phished = key.register(options.text, origin="https://portal.test.evil.example").decode()
        form = {"csrf": csrf_of(page), "name": "x", "credential": phished}
        refused = await p.post("/security/passkeys", form)
        assert refused.status_code == 200
        assert "The passkey was refused." in refused.text
        # The challenge was spent by that answer: the right one now comes too late.
        form["credential"] = key.register(options.text).decode()
        again = await p.post("/security/passkeys", form)
        assert "not created in time" in again.text
        assert p.store.list_passkeys("alice") == []
        reasons = [e.get("reason", "") for e in p.events() if e["action"] == "passkey_add"]
        assert len(reasons) == 2
        assert "origin" in reasons[0].lower()


async def test_passkey_limit_per_account(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        for n in range(MAX_PASSKEYS):
            assert (await register_passkey(p, soft_key(), f"k{n}")).status_code == 303
        page = await p.client.get("/security/passkeys/new")
        assert "as many passkeys as an account may have" in page.text
        options = await passkey_options(p, "/security/passkeys/options", page)
        form = {
            "csrf": csrf_of(page),
            "name": "one more",
            "credential": soft_key().register(options.text).decode(),
        }
        refused = await p.post("/security/passkeys", form)
        assert refused.status_code == 200
        assert len(p.store.list_passkeys("alice")) == MAX_PASSKEYS


async def test_passkey_failures_count_with_code_failures(tmp_path: Path) -> None:
    key = soft_key()
    async with portal(tmp_path, max_sign_ins_per_minute=100) as p:
        await p.sign_in()
        await register_passkey(p, key)
        async with p.browser() as other:
            await other.password_step()
            for _ in range(MAX_CODE_FAILURES - 1):
                step = await other.code_step("000000")
                assert FAILED.replace("'", "&#39;") in step.text
            page = await other.client.get("/signin/code")
            options = await passkey_options(other, "/signin/passkey-options", page)
            bad = key.sign(options.text, origin="https://evil.example").decode()
            form = {"csrf": csrf_of(page), "method": "passkey", "credential": bad}
            last = await other.post("/signin/code", form)
            assert "<h1>Sign in</h1>" in last.text  # the password session ended
            assert [s.level for s in other.store.live()] == ["full"]  # p's own only


async def test_passkey_options_need_a_password_session(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        page = await p.client.get("/signin")
        response = await p.client.post(
            "/signin/passkey-options", headers={"Origin": ORIGIN, "X-CSRF-Token": csrf_of(page)}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/signin"
        await p.password_step()
        code_page = await p.client.get("/signin/code")
        none = await passkey_options(p, "/signin/passkey-options", code_page)
        assert none.status_code == 404  # alice has no passkey


async def test_challenges_are_used_once_per_session_and_purpose_and_expire() -> None:
    challenges = Challenges()
    challenges.keep("s1", "sign_in", b"one", 100.0)
    assert challenges.take("s2", "sign_in", 100.0) is None
    assert challenges.take("s1", "confirm", 100.0) is None
    assert challenges.take("s1", "sign_in", 100.0) == b"one"
    assert challenges.take("s1", "sign_in", 100.0) is None  # used once
    challenges.keep("s1", "confirm", b"two", 100.0)
    assert challenges.take("s1", "confirm", 100.0 + LIFETIME + 1) is None
    challenges.keep("s1", "confirm", b"old", 100.0)
    challenges.keep("s1", "confirm", b"new", 101.0)  # a new one replaces it
    assert challenges.take("s1", "confirm", 102.0) == b"new"


async def test_challenges_memory_is_bounded() -> None:
    challenges = Challenges()
    for n in range(MAX_PENDING + 10):
        challenges.keep(f"s{n}", "sign_in", b"c", 0.0)
    assert len(challenges) == MAX_PENDING
    assert challenges.take("s0", "sign_in", 0.0) is None  # the oldest went first
    assert challenges.take(f"s{MAX_PENDING + 9}", "sign_in", 0.0) == b"c"
