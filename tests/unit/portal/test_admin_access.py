"""Who reaches the admin pages: only an admin group member with both factors.
Everyone else signed in gets 404 on every admin route (the stream and every
POST included, with a valid CSRF token of their own); a password-only admin
session is sent to the code step; nobody signed in is sent to sign in. And
every admin page follows the portal's page rules."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.unit.portal.support import ORIGIN, Portal, csrf_of, portal

pytestmark = pytest.mark.asyncio

GETS = [
    "/admin",
    "/admin/events",
    "/admin/events/stream",
    "/admin/blocks",
    "/admin/lockouts",
    "/admin/charts",
    "/admin/users",
    "/admin/users/alice",
    "/admin/policy",
]
POSTS = {
    "/admin/blocks/clear": {"target": "source:192.0.2.66"},
    "/admin/lockouts/unlock": {"user": "alice"},
    "/admin/users/alice/revoke": {"credential": "everything"},
}
PAGES = [p for p in GETS if not p.endswith("/stream")] + [
    "/admin/policy?user=alice&ip=192.0.2.1",
    "/admin/users?name=nobody",
]


async def _own_csrf(p: Portal) -> str:
    """A valid CSRF token of the signed-in session (from a page it may see)."""
    return csrf_of(await p.client.get("/"))


async def test_non_admin_gets_404_on_every_admin_route(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("alice")
        p.store.add_app_password("alice", "phone", b"d" * 32, p.clock())
        token = await _own_csrf(p)
        for path in GETS:
            response = await p.client.get(path)
            assert response.status_code == 404, path
            assert "admin" not in response.text.lower()
        for path, data in POSTS.items():
            response = await p.post(path, {"csrf": token, **data})
            assert response.status_code == 404, path
        # Nothing was revoked on the way.
        assert len(p.store.list_app_passwords("alice")) == 1
        assert [e for e in p.events() if e["action"].startswith("admin_")] == []


async def test_admin_link_only_in_an_admins_navigation(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("alice")
        assert 'href="/admin"' not in (await p.client.get("/")).text
        async with p.browser() as admin:
            await admin.sign_in("carol")
            assert 'href="/admin"' in (await admin.client.get("/")).text


async def test_password_only_admin_session_is_sent_to_the_code_step(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        step = await p.password_step("carol")
        assert step.status_code == 303
        token = csrf_of(await p.client.get("/signin/code"))
        for path in GETS:
            response = await p.client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] == "/signin/code"
        for path, data in POSTS.items():
            response = await p.post(path, {"csrf": token, **data})
            assert response.status_code == 303, path
            assert response.headers["location"] == "/signin/code"


async def test_nobody_signed_in_is_sent_to_sign_in(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        for path in GETS:
            response = await p.client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] == "/signin"


async def test_admin_posts_without_csrf_or_from_elsewhere_are_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        token = await _own_csrf(p)
        for path, data in POSTS.items():
            assert (await p.post(path, data)).status_code == 403, path
            assert (await p.post(path, {"csrf": "x" * 43, **data})).status_code == 403, path
            foreign = await p.post(path, {"csrf": token, **data}, origin="https://evil.test")
            assert foreign.status_code == 403, path
        assert [e for e in p.events() if e["action"].startswith("admin_")] == []


class _PageRules(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.h1 = 0
        self.labels: set[str] = set()
        self.fields: list[str] = []
        self.inline: list[str] = []
        self.forms: list[dict[str, str | None]] = []
        self.hidden_in_form: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "h1":
            self.h1 += 1
        if tag == "label" and a.get("for"):
            self.labels.add(str(a["for"]))
        if tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.fields.append(str(a.get("id")))
        if tag == "input" and a.get("type") == "hidden" and a.get("name") == "csrf":
            self.hidden_in_form.append(str(a.get("value")))
        if tag == "form":
            self.forms.append(a)
        if tag == "style" or (tag == "script" and not a.get("src")):
            self.inline.append(tag)
        if "style" in a or any(k.startswith("on") for k in a):
            self.inline.append(f"{tag} attribute")


@pytest.mark.parametrize("path", PAGES)
async def test_every_admin_page_follows_the_page_rules(tmp_path: Path, path: str) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        page = await p.client.get(path)
        assert page.status_code in (200, 404), page.text
        rules = _PageRules()
        rules.feed(page.text)
        assert rules.h1 == 1
        assert rules.inline == []
        missing = [f for f in rules.fields if f not in rules.labels]
        assert missing == [], missing
        posts = [f for f in rules.forms if (f.get("method") or "get").lower() == "post"]
        assert len(rules.hidden_in_form) >= len(posts)
        assert re.search(r"<script(?![^>]*src=)", page.text) is None
        assert page.headers["cache-control"] == "no-store"


async def test_stream_404_leaks_nothing_to_a_non_admin(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("alice")
        response = await p.client.get(
            "/admin/events/stream", headers={"Accept": "text/event-stream", "Origin": ORIGIN}
        )
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/plain")
