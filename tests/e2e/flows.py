"""Steps many browser tests take, driven as a user does: by label and role."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.portal import User

__all__ = ["FAILED", "sign_in", "sign_in_password", "sign_out"]

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
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin$"))
