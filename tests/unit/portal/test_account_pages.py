"""Every page of the account, device, app-password and sign-in views, as
rendered: one <h1>, every visible form field with a <label> naming it, every
POST form with its CSRF token, and nothing inline the CSP would refuse (no
script or style in the page, no event handler attributes)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from imapguard.state.accounts import DeviceKey
from tests.unit.portal.support import Portal, csrf_of, portal
from tests.unit.portal.test_app_passwords import create

pytestmark = pytest.mark.asyncio


class Structure(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.h1 = 0
        self.labels: set[str] = set()
        self.fields: list[str] = []
        self.forms: list[dict[str, str | None]] = []
        self.form_has_csrf: list[bool] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "h1":
            self.h1 += 1
        if tag == "label" and a.get("for"):
            self.labels.add(str(a["for"]))
        if tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.fields.append(str(a.get("id")))
        if tag == "input" and a.get("name") == "csrf" and self.form_has_csrf:
            self.form_has_csrf[-1] = True
        if tag == "form":
            self.forms.append(a)
            self.form_has_csrf.append(False)
        if tag == "style" or (tag == "script" and not a.get("src")):
            self.inline.append(tag)
        self.inline += [name for name, _ in attrs if name == "style" or name.startswith("on")]


def check(page: httpx.Response) -> None:
    assert page.status_code in (200, 400, 404, 409, 410), page.status_code
    s = Structure()
    s.feed(page.text)
    assert s.h1 == 1, page.text
    assert [f for f in s.fields if f not in s.labels] == [], page.text
    for form, has_csrf in zip(s.forms, s.form_has_csrf, strict=True):
        assert form.get("method") == "post"
        assert has_csrf, form
    assert s.inline == []


async def seeded(p: Portal) -> None:
    p.store.add_pending_device(
        DeviceKey("alice", "198.51.100.0/24", "iOS Mail", "17"), p.clock.now, "198.51.100.2"
    )
    p.store.trust_device(
        DeviceKey("alice", "203.0.113.0/24", "Thunderbird", "128"),
        p.clock.now,
        p.clock.now + 86400,
        "203.0.113.3",
        b"s",
    )
    p.store.record_sign_in(
        "alice", p.clock.now, "192.0.2.10", "LOGIN", True, "", "password", "Mail 1"
    )


async def test_every_page_has_one_h1_labelled_fields_tokens_and_nothing_inline(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        await seeded(p)
        new = await create(p, "phone")
        check(new)
        sealed = re.search(r'name="sealed" value="([^"]+)"', new.text)
        assert sealed is not None
        for path in ("/", "/app-passwords", "/devices", "/sign-ins", "/?done=revoked"):
            check(await p.client.get(path))
        form = await p.client.get("/app-passwords")
        check(await p.post("/app-passwords", {"csrf": csrf_of(form), "label": ""}))
        gone = {"csrf": csrf_of(form), "kind": "apple", "sealed": "x"}
        check(await p.post("/app-passwords/setup", gone))
        (mine,) = p.store.list_sign_ins("alice", 0.0, 10)
        confirm = await p.post("/sign-ins/disown", {"csrf": csrf_of(form), "id": mine.id})
        assert "block it anyway" in confirm.text
        check(confirm)
        done = {"csrf": csrf_of(form), "id": mine.id, "confirm": "yes"}
        check(await p.post("/sign-ins/disown", done))
        check(await p.post("/sign-ins/disown", {"csrf": csrf_of(form), "id": "nope"}))
