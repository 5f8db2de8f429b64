"""Recent sign-ins and "this wasn't me": the account's own sign-ins, failed ones
too; disowning one revokes its credential (published), blocks its source, tells
the admins and says so; another account's sign-in id does nothing; the owner's
own address needs a second confirmation; nothing is done twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.auth import app_passwords
from imapguard.state.portal import SignInRecord
from tests.unit.portal.support import Portal, csrf_of, portal

pytestmark = pytest.mark.asyncio

THIEF = "203.0.113.66"


def sign_in(
    p: Portal,
    user: str = "alice",
    address: str = THIEF,
    credential: str = "password",
    *,
    ok: bool = True,
) -> SignInRecord:
    p.store.ensure_user(user, p.clock.now - 3600)  # no history for made-up names
    p.store.record_sign_in(
        user,
        p.clock.now - 120,
        address,
        "LOGIN",
        ok,
        "" if ok else "wrong password",
        credential,
        "Evil Mail 1.0",
    )
    return p.store.list_sign_ins(user, 0.0, 1)[0]


def blocked(p: Portal) -> set[str]:
    defense = p.deps.services.defense if p.deps.services else None
    assert defense is not None
    return {str(b.target) for b in defense.blocks()}


async def disown(p: Portal, sign_in_id: str, **extra: str) -> tuple[int, str]:
    page = await p.client.get("/sign-ins")
    done = await p.post("/sign-ins/disown", {"csrf": csrf_of(page), "id": sign_in_id, **extra})
    return done.status_code, done.text


async def test_successful_and_failed_sign_ins_are_listed(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        ok = sign_in(p, credential="app-password:1a2b3c4d")
        failed = sign_in(p, address="198.51.100.4", ok=False)
        sign_in(p, "carol", address="192.0.2.200")
        await p.sign_in()
        page = await p.client.get("/sign-ins")
        assert page.status_code == 200
        assert f'id="sign-in-{ok.id}"' in page.text
        assert f'id="sign-in-{failed.id}"' in page.text
        for text in (THIEF, "198.51.100.4", "Refused: wrong password", "Signed in"):
            assert text in page.text
        assert "Mail app (IMAP, Evil Mail 1.0)" in page.text
        assert "a revoked device password" in page.text  # 1a2b3c4d is none of alice's
        assert "1a2b3c4d" not in page.text
        assert "192.0.2.200" not in page.text  # carol's


async def test_disowning_revokes_the_app_password_blocks_the_source_and_tells_admins(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        key = p.deps.services.app_password_key if p.deps.services else b""
        record, _ = app_passwords.create(p.store, key, "alice", "phone", p.clock.now)
        theirs = sign_in(p, credential=f"app-password:{record.id}")
        await p.sign_in()
        status, text = await disown(p, theirs.id)
        assert status == 200
        assert "no longer works" in text
        assert THIEF in text
        assert p.store.list_app_passwords("alice") == []
        (revocation,) = p.store.revocations_after(0, 10)
        assert revocation.credential == f"app-password:{record.id}"
        # Nobody else logged in from there: blocked for everyone, not only alice.
        assert blocked(p) == {f"source:{THIEF}", f"account-source:{THIEF}|alice"}
        assert f"The address {THIEF} is blocked." in text
        assert p.notices.sent == [("disowned", "alice", "192.0.2.10")]
        (event,) = p.events("disowned")
        assert (event["sign_in"], event["blocked"]) == (
            theirs.id,
            f"account-source:{THIEF}|alice source:{THIEF}",
        )
        assert p.events()[-1]["action"] == "disown"
        assert p.events()[-1]["result"] == "ok"
        again = p.store.get_sign_in("alice", theirs.id)
        assert again is not None
        assert again.disowned
        listed = await p.client.get("/sign-ins")
        assert "reported as not you" in listed.text


async def test_disowning_a_password_sign_in_ends_the_other_portal_sessions(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        theirs = sign_in(p, credential="password")
        async with p.browser("198.51.100.50") as thief:
            await thief.sign_in()
            await p.sign_in()
            assert len(p.store.live()) == 2
            status, _ = await disown(p, theirs.id)
            assert status == 200
            assert (await thief.client.get("/")).status_code == 303  # ended
            assert (await p.client.get("/")).status_code == 200  # this one survives


async def test_idor_another_accounts_sign_in_id_does_nothing(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        key = p.deps.services.app_password_key if p.deps.services else b""
        record, _ = app_passwords.create(p.store, key, "carol", "phone", p.clock.now)
        carols = sign_in(p, "carol", credential=f"app-password:{record.id}")
        await p.sign_in("alice")
        status, _ = await disown(p, carols.id)
        assert status == 404
        assert [r.id for r in p.store.list_app_passwords("carol")] == [record.id]
        assert blocked(p) == set()
        assert p.notices.sent == []
        still = p.store.get_sign_in("carol", carols.id)
        assert still is not None
        assert not still.disowned
        assert p.events()[-1]["result"] == "not_found"


async def test_the_owners_own_address_needs_a_second_confirmation(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        mine = sign_in(p, address="192.0.2.10")  # the browser's own address
        await p.sign_in()
        status, text = await disown(p, mine.id)
        assert status == 200
        assert "the address you\nare using right now" in text
        assert blocked(p) == set()
        still = p.store.get_sign_in("alice", mine.id)
        assert still is not None
        assert not still.disowned
        status, _ = await disown(p, mine.id, confirm="yes")
        assert status == 200
        assert blocked(p) == {"source:192.0.2.10", "account-source:192.0.2.10|alice"}


async def test_a_disowned_sign_in_is_not_disowned_twice(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        theirs = sign_in(p)
        await p.sign_in()
        assert (await disown(p, theirs.id))[0] == 200
        assert (await disown(p, theirs.id))[0] == 404
        assert len(p.events("disowned")) == 1
        assert len(p.notices.sent) == 1
        assert p.events()[-1]["result"] == "already"


async def test_disowning_needs_the_csrf_token(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        theirs = sign_in(p)
        await p.sign_in()
        refused = await p.post("/sign-ins/disown", {"id": theirs.id})
        assert refused.status_code == 403
        assert blocked(p) == set()
