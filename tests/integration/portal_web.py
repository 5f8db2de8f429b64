"""The portal's user pages driven for real over HTTPS (httpx): `imapguard serve`
with `[portal]` in front of Dovecot, a user with a TOTP secret from the CLI, a
full sign-in (password checked by Dovecot, then the code), and the forms of the
pages. Used by test_portal_app_passwords, test_portal_devices, test_portal_disown,
test_portal_signin."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyotp

from tests.dovecot import DovecotServer, free_port
from tests.gateway import GatewayProcess

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf(page: httpx.Response) -> str:
    match = _CSRF.search(page.text)
    assert match, page.text
    return match.group(1)


@contextlib.contextmanager
def portal_gateway(
    base: Path,
    dovecot: DovecotServer,
    extra_toml: str = "",
    port: int | None = None,
    methods: tuple[str, ...] = ("app-password", "password+totp"),
) -> Iterator[tuple[GatewayProcess, int]]:
    """`imapguard serve` with the portal on https://localhost:PORT (a free port
    unless given); `extra_toml` goes on inside the [portal] table."""
    port = free_port() if port is None else port
    gw = GatewayProcess.create(
        base,
        dovecot,
        methods=methods,
        extra_toml=f"""
[portal]
listen = "127.0.0.1:{port}"
url = "https://localhost:{port}"
mail_host = "localhost"
{extra_toml}""",
    )
    gw.start()
    try:
        deadline = time.monotonic() + 15
        while not gw.accepts(port):
            assert time.monotonic() < deadline, gw.log_text()
            time.sleep(0.05)
        yield gw, port
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()


@dataclass
class User:
    name: str
    password: str
    otp: pyotp.TOTP


def new_user(gw: GatewayProcess, dovecot: DovecotServer, prefix: str = "web") -> User:
    name = f"{prefix}{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    dovecot.add_user(name, password)
    enrolled = json.loads(gw.cli("totp", "enroll", name, "--json").stdout)
    return User(name, password, pyotp.TOTP(enrolled["secret"]))


def browser(gw: GatewayProcess, port: int) -> httpx.Client:
    """A browser of its own (cookies, the portal's Origin) that trusts the gateway's CA."""
    ctx = ssl.create_default_context(cafile=str(gw.ca_cert))
    return httpx.Client(
        base_url=f"https://localhost:{port}",
        verify=ctx,
        timeout=30.0,
        headers={"Origin": f"https://localhost:{port}"},
    )


@contextlib.contextmanager
def signed_in(gw: GatewayProcess, port: int, user: User) -> Iterator[httpx.Client]:
    """A browser (cookies of its own) signed in as `user` with password and code."""
    with browser(gw, port) as web:
        form = web.get("/signin")
        step = web.post(
            "/signin",
            data={"csrf": csrf(form), "username": user.name, "password": user.password},
        )
        assert step.status_code == 303, step.text
        code_page = web.get("/signin/code")
        done = web.post("/signin/code", data={"csrf": csrf(code_page), "code": user.otp.now()})
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/"
        yield web


def submit(web: httpx.Client, page_path: str, action: str, data: dict[str, str]) -> httpx.Response:
    """Post a form of `page_path` (fetched for its CSRF token) to `action`."""
    page = web.get(page_path)
    assert page.status_code == 200, page.text
    return web.post(action, data={"csrf": csrf(page), **data})


def signed_in_admin(
    gw: GatewayProcess, port: int, dovecot: DovecotServer, admin: str
) -> httpx.Client:
    """A new admin account (password and TOTP), signed in to the portal."""
    password = secrets.token_urlsafe(12)
    dovecot.add_user(admin, password)
    enrolled = json.loads(gw.cli("totp", "enroll", admin, "--json").stdout)
    web = httpx.Client(
        base_url=f"https://localhost:{port}",
        verify=ssl.create_default_context(cafile=str(gw.ca_cert)),
        timeout=30.0,
        headers={"Origin": f"https://localhost:{port}"},
    )
    form = web.get("/signin")
    step = web.post("/signin", data={"csrf": csrf(form), "username": admin, "password": password})
    assert step.status_code == 303, step.text
    code_form = web.get("/signin/code")
    code = pyotp.TOTP(enrolled["secret"]).now()
    done = web.post("/signin/code", data={"csrf": csrf(code_form), "code": code})
    assert done.status_code == 303, done.text
    return web
