"""A change of how the account signs in (an authenticator app set up, replaced or
removed, a passkey added or removed, new recovery codes, a new app password)
ends the account's other portal sessions and tells the owner (`portal.changes`);
two removals at once never take the last second factor (review finding 8)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import pyotp
import pytest

from imapguard.errors import StateUnavailable
from imapguard.notify import OWNER_ONLY, NoticeKind
from imapguard.portal.changes import CHANGES
from tests.unit.portal.support import Portal, csrf_of, portal
from tests.unit.portal.test_app_passwords import create
from tests.unit.portal.test_factors import pending_of, register_passkey, shown_secret, soft_key

pytestmark = pytest.mark.asyncio

OWNER_IP = "192.0.2.10"
THIEF_IP = "198.51.100.66"


@asynccontextmanager
async def owner_and_thief(tmp_path: Path) -> AsyncIterator[tuple[Portal, Portal]]:
    """alice signed in at home, and a thief with a full session of hers (a
    stolen cookie is the same thing) in another browser."""
    async with portal(tmp_path, client_ip=OWNER_IP) as owner:
        await owner.sign_in()
        async with owner.browser(THIEF_IP) as thief:
            await thief.sign_in()
            assert await signed_in(thief)
            yield owner, thief


async def signed_in(p: Portal) -> bool:
    page = await p.client.get("/")
    return page.status_code == 200


async def replace_totp(p: Portal) -> None:
    page = await p.client.get("/security/totp")
    code = pyotp.TOTP(shown_secret(page)).at(p.clock.now)
    form = {"csrf": csrf_of(page), "pending": pending_of(page), "code": code}
    done = await p.post("/security/totp", form)
    assert done.headers["location"] == "/security?done=totp", done.text


def ended_lines(p: Portal) -> list[str | None]:
    return [e.get("reason") for e in p.events() if e["action"] == "session_revoke_others"]


async def test_a_stolen_session_ends_when_the_owner_replaces_the_authenticator_app(
    tmp_path: Path,
) -> None:
    async with owner_and_thief(tmp_path) as (owner, thief):
        await replace_totp(owner)
        assert not await signed_in(thief)
        assert await signed_in(owner)  # the session that made the change stays
        assert owner.notices.sent[-1] == ("totp_replaced", "alice", OWNER_IP)
        assert ended_lines(owner) == ["1 ended: totp_replaced"]
        # The change's own line is as before.
        changes = [(e["action"], e["result"], e.get("reason")) for e in owner.events()]
        assert ("totp_enrol", "ok", "replaced") in changes


async def test_a_stolen_session_ends_when_the_owner_adds_a_passkey(tmp_path: Path) -> None:
    async with owner_and_thief(tmp_path) as (owner, thief):
        assert (await register_passkey(owner, soft_key())).status_code == 303
        assert not await signed_in(thief)
        assert await signed_in(owner)
        assert owner.notices.sent[-1] == ("passkey_added", "alice", OWNER_IP)
        assert ended_lines(owner) == ["1 ended: passkey_added"]


async def test_a_stolen_session_ends_when_the_owner_removes_a_factor(tmp_path: Path) -> None:
    async with portal(tmp_path, client_ip=OWNER_IP) as owner:
        await owner.sign_in()
        assert (await register_passkey(owner, soft_key())).status_code == 303
        async with owner.browser(THIEF_IP) as thief:
            await thief.sign_in()
            page = await owner.client.get("/security")
            (passkey,) = owner.store.list_passkeys("alice")
            gone = await owner.post(
                "/security/passkeys/remove", {"csrf": csrf_of(page), "id": passkey.id}
            )
            assert gone.headers["location"] == "/security?done=passkey_removed"
            assert not await signed_in(thief)
            assert owner.notices.sent[-1] == ("passkey_removed", "alice", OWNER_IP)
            # Again: a passkey besides the app, a thief, and the app removed.
            assert (await register_passkey(owner, soft_key())).status_code == 303
            await thief.sign_in()
            gone = await owner.post("/security/totp/remove", {"csrf": csrf_of(page)})
            assert gone.headers["location"] == "/security?done=totp_removed"
            assert not await signed_in(thief)
            assert await signed_in(owner)
            assert owner.notices.sent[-1] == ("totp_removed", "alice", OWNER_IP)


async def test_a_stolen_session_ends_when_the_owner_makes_new_recovery_codes(
    tmp_path: Path,
) -> None:
    async with owner_and_thief(tmp_path) as (owner, thief):
        page = await owner.client.get("/security/recovery")
        made = await owner.post("/security/recovery", {"csrf": csrf_of(page)})
        assert made.status_code == 200
        assert not await signed_in(thief)
        assert owner.notices.sent[-1] == ("recovery_codes", "alice", OWNER_IP)


async def test_a_stolen_session_ends_when_the_owner_creates_an_app_password(
    tmp_path: Path,
) -> None:
    async with owner_and_thief(tmp_path) as (owner, thief):
        made = await create(owner, "phone")
        assert made.status_code == 200
        assert not await signed_in(thief)
        assert await signed_in(owner)
        assert owner.notices.sent[-1] == ("app_password_created", "alice", OWNER_IP)


async def test_the_owner_is_told_and_signed_out_when_a_thief_replaces_the_app(
    tmp_path: Path,
) -> None:
    """The other way round: a thief with a fresh session makes the account
    theirs. The owner's session ends (they notice) and the notice names the
    thief's address."""
    async with owner_and_thief(tmp_path) as (owner, thief):
        await replace_totp(thief)
        assert not await signed_in(owner)
        assert thief.notices.sent[-1] == ("totp_replaced", "alice", THIEF_IP)


async def test_a_change_that_did_not_happen_ends_nothing_and_tells_nobody(
    tmp_path: Path,
) -> None:
    async with owner_and_thief(tmp_path) as (owner, thief):
        told = list(owner.notices.sent)
        # A wrong code, the last factor, another account's passkey id, a rename.
        page = await owner.client.get("/security/totp")
        form = {"csrf": csrf_of(page), "pending": pending_of(page), "code": "000000"}
        assert (await owner.post("/security/totp", form)).status_code == 200
        refused = await owner.post("/security/totp/remove", {"csrf": csrf_of(page)})
        assert refused.headers["location"] == "/security?done=last"
        other = await owner.post(
            "/security/passkeys/remove", {"csrf": csrf_of(page), "id": "0123456789abcdef"}
        )
        assert other.headers["location"] == "/security"
        assert await signed_in(thief)
        assert owner.notices.sent == told
        assert ended_lines(owner) == []


async def test_a_store_failure_while_ending_the_others_is_audited(tmp_path: Path) -> None:
    async with owner_and_thief(tmp_path) as (owner, _thief):

        def broken(user: str, *, keep: str | None = None) -> int:
            raise StateUnavailable("revoke portal sessions", "disk I/O error")

        owner.store.revoke_portal_sessions = broken  # type: ignore[method-assign]
        made = await create(owner, "phone")
        assert made.status_code == 200  # the password was made: it is shown
        lines = [
            (e["result"], e.get("reason"))
            for e in owner.events()
            if e["action"] == "session_revoke_others"
        ]
        assert lines == [("failed", "after app_password_created")]
        assert owner.notices.sent[-1] == ("app_password_created", "alice", OWNER_IP)


async def test_two_tabs_removing_the_app_and_the_last_passkey_at_once_leave_one(
    tmp_path: Path,
) -> None:
    """Both removals pass the "not the last one" check before either removes,
    unless the store counts and removes in one step."""
    with ThreadPoolExecutor(max_workers=1) as store_thread:
        async with portal(tmp_path, executor=store_thread) as p:
            await p.sign_in()
            assert (await register_passkey(p, soft_key())).status_code == 303
            (passkey,) = p.store.list_passkeys("alice")
            page = await p.client.get("/security")
            csrf = csrf_of(page)
            results = await asyncio.gather(
                p.post("/security/totp/remove", {"csrf": csrf}),
                p.post("/security/passkeys/remove", {"csrf": csrf, "id": passkey.id}),
            )
            left = int(p.store.get_totp("alice") is not None) + len(p.store.list_passkeys("alice"))
            assert left == 1
            locations = sorted(r.headers["location"] for r in results)
            assert locations[0] == "/security?done=last"
            assert locations[1] in ("/security?done=passkey_removed", "/security?done=totp_removed")


async def test_every_change_the_portal_tells_is_an_owner_only_notice_kind() -> None:
    for change in CHANGES:
        assert NoticeKind(change) in OWNER_ONLY
