"""Steps many browser tests take, driven as a user does: by label and role."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from playwright.sync_api import Locator, Page, expect

from tests.e2e.portal import User

__all__ = [
    "FAILED",
    "reload_until",
    "reload_until_true",
    "sign_in",
    "sign_in_password",
    "sign_out",
]

#: The one message of every failed sign-in step (portal/signin.py FAILED).
FAILED = "The user name, password or code is not right."


def sign_in_password(page: Page, user: User) -> None:
    """The first step: user name and password; ends on the code page."""
    page.goto("/signin")
    page.get_by_label("User name", exact=True).fill(user.name)
    page.get_by_label("Password", exact=True).fill(user.password)
    page.get_by_role("button", name="Continue").click()
    expect(page).to_have_url(re.compile(r"/signin/code$"))


def sign_in(page: Page, user: User) -> None:
    """Password, then a fresh TOTP code; ends on "Your account"."""
    sign_in_password(page, user)
    page.get_by_label("Code", exact=True).fill(user.code())
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account")


def sign_out(page: Page) -> None:
    """The navigation's "Sign out" (the account page's list of sessions has more)."""
    nav = page.get_by_role("navigation", name="Portal")
    nav.get_by_role("button", name="Sign out", exact=True).click()
    expect(page).to_have_url(re.compile(r"/signin$"))


def reload_until(page: Page, locator: Locator, text: str, timeout: float = 10.0) -> None:
    """Reload the page until `locator` contains `text`: what the gateway writes
    behind a login (the last use of a password, the sign-in history) reaches the
    store a moment after the login's answer."""
    reload_until_true(
        page,
        lambda: text in " ".join(locator.all_inner_texts()),
        f"{locator} to contain {text!r}",
        timeout,
    )


def reload_until_true(
    page: Page, done: Callable[[], bool], what: str, timeout: float = 10.0
) -> None:
    """Reload the page until `done()` (see reload_until)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{page.url}: no {what} within {timeout} s")
        time.sleep(0.2)
        page.reload()
