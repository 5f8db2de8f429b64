"""The live events page and its server-sent event stream: the newest events
server-rendered and escaped, the filters (page and stream), the stream ending
within seconds of its session's end, its bounded number and lifetime, and
resuming where the page left off."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from imapguard.audit import events
from imapguard.errors import StateUnavailable
from imapguard.portal import admin_live
from imapguard.portal.admin_feed import FeedBatch, FileFeed
from tests.unit.portal.support import Portal, csrf_of, portal

pytestmark = pytest.mark.asyncio

STREAM = "/admin/events/stream"


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_live, "POLL", 0.02)
    monkeypatch.setattr(admin_live, "RECHECK", 0.05)


def auth(p: Portal, user: str, src: str = "198.51.100.1", result: str = "invalid") -> None:
    p.deps.audit.emit(
        events.Auth(
            src=src,
            listener="0.0.0.0:993",
            mechanism="LOGIN",
            user=user,
            result=result,
            reason="wrong password" if result != "ok" else "ok",
        )
    )


def messages(body: str) -> list[tuple[str, Any]]:
    """The (event, data) pairs of an SSE body."""
    out = []
    for block in body.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.split("\n") if ": " in line and line[0] != ":"
        )
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


@asynccontextmanager
async def streaming(
    client: httpx.AsyncClient, path: str = STREAM, **kw: Any
) -> AsyncIterator[asyncio.Future[httpx.Response]]:
    """The stream's request running in the background (the ASGI transport
    hands over the response once the stream has ended)."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.get(path, **kw))
        await asyncio.sleep(0.15)  # the stream is open and has read the log's end
        yield task


async def ended(task: Awaitable[httpx.Response]) -> httpx.Response:
    return await asyncio.wait_for(task, 5.0)


async def test_stream_ends_when_the_session_is_revoked(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        async with streaming(p.client) as task:
            auth(p, "mallory-target")
            await asyncio.sleep(0.15)
            assert not task.done()
            p.store.revoke_portal_sessions("carol")
            response = await ended(task)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert "content-length" not in response.headers  # an open-ended body
        got = messages(response.text)
        assert got[0][0] == "auth"
        assert got[0][1][0]["user"] == "mallory-target"
        assert got[-1] == ("end", "signed-out")


async def test_stream_ends_when_the_admin_signs_out(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        token = p.client.cookies.get("__Host-imapguard")
        async with p.browser() as other:
            other.client.cookies.set("__Host-imapguard", token or "")
            async with streaming(other.client) as task:
                page = await p.client.get("/")
                await p.post("/signout", {"csrf": csrf_of(page)})
                response = await ended(task)
        assert messages(response.text)[-1] == ("end", "signed-out")


async def test_stream_ends_when_the_session_idles_out(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        async with streaming(p.client) as task:
            p.clock.now += p.settings.session_idle + 1
            response = await ended(task)
        assert messages(response.text)[-1] == ("end", "idle")


async def test_stream_applies_the_filters(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        query = "?user=Bob&source=198.51.100.0/24&result=invalid"
        async with streaming(p.client, STREAM + query) as task:
            auth(p, "bob", "198.51.100.7", "invalid")  # shown
            auth(p, "bob", "198.51.100.7", "ok")  # another result
            auth(p, "bob", "203.0.113.7", "invalid")  # another source
            auth(p, "alice", "198.51.100.7", "invalid")  # another account
            auth(p, "bob", "198.51.100.8", "invalid")  # shown
            await asyncio.sleep(0.15)
            p.store.revoke_portal_sessions("carol")
            response = await ended(task)
        shown = [e for kind, batch in messages(response.text) if kind == "auth" for e in batch]
        assert [(e["user"], e["src"], e["result"]) for e in shown] == [
            ("bob", "198.51.100.7", "invalid"),
            ("bob", "198.51.100.8", "invalid"),
        ]


async def test_bad_stream_filters_are_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        for query in ("?source=nope", "?result=everything", "?user=" + "a" * 300):
            response = await p.client.get(STREAM + query)
            assert response.status_code == 400, query


async def test_stream_resumes_where_the_page_left_off(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        auth(p, "before-page")
        page = await p.client.get("/admin/events")
        auth(p, "between-page-and-stream")
        found = page.text.split('data-stream="')[1].split('"')[0].replace("&amp;", "&")
        assert "after=" in found
        async with streaming(p.client, found) as task:
            p.store.revoke_portal_sessions("carol")
            response = await ended(task)
        users = [e["user"] for kind, b in messages(response.text) if kind == "auth" for e in b]
        assert users == ["between-page-and-stream"]


async def test_stream_has_a_bounded_lifetime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_live, "LIFETIME", 0.3)
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        async with streaming(p.client) as task:
            response = await ended(task)
        assert messages(response.text)[-1] == ("end", "lifetime")


async def test_too_many_streams_are_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(p.client.get(STREAM)) for _ in range(admin_live.MAX_PER_ADMIN)]
            await asyncio.sleep(0.15)
            refused = await p.client.get(STREAM)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "30"
            p.store.revoke_portal_sessions("carol")
        assert all(messages(t.result().text)[-1] == ("end", "signed-out") for t in tasks)
        # Their slots were given back: a new session opens a stream again.
        await p.sign_in("carol")
        async with streaming(p.client) as task:
            p.store.revoke_portal_sessions("carol")
            assert (await ended(task)).status_code == 200


async def test_events_page_shows_the_newest_escaped_and_filtered(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        auth(p, "<img src=x onerror=alert(1)>", "198.51.100.9")
        auth(p, "alice", "203.0.113.5", "ok")
        await p.sign_in("carol")
        page = await p.client.get("/admin/events")
        assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
        assert "<img src=x" not in page.text
        assert '<script src="/static/live.js" defer></script>' in page.text
        filtered = await p.client.get("/admin/events?source=203.0.113.0/24")
        body = filtered.text.split("<tbody>")[1]
        assert "203.0.113.5" in body
        assert "198.51.100.9" not in body
        assert "source=203.0.113.0%2F24" in filtered.text.replace("&amp;", "&")
        bad = await p.client.get("/admin/events?result=<script>")
        assert bad.status_code == 400
        assert "<script>" not in bad.text.replace('<script src="/static/live.js"', "")


async def test_live_script_puts_text_only(tmp_path: Path) -> None:
    script = (Path(admin_live.__file__).parent / "static" / "live.js").read_text()
    assert "innerHTML" not in script
    assert "outerHTML" not in script
    assert "insertAdjacentHTML" not in script
    assert "textContent" in script
    async with portal(tmp_path) as p:
        served = await p.client.get("/static/live.js")
        assert served.status_code == 200
        assert served.text == script


async def test_a_blocks_end_reads_as_a_utc_date_on_the_page_and_in_the_stream(
    tmp_path: Path,
) -> None:
    reason = "blocked: 12 distinct wrong passwords from 198.51.100.4 (until 1796657470)"
    readable = "(until 2026-12-07 15:31 UTC)"

    def blocked_login(user: str) -> None:
        p.deps.audit.emit(
            events.Auth(
                src="198.51.100.4",
                listener="0.0.0.0:993",
                mechanism="PLAIN",
                user=user,
                result="invalid",
                reason=reason,
            )
        )

    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        blocked_login("bob")
        page = await p.client.get("/admin/events")
        assert readable in page.text
        assert "1796657470" not in page.text
        async with streaming(p.client) as task:
            blocked_login("dave")
            await asyncio.sleep(0.15)
            p.store.revoke_portal_sessions("carol")
            response = await ended(task)
        (live,) = [e for kind, b in messages(response.text) if kind == "auth" for e in b]
        assert live["reason"].endswith(readable), live


# static/live.js in node with a fake DOM: the cells of the rows it adds, as
# (textContent, whether anything but textContent was written).
_LIVE_HARNESS = r"""
const fs = require("fs");
const vm = require("vm");
const [script, data] = process.argv.slice(1);
const rows = [];
function element(tag) {
  const e = { tag, children: [], hidden: false, dataset: {}, html: false, className: "" };
  e.appendChild = (c) => e.children.push(c);
  e.addEventListener = () => {};
  Object.defineProperty(e, "innerHTML", { set() { e.html = true; } });
  return e;
}
const body = element("tbody");
body.rows = rows;
body.querySelector = () => null;
body.insertBefore = (row) => rows.unshift(row);
body.deleteRow = (i) => rows.splice(i, 1);
const status = element("p");
status.dataset.stream = "/admin/events/stream";
const listeners = {};
class EventSource {
  constructor() { this.readyState = 1; }
  addEventListener(kind, handler) { listeners[kind] = handler; }
  close() {}
}
const context = {
  URL, EventSource, window: { location: { href: "https://portal.test/admin/events" } },
  document: {
    createElement: element,
    getElementById: (id) => ({ "live-status": status, "events": { tBodies: [body] },
                               "live-resume": element("button") })[id],
  },
};
vm.runInNewContext(fs.readFileSync(script, "utf8"), context);
listeners.auth({ data, lastEventId: "1.2" });
console.log(JSON.stringify(rows.map((r) => r.children.map((c) => [c.textContent, c.html]))));
"""


def _live_cells(events_json: str) -> list[list[tuple[str, bool]]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = Path(admin_live.__file__).parent / "static" / "live.js"
    done = subprocess.run(
        [node, "-e", _LIVE_HARNESS, str(script), events_json],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [[(text, html) for text, html in row] for row in json.loads(done.stdout)]


async def test_live_js_shows_a_raw_block_end_as_a_utc_date_as_text_only() -> None:
    evil = "<img src=x onerror=alert(1)>"
    event = {
        "ts": "1796657000.000",
        "user": evil,
        "src": "198.51.100.4",
        "result": "invalid",
        "reason": "blocked: sprayed (until 1796657470)",
        "mechanism": "PLAIN",
    }
    ((when, user, _src, _result, reason, method, _listener, _client),) = _live_cells(
        json.dumps([event])
    )
    assert when == ("2026-12-07 15:23:20 UTC", False)
    assert user == (evil, False)  # text, not markup
    assert reason == ("blocked: sprayed (until 2026-12-07 15:31 UTC)", False)
    assert method == ("PLAIN", False)


class Outage:
    """The audit log file as a feed that can be made unreachable, as the
    cluster's Redis can be."""

    def __init__(self, path: str) -> None:
        self.file = FileFeed(path)
        self.down = False

    def accepts(self, position: str) -> bool:
        return self.file.accepts(position)

    def newest(self) -> FeedBatch:
        if self.down:
            raise StateUnavailable("read live events", "redis ConnectionError")
        return self.file.newest()

    def after(self, position: str | None) -> FeedBatch:
        if self.down:
            raise StateUnavailable("read live events", "redis ConnectionError")
        return self.file.after(position)


async def test_an_unreachable_feed_is_announced_once_and_the_stream_goes_on(
    tmp_path: Path,
) -> None:
    feed = Outage(str(tmp_path / "audit.jsonl"))
    async with portal(tmp_path, live=feed) as p:
        await p.sign_in("carol")
        async with streaming(p.client) as task:
            feed.down = True
            await asyncio.sleep(0.2)  # several polls while it is away
            auth(p, "during-outage")
            await asyncio.sleep(0.1)
            feed.down = False
            await asyncio.sleep(0.2)
            p.store.revoke_portal_sessions("carol")
            response = await ended(task)
        got = messages(response.text)
        kinds = [kind for kind, _ in got]
        assert kinds.count("unavailable") == 1
        assert kinds.index("unavailable") < kinds.index("available") < kinds.index("auth")
        # What was written while the feed was away is sent once it is back.
        users = [e["user"] for kind, b in got if kind == "auth" for e in b]
        assert users == ["during-outage"]
        assert got[-1] == ("end", "signed-out")


async def test_events_page_renders_while_its_feed_is_unreachable(tmp_path: Path) -> None:
    feed = Outage(str(tmp_path / "audit.jsonl"))
    feed.down = True
    async with portal(tmp_path, live=feed) as p:
        await p.sign_in("carol")
        page = await p.client.get("/admin/events")
        assert page.status_code == 200
        assert 'data-stream="/admin/events/stream?' in page.text


def _node(node: str, harness: str) -> str:
    script = Path(admin_live.__file__).parent / "static" / "live.js"
    done = subprocess.run(
        [node, "-e", harness, str(script), "[]"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


async def test_live_js_says_when_the_events_are_unavailable_and_when_they_are_back() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    # The harness above, its last two lines replaced: the status line's text
    # after each of the stream's two announcements.
    head = _LIVE_HARNESS.rsplit("listeners.auth(", 1)[0]
    harness = head + (
        "listeners.unavailable({ data: '\"events\"' });\n"
        "const down = status.textContent;\n"
        "listeners.available({ data: '\"events\"' });\n"
        "console.log(JSON.stringify([down, status.textContent]));\n"
    )
    down, back = json.loads(_node(node, harness))
    assert "unavailable" in down
    assert "retrying" in down
    assert back.startswith("Live:")
