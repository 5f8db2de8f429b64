"""Fixtures of the browser tests (tests/e2e/browser.py and portal.py say more).

Package-scoped, started once for tests/e2e and stopped after it: `browser`
(Debian's headless Chromium through Playwright) and `portal` (`imapguard serve`
with `[portal]` at https://localhost:PORT in front of the session's Dovecot).
Per test: `context` (a fresh browser profile: no cookies, 1280x800, UTC, en-US,
certificate errors ignored, the portal as base URL, so `page.goto("/signin")`),
`page` (in it, watched: a console error, a page error, a CSP violation or a
request to another origin fails the test; see `watch`), and `new_page()` for
more profiles (a second user, an admin watching) or a portal of the test's own.

A missing Chromium or axe-core fails the run with what to install; nothing is
skipped. When a test fails, its report carries the page's address and the text
of its <main>.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.dovecot import DovecotServer
from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, Watch, require_tools
from tests.e2e.portal import PortalServer

# Playwright's waits (locators, navigation), far below the test timeout, so a
# page that never shows what a test waits for fails with the locator named.
ACTION_TIMEOUT_MS = 10_000

_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
        page = getattr(item, "funcargs", {}).get("page")
        if report.failed and isinstance(page, Page):
            report.sections.append(("page at the failure", _describe(page)))
    return report


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    require_tools()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="package")
def portal(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[PortalServer]:
    server = PortalServer.start(tmp_path_factory.mktemp("e2e-portal"), dovecot)
    try:
        yield server
    finally:
        server.stop()


def context_for(browser: Browser, portal: PortalServer) -> BrowserContext:
    """A fresh browser profile for `portal`: no cookies, 1280x800, UTC, en-US,
    certificate errors ignored, the portal as base URL."""
    context = browser.new_context(
        base_url=portal.url,
        ignore_https_errors=True,
        viewport=VIEWPORT,
        device_scale_factor=1,
        locale="en-US",
        timezone_id="UTC",
        color_scheme="light",
        reduced_motion="reduce",
    )
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    return context


@pytest.fixture
def context(browser: Browser, portal: PortalServer) -> Iterator[BrowserContext]:
    context = context_for(browser, portal)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def watch(portal: PortalServer) -> Watch:
    """What the test's `page` did wrong; admit more with allow_origin/expect_console."""
    return Watch(portal.url)


@pytest.fixture
def page(request: pytest.FixtureRequest, context: BrowserContext, watch: Watch) -> Iterator[Page]:
    page = context.new_page()
    watch.attach(page)
    yield page
    if not request.node.stash.get(_CALL_FAILED, False):
        watch.check()


@pytest.fixture
def new_page(
    request: pytest.FixtureRequest, browser: Browser, portal: PortalServer
) -> Iterator[Callable[..., Page]]:
    """Opens another browser profile with its own cookies and a watched page in it:
    a second user or an admin beside `page`. `new_page(server)` opens one on a
    portal the test started itself; `Watch.of(that_page)` is its watch."""
    opened: list[tuple[BrowserContext, Watch]] = []

    def open_page(server: PortalServer = portal) -> Page:
        context = context_for(browser, server)
        watch = Watch(server.url)
        opened.append((context, watch))
        page = context.new_page()
        watch.attach(page)
        return page

    yield open_page
    for context, _ in opened:
        context.close()
    if not request.node.stash.get(_CALL_FAILED, False):
        for _, watch in opened:
            watch.check()


def _describe(page: Page) -> str:
    try:
        main = page.locator("main").first.inner_text(timeout=1_000)
    except Exception as error:  # a report aid must not hide the failure
        main = f"(no <main>: {error})"
    return f"address: {page.url}\n{main}"
