"""Every response carries the security headers, errors included: clickjacking
(frame-ancestors), injected script and style (CSP without inline), downgrade
to plain HTTP (HSTS), leaking URLs in Referer, MIME sniffing, cross-window
access (COOP), and pages with account data left in a cache (no-store)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from imapguard.portal.headers import CONTENT_SECURITY_POLICY, SECURITY_HEADERS
from tests.unit.portal.support import portal


def _assert_secured(response: httpx.Response, *, cacheable: bool = False) -> None:
    for name, value in SECURITY_HEADERS:
        assert response.headers.get_list(name) == [value], (name, response.status_code)
    if cacheable:
        assert "no-store" not in response.headers.get("cache-control", "")
    else:
        assert response.headers["cache-control"] == "no-store"


def test_the_policy_allows_nothing_inline_and_no_framing() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert directives["form-action"] == "'self'"
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


@pytest.mark.asyncio
async def test_pages_redirects_and_errors_are_never_framed_or_cached(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        _assert_secured(await p.client.get("/signin"))
        _assert_secured(await p.client.get("/"))  # 303 to /signin
        _assert_secured(await p.client.get("/no/such/page"))  # 404
        _assert_secured(await p.client.put("/signin"))  # 403: no Origin, no token
        _assert_secured(await p.post("/signin", {"csrf": "x"}, origin="https://evil.test"))


@pytest.mark.asyncio
async def test_a_crash_still_answers_with_the_security_headers(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        p.service.broken = True
        response = await p.password_step()
        assert response.status_code == 500
        assert "fell over" not in response.text  # no traceback to the browser
        _assert_secured(response)


@pytest.mark.asyncio
async def test_static_files_are_served_by_the_portal_and_may_be_cached(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        page = await p.client.get("/signin")
        assert 'href="/static/portal.css"' in page.text
        assert "<script" not in page.text
        assert "style=" not in page.text
        css = await p.client.get("/static/portal.css")
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")
        _assert_secured(css, cacheable=True)


@pytest.mark.asyncio
async def test_an_endpoint_cannot_weaken_a_security_header(tmp_path: Path) -> None:
    # The middleware sets its values over whatever a response carried: one value each.
    async with portal(tmp_path) as p:
        response = await p.client.get("/signin")
        assert len(response.headers.get_list("content-security-policy")) == 1
