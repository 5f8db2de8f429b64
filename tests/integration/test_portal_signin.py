"""Signing in to the portal for real: `imapguard serve` with `[portal]` in front
of Dovecot; the password is checked by logging in to Dovecot as the user (the
auth service's only way), then the TOTP code; the portal's guesses count in the
same defense as IMAP logins. Driven over HTTPS with httpx (the browser tests
drive the same pages in Chromium)."""

from __future__ import annotations

import concurrent.futures
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.live_imap import assert_login_refused
from tests.integration.portal_web import browser, new_user, portal_gateway
from tests.integration.portal_web import csrf as csrf  # test_portal_invite imports it from here

FAILED = "The user name, password or code is not right."

client = browser  # test_portal_invite imports it from here


@pytest.fixture(scope="module")
def portal_gw(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[tuple[GatewayProcess, int]]:
    extra = """
[defense]
# A block after the third wrong password of one account from one address (the
# default is ten; each guess costs Dovecot's growing per-address penalty).
pair_free = 1
pair_block = 3
"""
    with portal_gateway(tmp_path_factory.mktemp("gw-portal"), dovecot, extra) as running:
        yield running


def sign_in_password(web: httpx.Client, user: str, password: str) -> httpx.Response:
    form = web.get("/signin")
    assert form.status_code == 200
    return web.post("/signin", data={"csrf": csrf(form), "username": user, "password": password})


def test_password_then_code_signs_in(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = portal_gw
    u = new_user(gw, dovecot, "portal")
    user, password, otp = u.name, u.password, u.otp
    with browser(gw, port) as web:
        step = sign_in_password(web, user, password)
        assert step.status_code == 303, step.text
        assert step.headers["location"].endswith("/signin/code")
        assert web.get("/").status_code == 303  # one factor is no session yet
        code_page = web.get("/signin/code")
        done = web.post("/signin/code", data={"csrf": csrf(code_page), "code": otp.now()})
        assert done.status_code == 303, done.text
        home = web.get("/")
        assert home.status_code == 200
        assert user in home.text
    steps = [
        (e["mechanism"], e["result"])
        for e in gw.events("auth")
        if e.get("user") == user and e.get("listener") == "portal"
    ]
    assert steps == [("PORTAL-PASSWORD", "ok"), ("PORTAL-TOTP", "ok")]
    assert password not in gw.audit_path.read_text()


def test_wrong_password_and_wrong_code_look_the_same(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    gw, port = portal_gw
    u = new_user(gw, dovecot, "portal")
    user, password, otp = u.name, u.password, u.otp
    with browser(gw, port) as web:
        wrong = sign_in_password(web, user, password + "x")
        assert wrong.status_code == 200
        assert FAILED in wrong.text
    with browser(gw, port) as web:
        assert sign_in_password(web, user, password).status_code == 303
        code_page = web.get("/signin/code")
        bad = f"{(int(otp.now()) + 1) % 1_000_000:06d}"
        wrong_code = web.post("/signin/code", data={"csrf": csrf(code_page), "code": bad})
        assert FAILED in wrong_code.text
    compromise = [e for e in gw.events("compromise_signal") if e.get("user") == user]
    assert len(compromise) == 1  # a right password came with a wrong code


def test_portal_guesses_block_imap_logins_from_the_same_source(
    portal_gw: tuple[GatewayProcess, int], dovecot: DovecotServer
) -> None:
    """One defense: password guesses at the portal count against the source as
    IMAP guesses do, so the block they earn refuses an IMAP login from there,
    even with a valid app password."""
    gw, port = portal_gw
    user = new_user(gw, dovecot, "portal").name
    app_password = gw.create_app_password(user, "phone")
    with browser(gw, port) as web:
        for n in range(6):
            sign_in_password(web, user, f"guess-{n}")
            blocks = json.loads(gw.cli("blocks", "list", "--json").stdout)
            if any("127.0.0.1" in b.get("target", "") for b in blocks):
                break
        else:
            raise AssertionError(f"no block on the portal's guesser: {blocks}")
    assert_login_refused(gw, "127.0.0.1", user, app_password, timeout=30)
    refused = [
        e for e in gw.events("auth") if e.get("user") == user and e.get("listener") != "portal"
    ]
    assert refused[-1]["reason"].startswith("blocked"), refused[-1]


def test_password_guesses_posted_at_once_reach_the_check_at_most_pair_block_times(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    """16 wrong passwords for one account posted to the portal at the same instant,
    each over a browser of its own: every precheck would read the same counts, so
    all that pass the rate limit (10) would reach the mail server's password
    check. The portal's sign-in takes the pair's turn at the gate as IMAP logins
    do (`auth.gate`): at most `pair_block` (3 here) are checked, the rest are
    blocked."""
    extra = "\n[defense]\npair_free = 1\npair_block = 3\ndelay_base = 0.05\ndelay_max = 0.2\n"
    with portal_gateway(tmp_path, dovecot, extra_toml=extra) as (gw, port):
        user = new_user(gw, dovecot, "burst").name
        # A source of its own: Dovecot's auth penalty for 127.0.0.1, grown by the
        # other tests' wrong passwords, would slow each checked guess by seconds.
        ctx = ssl.create_default_context(cafile=str(gw.ca_cert))
        browsers = [
            httpx.Client(
                base_url=f"https://localhost:{port}",
                verify=ctx,
                timeout=30.0,
                headers={"Origin": f"https://localhost:{port}"},
                transport=httpx.HTTPTransport(verify=ctx, local_address="127.0.219.1"),
            )
            for _ in range(16)
        ]
        try:
            forms = [csrf(web.get("/signin")) for web in browsers]
            barrier = threading.Barrier(len(browsers))

            def guess(n: int) -> int:
                barrier.wait(30)
                data = {"csrf": forms[n], "username": user, "password": f"guess-{n}"}
                return browsers[n].post("/signin", data=data).status_code

            with concurrent.futures.ThreadPoolExecutor(len(browsers)) as pool:
                statuses = list(pool.map(guess, range(len(browsers))))
        finally:
            for web in browsers:
                web.close()
        assert 303 not in statuses, statuses  # none signed in
        # The portal's per-source rate limit answers some with 429 before any
        # check; more than `pair_block` still arrive at once.
        through = [s for s in statuses if s != 429]
        assert len(through) > 3, statuses
        reasons = [
            e["reason"]
            for e in gw.events("auth")
            if e.get("user") == user and e.get("listener") == "portal"
        ]
        assert len(reasons) == len(through), (statuses, reasons)
        checked = [r for r in reasons if not r.startswith("blocked")]
        assert 1 <= len(checked) <= 3, checked
