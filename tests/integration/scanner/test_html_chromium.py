"""The HTML report in a real browser: Debian's headless Chromium through
playwright (no browser download). It must render with no console error, load
nothing from the network, show its grades and keep a hostile banner inert.

The headline is read as a reader sees it and checked against the cards below it: it
never says all clear above a service that was not fully tested (issue 9).

With IMAPGUARD_UPDATE_SCREENSHOTS=1 the full-page screenshot replaces
docs/images/scan-report.png (the picture docs/scan-report.md shows); otherwise
it goes to the test's temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Error,
    Page,
    Request,
    sync_playwright,
)

from imapguard.scanner.model import ScanReport
from imapguard.scanner.report import render
from tests.unit.scanner.test_report import clean_report, incomplete_report, sample_report

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "docs" / "images" / "scan-report.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


def test_report_renders_offline_without_errors(browser: Browser, tmp_path: Path) -> None:
    page_file = tmp_path / "report.html"
    page_file.write_text(render(sample_report(), "html"), encoding="utf-8")
    url = page_file.as_uri()

    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    requests: list[str] = []
    dialogs: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"{message.type}: {message.text}")

    def on_request(request: Request) -> None:
        requests.append(request.url)

    def on_page_error(error: Error) -> None:
        problems.append(f"pageerror: {error}")

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("request", on_request)
    page.on("dialog", on_dialog)
    page.goto(url, wait_until="load")

    assert page.title() == "imapguard scan report: mail.example.org, legacy.example.net"
    assert page.get_by_role("heading", level=1).inner_text() == "Mail server security scan"

    worst = page.locator(".summary .grade.big")
    assert worst.is_visible()
    assert worst.inner_text() == "F"
    # A red badge, not an unstyled letter: the inline stylesheet applied.
    assert worst.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(130, 7, 30)"

    cards = page.locator("section.card")
    assert cards.count() == 6
    best = page.locator("#service-0 header .grade")
    assert best.inner_text() == "A+"
    assert best.is_visible()

    # The hostile banner shows as text; nothing ran and nothing was injected.
    banner = page.locator("#service-4 dd pre").first
    assert "<script>alert('x')</script>" in banner.inner_text()
    assert page.locator("script").count() == 0
    assert dialogs == []

    # Fixes are there to copy, under the finding they fix.
    auth05 = page.locator('#service-4 article.finding.critical[data-check="AUTH-05"]')
    assert "auth_allow_cleartext = no" in auth05.locator("pre.fix").inner_text()

    assert problems == []
    assert requests == [url]

    target = SCREENSHOT if os.environ.get("IMAPGUARD_UPDATE_SCREENSHOTS") == "1" else None
    target = target or tmp_path / "scan-report.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
    context.close()


def test_report_prints_on_paper(browser: Browser, tmp_path: Path) -> None:
    page_file = tmp_path / "report.html"
    page_file.write_text(render(sample_report(), "html"), encoding="utf-8")
    context = browser.new_context()
    page = context.new_page()
    page.goto(page_file.as_uri(), wait_until="load")
    page.emulate_media(media="print")
    # The print stylesheet drops the grey page background and keeps badge colours.
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"
    badge = page.locator(".summary .grade.big")
    assert badge.evaluate("e => getComputedStyle(e).printColorAdjust") == "exact"
    pdf = page.pdf(format="A4")
    assert pdf.startswith(b"%PDF")
    context.close()


def _open(browser: Browser, tmp_path: Path, html: str) -> Page:
    page_file = tmp_path / "report.html"
    page_file.write_text(html, encoding="utf-8")
    page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    page.goto(page_file.as_uri(), wait_until="load")
    return page


def _cards_not_fully_tested(page: Page) -> set[str]:
    """The services whose card shows a "Not tested" heading, as the reader sees it."""
    cards = page.locator("section.card")
    names = set()
    for i in range(cards.count()):
        card = cards.nth(i)
        if card.get_by_role("heading", name="Not tested", exact=True).count():
            names.add(card.locator("h2").inner_text())
    return names


@pytest.mark.parametrize(
    ("make", "all_clear"),
    [(incomplete_report, False), (sample_report, False), (clean_report, True)],
    ids=["incomplete", "urgent", "clean"],
)
def test_the_headline_agrees_with_the_cards(
    browser: Browser, tmp_path: Path, make: Callable[[], ScanReport], all_clear: bool
) -> None:
    page = _open(browser, tmp_path, render(make(), "html"))
    summary = page.locator(".summary")
    assert summary.is_visible()
    headline = summary.inner_text()
    untested = _cards_not_fully_tested(page)
    assert ("No service is graded D or F" in headline) is all_clear, headline
    assert bool(untested) is not all_clear
    if untested:
        line = summary.locator("p.incomplete")
        assert line.is_visible()
        for name in untested:
            assert name in line.inner_text()
    urgent = {
        page.locator("section.card").nth(i).locator("h2").inner_text()
        for i in range(page.locator("section.card").count())
        if page.locator("section.card").nth(i).locator("header .grade").inner_text() in ("D", "F")
    }
    if urgent:
        for name in urgent:
            assert name in summary.locator("p.urgent").inner_text()
    else:
        assert summary.locator("p.urgent").count() == 0
    page.context.close()
