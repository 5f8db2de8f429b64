"""App passwords in the portal: made behind a fresh second factor, shown once and
never again (no later page, no audit line), scoped as asked, revoked only within
the signed-in account, and no more than an account may have."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import httpx
import pytest

from imapguard.auth import app_passwords
from imapguard.portal.app_passwords import MAX_APP_PASSWORDS
from imapguard.secret import Secret
from tests.unit.portal.support import Portal, csrf_of, portal

pytestmark = pytest.mark.asyncio

_PASSWORD = re.compile(r'<output id="new-password"[^>]*>([^<]+)</output>')


def shown_password(page: httpx.Response) -> str:
    found = _PASSWORD.search(page.text)
    assert found is not None, page.text
    return found.group(1)


async def create(p: Portal, label: str = "phone", **scope: str) -> httpx.Response:
    form = await p.client.get("/app-passwords")
    assert form.status_code == 200, form.text
    return await p.post("/app-passwords", {"csrf": csrf_of(form), "label": label, **scope})


def works(p: Portal, user: str, password: str) -> bool:
    normalized = app_passwords.normalize(Secret(password))
    assert normalized is not None
    key = p.deps.services.app_password_key if p.deps.services else b""
    digest = app_passwords.digest(key, user, normalized)
    return p.store.find_app_password(user, digest) is not None


async def test_a_new_password_is_shown_once_in_groups_and_works(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        page = await create(p, "phone")
        assert page.status_code == 200
        password = shown_password(page)
        assert re.fullmatch(r"([a-z2-9]{4}-){6}[a-z2-9]{4}", password)
        assert works(p, "alice", password)
        assert not works(p, "carol", password)  # keyed with the account
        (record,) = p.store.list_app_passwords("alice")
        assert record.label == "phone"
        assert record.network is None
        assert record.expires_at is None
        assert [(e["action"], e["result"], e["reason"]) for e in p.events()[-1:]] == [
            ("app_password_create", "ok", record.id)
        ]


async def test_the_password_is_in_no_later_page_and_no_audit_line(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        password = shown_password(await create(p))
        bare = password.replace("-", "")
        for path in ("/", "/app-passwords", "/devices", "/sign-ins"):
            later = await p.client.get(path)
            assert later.status_code == 200, path
            assert password not in later.text, path
            assert bare not in later.text, path
        log = p.audit_path.read_text()
        assert password not in log
        assert bare not in log


async def test_creating_needs_a_fresh_second_factor(tmp_path: Path) -> None:
    # A session whose code is older than portal.fresh_factor (a stolen cookie, a
    # browser left open) is sent to confirm it first, and nothing is made.
    async with portal(tmp_path) as p:
        await p.sign_in()
        form = await p.client.get("/app-passwords")
        p.clock.now += p.settings.fresh_factor + 1
        stale = await p.post("/app-passwords", {"csrf": csrf_of(form), "label": "phone"})
        assert stale.status_code == 303
        assert stale.headers["location"] == "/confirm?next=/app-passwords"
        assert p.store.list_app_passwords("alice") == []


async def test_a_scope_is_stored_as_given(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        today = dt.datetime.fromtimestamp(p.clock.now, dt.UTC).date()
        day = today + dt.timedelta(days=30)
        page = await create(p, "office", network="192.0.2.77/24", expires=day.isoformat())
        assert page.status_code == 200, page.text
        (record,) = p.store.list_app_passwords("alice")
        assert record.network == "192.0.2.0/24"  # host bits dropped
        end_of_day = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
        assert record.expires_at == end_of_day.timestamp()
        assert "192.0.2.0/24" in page.text
        single = await create(p, "laptop", network="2001:db8::5")
        assert single.status_code == 200
        assert p.store.list_app_passwords("alice")[1].network == "2001:db8::5/128"


@pytest.mark.parametrize(
    ("scope", "field"),
    [
        ({"network": "192.0.2.0/33"}, "network"),
        ({"network": "not a network"}, "network"),
        ({"network": "1" * 2000}, "network"),
        ({"expires": "2020-01-01"}, "expires"),  # over already
        ({"expires": "9999-12-31"}, "expires"),  # beyond MAX_EXPIRY_DAYS
        ({"expires": "31/12/2030"}, "expires"),
        ({"label": ""}, "label"),
        ({"label": "   "}, "label"),
        ({"label": "x" * 65}, "label"),
        ({"label": "tab\there"}, "label"),
    ],
)
async def test_a_bad_scope_or_label_stores_nothing(
    tmp_path: Path, scope: dict[str, str], field: str
) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        form = await p.client.get("/app-passwords")
        data = {"csrf": csrf_of(form), "label": "phone", **scope}
        page = await p.post("/app-passwords", data)
        assert page.status_code == 400, page.text
        assert 'role="alert"' in page.text
        assert 'id="new-password"' not in page.text
        assert p.store.list_app_passwords("alice") == []
        assert p.events()[-1]["result"] == "invalid"
        assert p.events()[-1]["reason"] == field


async def test_idor_revoking_another_accounts_app_password_changes_nothing(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        key = p.deps.services.app_password_key if p.deps.services else b""
        carols, _ = app_passwords.create(p.store, key, "carol", "phone", p.clock.now)
        await p.sign_in("alice")
        page = await p.client.get("/app-passwords")
        assert carols.id not in page.text
        refused = await p.post("/app-passwords/revoke", {"csrf": csrf_of(page), "id": carols.id})
        assert refused.headers["location"] == "/app-passwords?done=nothing"
        assert [r.id for r in p.store.list_app_passwords("carol")] == [carols.id]
        assert p.store.revocations_after(0, 10) == []
        assert p.events()[-1]["result"] == "not_found"


async def test_revoking_removes_it_and_publishes_the_revocation(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        password = shown_password(await create(p))
        (record,) = p.store.list_app_passwords("alice")
        page = await p.client.get("/app-passwords")
        assert f'value="{record.id}"' in page.text
        done = await p.post("/app-passwords/revoke", {"csrf": csrf_of(page), "id": record.id})
        assert done.status_code == 303
        assert done.headers["location"] == "/app-passwords?done=revoked"
        assert not works(p, "alice", password)
        (revocation,) = p.store.revocations_after(0, 10)
        assert (revocation.user, revocation.credential) == ("alice", f"app-password:{record.id}")
        listed = await p.client.get(done.headers["location"])
        assert "Revoked." in listed.text
        assert p.events()[-1]["action"] == "app_password_revoke"


async def test_an_id_that_is_no_id_revokes_nothing(tmp_path: Path) -> None:
    # The id is put into "app-password:ID": it must not name something else.
    async with portal(tmp_path) as p:
        await p.sign_in()
        await create(p)
        page = await p.client.get("/app-passwords")
        for forged in ("", "x:y", "../1", "a" * 65, " "):
            done = await p.post("/app-passwords/revoke", {"csrf": csrf_of(page), "id": forged})
            assert done.headers["location"] == "/app-passwords?done=nothing"
        assert len(p.store.list_app_passwords("alice")) == 1


async def test_store_flood_an_account_has_at_most_the_limit(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        key = p.deps.services.app_password_key if p.deps.services else b""
        for n in range(MAX_APP_PASSWORDS):
            app_passwords.create(p.store, key, "alice", f"d{n}", p.clock.now)
        await p.sign_in()
        page = await p.client.get("/app-passwords")
        assert "the most an account can have" in page.text
        refused = await p.post("/app-passwords", {"csrf": csrf_of(page), "label": "one more"})
        assert refused.status_code == 409
        assert len(p.store.list_app_passwords("alice")) == MAX_APP_PASSWORDS


async def test_the_list_shows_last_use_and_scope(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        key = p.deps.services.app_password_key if p.deps.services else b""
        record, _ = app_passwords.create(
            p.store, key, "alice", "tablet", p.clock.now, network="198.51.100.0/24"
        )
        p.store.record_app_password_use(record.id, p.clock.now, "198.51.100.9", "K-9 Mail 6.8")
        await p.sign_in()
        page = await p.client.get("/app-passwords")
        for text in ("tablet", "198.51.100.9", "K-9 Mail 6.8", "198.51.100.0/24", "UTC"):
            assert text in page.text


async def test_the_pages_need_a_full_session(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        assert (await p.client.get("/app-passwords")).headers["location"] == "/signin"
        await p.password_step()
        assert (await p.client.get("/app-passwords")).headers["location"] == "/signin/code"
