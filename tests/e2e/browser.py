"""What every browser test of the portal uses: Chromium, axe-core, the label
check, screenshots, the watch on console errors and outside requests, and the
Chrome DevTools virtual authenticator for passkeys.

* Chromium is Debian's (`CHROMIUM`), driven by Python Playwright with
  `executable_path`: Playwright downloads no browser. The portal's certificate
  comes from a trustme CA the browser does not know; the contexts ignore
  certificate errors (the page is still a secure context, so WebAuthn works).
* `axe(page)` loads axe-core (npm, `tests/e2e/node_modules`, installed by
  `npm ci`) into the page and fails on any violation of impact serious or
  critical, naming the rule, the elements and the help text. It is evaluated
  through the DevTools protocol, which the portal's CSP (`script-src 'self'`, no
  inline script) does not govern; a `<script>` tag added to the page would be
  refused by that CSP, as it should be.
* `assert_labelled(page)`: every visible form field has a visible label (a
  `<label for>`, a wrapping `<label>`, or `aria-labelledby` naming visible text);
  `aria-label`, a placeholder or a label hidden from sight does not count.
* `shot(page, name, mask=[...])` writes docs/screenshots/NAME.png, full page,
  at the contexts' 1280x800 viewport, with clock text and the `mask` locators
  (one-time secrets) covered by grey boxes.
* `Watch` collects console errors, page errors, CSP violations and requests to
  any origin but the portal's; the `page` fixture fails the test on any.
* `VirtualAuthenticator.add(page)`: a CTAP2 platform authenticator with
  resident keys and user verification (CDP `WebAuthn.addVirtualAuthenticator`)
  that answers `navigator.credentials` in that page without a prompt.
"""

from __future__ import annotations

import re
import shutil
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    CDPSession,
    ConsoleMessage,
    Error,
    Locator,
    Page,
    Request,
    ViewportSize,
)

__all__ = [
    "AXE_JS",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "CLOCK",
    "SCREENSHOTS",
    "VIEWPORT",
    "AxeViolation",
    "VirtualAuthenticator",
    "Watch",
    "assert_labelled",
    "axe",
    "axe_violations",
    "check_page",
    "require_tools",
    "shot",
    "unlabelled_fields",
]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
AXE_JS = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "docs" / "screenshots"
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
# --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
# The rest keeps a headless run quiet and the same each time (no updates, no
# background requests, no GPU).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--font-render-hinting=none",
]
# Impacts that fail a page (axe-core's scale: minor, moderate, serious, critical).
FAILING_IMPACTS = ("serious", "critical")


def require_tools() -> None:
    """Fail (never skip) when Chromium or axe-core is missing, saying how to get it."""
    problems = []
    if shutil.which(CHROMIUM) is None:
        problems.append(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    if not AXE_JS.is_file():
        problems.append(
            f"{AXE_JS} is missing: run `npm ci` in tests/e2e (.ci/run does; needs node and npm)"
        )
    if problems:
        pytest.fail("the browser tests cannot run:\n  " + "\n  ".join(problems), pytrace=False)


# -- axe-core ----------------------------------------------------------------------


@dataclass(frozen=True)
class AxeViolation:
    rule: str
    impact: str
    help: str
    help_url: str
    targets: tuple[str, ...]
    summaries: tuple[str, ...]

    def describe(self) -> str:
        lines = [f"{self.rule} ({self.impact}): {self.help} <{self.help_url}>"]
        for target, summary in zip(self.targets, self.summaries, strict=True):
            lines.append(f"    at {target}")
            lines.extend(f"       {line}" for line in summary.splitlines() if line.strip())
        return "\n".join(lines)


_AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map(v => ({
    rule: v.id, impact: v.impact || "", help: v.help, helpUrl: v.helpUrl,
    targets: v.nodes.map(n => n.target.join(" ")),
    summaries: v.nodes.map(n => n.failureSummary || ""),
  }));
}"""


def axe_violations(page: Page) -> list[AxeViolation]:
    """Every axe-core violation on the page as it is now (all impacts)."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE_JS.read_text(encoding="utf-8"))
    found: list[dict[str, Any]] = page.evaluate(_AXE_RUN)
    return [
        AxeViolation(
            rule=v["rule"],
            impact=v["impact"],
            help=v["help"],
            help_url=v["helpUrl"],
            targets=tuple(v["targets"]),
            summaries=tuple(v["summaries"]),
        )
        for v in found
    ]


def axe(page: Page) -> None:
    """Fail when axe-core finds a serious or critical violation on the page."""
    bad = [v for v in axe_violations(page) if v.impact in FAILING_IMPACTS]
    if bad:
        report = "\n".join(v.describe() for v in bad)
        raise AssertionError(f"axe-core on {page.url}: {len(bad)} serious or critical\n{report}")


# -- labels ------------------------------------------------------------------------

_UNLABELLED = """() => {
  // Seen by a sighted user: a box larger than the 1x1 px of a "visually
  // hidden" label, on the page, not transparent, with text in it.
  const shown = e => {
    if (!e || e.textContent.trim() === "") return false;
    const style = getComputedStyle(e);
    if (style.visibility === "hidden" || style.opacity === "0") return false;
    return [...e.getClientRects()].some(r =>
      r.width > 1 && r.height > 1 && r.right > 0 && r.bottom > 0);
  };
  const skip = new Set(["hidden", "submit", "button", "reset", "image"]);
  const fields = [...document.querySelectorAll("input, select, textarea")]
    .filter(f => !skip.has((f.getAttribute("type") || "").toLowerCase()))
    .filter(f => f.getClientRects().length > 0);
  const labelled = f => {
    if ([...f.labels].some(shown)) return true;
    const ids = (f.getAttribute("aria-labelledby") || "").split(/\\s+/).filter(Boolean);
    return ids.length > 0 && ids.every(id => shown(document.getElementById(id)));
  };
  return fields.filter(f => !labelled(f)).map(f => f.outerHTML.slice(0, 200));
}"""


def unlabelled_fields(page: Page) -> list[str]:
    """The visible form fields (HTML, cut) that have no visible label."""
    found: list[str] = page.evaluate(_UNLABELLED)
    return found


def assert_labelled(page: Page) -> None:
    missing = unlabelled_fields(page)
    assert not missing, f"fields without a visible label on {page.url}:\n  " + "\n  ".join(missing)


# -- screenshots -------------------------------------------------------------------

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,60}")


# The portal's clock text (portal/account.py: "%Y-%m-%d %H:%M UTC"): masked in a
# screenshot, so that a page that did not change gives the same bytes each run.
CLOCK = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC"
MASK_COLOR = "#d0d7de"

# Wraps each match of the pattern in the page's text in a <span data-e2e-varying>
# for the screenshot's mask to cover; returns how many.
_MARK_VARYING = """(pattern) => {
  const split = new RegExp("(" + pattern + ")");
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const texts = [];
  while (walker.nextNode()) {
    if (split.test(walker.currentNode.data)) texts.push(walker.currentNode);
  }
  let marked = 0;
  for (const text of texts) {
    const parts = text.data.split(split);
    const pieces = parts.map((part, i) => {
      if (i % 2 === 0) return document.createTextNode(part);
      const span = document.createElement("span");
      span.dataset.e2eVarying = "";
      // Under the mask anyway: every character a "0" (spaces kept), so that the
      // box is as wide on every run whatever the digits and letters were.
      span.textContent = part.replace(/\\S/g, "0");
      // One line: a box around a text broken over two would cover the lines'
      // whole width, the words beside it too.
      span.style.whiteSpace = "nowrap";
      marked += 1;
      return span;
    });
    text.replaceWith(...pieces);
  }
  return marked;
}"""


def shot(
    page: Page, name: str, *, mask: Sequence[Locator] = (), mask_text: Sequence[str] = ()
) -> Path:
    """Save a full-page screenshot to docs/screenshots/NAME.png and return its path.

    Clock text, text matching a `mask_text` pattern (JavaScript syntax without
    capture groups: a record's random id) and
    the elements of `mask` (a one-time secret, a QR code) are covered by grey
    boxes: the picture of a page that did not change stays the same, byte for
    byte, and shows no secret."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"screenshot name {name!r}: lower-case letters, digits and '-'")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    # One capture group around them all: String.split then yields each match.
    page.evaluate(_MARK_VARYING, "|".join(f"(?:{p})" for p in (CLOCK, *mask_text)))
    page.screenshot(
        path=str(path),
        full_page=True,
        animations="disabled",
        caret="hide",
        mask=[page.locator("[data-e2e-varying]"), *mask],
        mask_color=MASK_COLOR,
    )
    width, height = png_size(path)
    assert width == VIEWPORT["width"], (path, width)
    assert height >= VIEWPORT["height"], (path, height)
    return path


def check_page(
    page: Page, name: str, *, mask: Sequence[Locator] = (), mask_text: Sequence[str] = ()
) -> Path:
    """What every page a test reaches gets: axe-core, the visible-label check and
    its screenshot (docs/screenshots/NAME.png; see `shot` for the masks)."""
    axe(page)
    assert_labelled(page)
    return shot(page, name, mask=mask, mask_text=mask_text)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is no PNG"
    assert head[12:16] == b"IHDR", f"{path} is no PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


# -- what the page did -------------------------------------------------------------


@dataclass(eq=False)
class Watch:
    """Console errors, page errors and requests to other origins of one page.

    `allow_origin(url)` admits another origin (e.g. an OpenID provider);
    `expect_console(pattern)` admits console errors matching a regular
    expression (e.g. a refused fetch the test provokes)."""

    origin: str
    problems: list[str] = field(default_factory=list)
    origins: set[str] = field(default_factory=set)
    expected: list[re.Pattern[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.origins.add(self.origin)

    @staticmethod
    def of(page: Page) -> Watch:
        """The watch attached to `page`."""
        return _WATCHES[page]

    def attach(self, page: Page) -> None:
        _WATCHES[page] = self
        page.on("console", self._console)
        page.on("pageerror", self._page_error)
        page.on("request", self._request)

    def allow_origin(self, url: str) -> None:
        self.origins.add(_origin(url))

    def expect_console(self, pattern: str) -> None:
        self.expected.append(re.compile(pattern))

    def _console(self, message: ConsoleMessage) -> None:
        # A CSP violation (inline script or style, an outside resource) is a
        # console error in Chromium, and so is every response of 400 or more.
        if message.type != "error" or any(p.search(message.text) for p in self.expected):
            return
        where = message.location.get("url", "")
        self.problems.append(f"console error: {message.text} ({where or 'no address'})")

    def _page_error(self, error: Error) -> None:
        self.problems.append(f"page error: {error}")

    def _request(self, request: Request) -> None:
        url = request.url
        if url.startswith(("data:", "blob:", "about:")):
            return
        if _origin(url) not in self.origins:
            self.problems.append(f"request to another origin: {request.method} {url}")

    def check(self) -> None:
        assert not self.problems, "the page misbehaved:\n  " + "\n  ".join(self.problems)


_WATCHES: weakref.WeakKeyDictionary[Page, Watch] = weakref.WeakKeyDictionary()


def _origin(url: str) -> str:
    match = re.match(r"[a-z][a-z0-9+.-]*://[^/?#]+", url, re.IGNORECASE)
    return match.group(0).lower() if match else url


# -- passkeys ----------------------------------------------------------------------


@dataclass(eq=False)
class VirtualAuthenticator:
    """A DevTools virtual authenticator attached to one page."""

    cdp: CDPSession
    id: str

    @classmethod
    def add(cls, page: Page, *, user_verified: bool = True) -> VirtualAuthenticator:
        """Attach a CTAP2 platform authenticator (internal transport, resident keys,
        user verification) that answers WebAuthn calls in `page` at once."""
        cdp = page.context.new_cdp_session(page)
        cdp.send("WebAuthn.enable", {"enableUI": False})
        added = cdp.send(
            "WebAuthn.addVirtualAuthenticator",
            {
                "options": {
                    "protocol": "ctap2",
                    "ctap2Version": "ctap2_1",
                    "transport": "internal",
                    "hasResidentKey": True,
                    "hasUserVerification": True,
                    "isUserVerified": user_verified,
                    "automaticPresenceSimulation": True,
                }
            },
        )
        return cls(cdp=cdp, id=str(added["authenticatorId"]))

    def credentials(self) -> list[dict[str, Any]]:
        """The credentials it holds (CDP `WebAuthn.Credential`: credentialId,
        rpId, userHandle, signCount, isResidentCredential, privateKey)."""
        got = self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.id})
        creds: list[dict[str, Any]] = got["credentials"]
        return creds

    def set_user_verified(self, verified: bool) -> None:
        """Whether the next ceremonies pass user verification (e.g. a wrong PIN)."""
        self.cdp.send(
            "WebAuthn.setUserVerified", {"authenticatorId": self.id, "isUserVerified": verified}
        )

    def clear(self) -> None:
        """Forget every credential (a lost or wiped device)."""
        self.cdp.send("WebAuthn.clearCredentials", {"authenticatorId": self.id})

    def remove(self) -> None:
        self.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": self.id})
