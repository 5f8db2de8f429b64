"""The sign-in history in a person's words: the web portal with the browser's
short name, a mail app with its IMAP ID, a device password by its label (not its
id; "a revoked device password" once gone), a refusal's reason without the
defense's internals; another account's labels never show; the client's text
stays text."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.auth import app_passwords
from imapguard.portal.history_text import (
    client_text,
    credential_text,
    result_text,
    short_user_agent,
)
from imapguard.portal.kit import MAX_USER_AGENT
from imapguard.state.accounts import DeviceKey
from tests.unit.portal.support import Portal, portal

CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/131.0.6778.85 Safari/537.36"
)


def record(
    p: Portal,
    credential: str,
    *,
    user: str = "alice",
    method: str = "LOGIN",
    ok: bool = True,
    reason: str = "",
    client: str = "",
) -> None:
    p.store.ensure_user(user, p.clock.now - 3600)
    p.store.record_sign_in(
        user, p.clock.now - 60, "203.0.113.9", method, ok, reason, credential, client
    )


@pytest.mark.parametrize(
    ("agent", "short"),
    [
        (CHROME, "Chrome 131 on Linux"),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "Firefox 133 on Windows",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/18.1 Safari/605.1.15",
            "Safari 18 on macOS",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
            "Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
            "Edge 131 on Windows",
        ),
        ("curl/8.5.0", "curl/8.5.0"),
    ],
)
def test_a_user_agent_is_shortened_to_browser_and_system(agent: str, short: str) -> None:
    assert short_user_agent(agent) == short


def test_a_long_or_multiline_client_text_stays_one_short_line() -> None:
    text = client_text("LOGIN", "Evil\r\nMail/" + "9" * 500)
    assert "\n" not in text
    assert "\r" not in text
    assert len(text) < 100
    assert text.startswith("Mail app (IMAP, Evil Mail 999")


def test_how_and_why_in_words() -> None:
    assert client_text("portal", CHROME) == "Web portal (browser: Chrome 131 on Linux)"
    assert client_text("portal", "") == "Web portal (browser)"
    assert client_text("PLAIN", "") == "Mail app (IMAP)"
    assert client_text("app-password", "Thunderbird/115.0") == "Mail app (IMAP, Thunderbird 115.0)"
    blocked = "blocked: 12 distinct wrong passwords from 203.0.113.9 in 10 minutes"
    assert result_text(False, blocked) == "Refused: address blocked"
    locked = "blocked: 10 distinct wrong passwords from unfamiliar sources in 10 minutes"
    assert result_text(False, locked) == "Refused: account locked for new addresses"
    assert result_text(False, "wrong password") == "Refused: wrong password"
    assert result_text(True, "") == "Signed in"
    assert credential_text("") == ""
    assert credential_text("app-password:1a2b3c4d", {}) == "a revoked device password"


@pytest.mark.asyncio
async def test_a_device_password_shows_its_label_and_a_revoked_one_says_so(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        key = p.deps.services.app_password_key if p.deps.services else b""
        tablet, _ = app_passwords.create(p.store, key, "alice", "tablet", p.clock.now)
        gone, _ = app_passwords.create(p.store, key, "alice", "old phone", p.clock.now)
        assert p.store.revoke("alice", f"app-password:{gone.id}", p.clock.now)
        device = p.store.trust_device(
            DeviceKey("alice", "203.0.113.0/24", "Thunderbird", "115.0"),
            p.clock.now,
            p.clock.now + 86400,
            "203.0.113.9",
            b"s",
        )
        record(p, f"app-password:{tablet.id}", method="app-password", client="K-9/6.8")
        record(p, f"app-password:{gone.id}", method="app-password")
        record(p, f"device:{device.id}", method="password")
        await p.sign_in()
        page = (await p.client.get("/sign-ins")).text
        assert "device password “tablet”" in page
        assert "a revoked device password" in page
        assert "trusted device “Thunderbird 115.0”" in page
        assert "Mail app (IMAP, K-9 6.8)" in page
        for ident in (tablet.id, gone.id, device.id):
            assert f"password {ident}" not in page
            assert f"device {ident}" not in page


@pytest.mark.asyncio
async def test_idor_another_accounts_credential_id_shows_no_label(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        key = p.deps.services.app_password_key if p.deps.services else b""
        carols, _ = app_passwords.create(
            p.store, key, "carol", "carol's secret laptop", p.clock.now
        )
        # A forged history row of alice naming carol's device password.
        record(p, f"app-password:{carols.id}", method="app-password")
        await p.sign_in()
        page = (await p.client.get("/sign-ins")).text
        assert "secret laptop" not in page
        assert "a revoked device password" in page


@pytest.mark.asyncio
async def test_a_blocked_attempt_and_a_portal_sign_in_read_as_words(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        record(
            p,
            "",
            method="PLAIN",
            ok=False,
            reason="blocked: 12 distinct wrong passwords from 203.0.113.9 in 10 minutes",
        )
        record(p, "", method="portal", client=CHROME)
        await p.sign_in()
        page = (await p.client.get("/sign-ins")).text
        assert "Refused: address blocked" in page
        assert "Mail app (IMAP)" in page
        assert "Web portal (browser: Chrome 131 on Linux)" in page
        assert "unknown (PLAIN)" not in page
        assert "unknown (portal)" not in page


@pytest.mark.asyncio
async def test_xss_a_label_and_a_client_name_are_escaped(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        key = p.deps.services.app_password_key if p.deps.services else b""
        evil, _ = app_passwords.create(p.store, key, "alice", "<b>x</b>", p.clock.now)
        record(p, f"app-password:{evil.id}", client="<script>alert(1)</script>/1")
        await p.sign_in()
        page = (await p.client.get("/sign-ins")).text
        assert "<script>alert(1)" not in page
        assert "<b>x</b>" not in page
        assert "&lt;b&gt;x&lt;/b&gt;" in page


@pytest.mark.asyncio
async def test_the_browsers_user_agent_is_the_portal_sign_ins_client_one_bounded_line(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        # A forged header: one line, bounded (it is written to the audit log).
        p.client.headers["user-agent"] = "x\tforged\x7fline " + "A" * 1000
        await p.password_step("bob")
        kind, _, ctx = p.service.calls[-1]
        assert kind == "password"
        assert ctx.client_id is not None
        assert ctx.client_id.startswith("x forged line AAA")
        assert len(ctx.client_id) == MAX_USER_AGENT
        p.client.headers["user-agent"] = CHROME
        await p.sign_in()
        steps = [(kind, ctx.client_id) for kind, _, ctx in p.service.calls]
        assert ("password", CHROME) in steps
        assert ("totp", CHROME) in steps


@pytest.mark.parametrize(
    ("credential", "words"),
    [
        ("password+totp", "password and one-time code"),
        ("trusted-device", "trusted device"),
        ("oauth-mfa", "organisation sign-in with a second factor"),
        ("client-cert", "client certificate"),
        ("one-time-code", "one-time code"),
        ("password", "account password"),
    ],
)
def test_every_factor_a_login_names_reads_as_words(credential: str, words: str) -> None:
    assert credential_text(credential, {}) == words
