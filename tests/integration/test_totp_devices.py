"""Password + one-time code through the gateway to a real Dovecot (master mode), with
Python's imaplib as the client: enrollment with the CLI, a code accepted once, the
same stale string accepted again from the device that proved it (never the password
alone), refused from any other network; password alone from an unknown device creates
a pending device, which the owner approves (for its exact address); passwords that end
in digits keep working with a code.

Source networks: every device here is its own /24 in 127.0.20.0-127.0.39.255
(a device is bound to the client's /24), one block per test.
"""

from __future__ import annotations

import hashlib
import hmac
import imaplib
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.conftest import GatewayIMAP4SSL, close_imap, running_gateway, wait_for
from tests.sinks import SmtpSink, WebhookReceiver

pytestmark = pytest.mark.dovecot


@pytest.fixture(scope="module")
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink(tls="starttls", auth=("notify", "smtp-secret-pw")) as sink:
        yield sink


@pytest.fixture(scope="module")
def gw_totp(
    tmp_path_factory: pytest.TempPathFactory,
    dovecot: DovecotServer,
    hook: WebhookReceiver,
    smtp: SmtpSink,
) -> Iterator[GatewayProcess]:
    base = tmp_path_factory.mktemp("gw-totp")
    secrets_dir = base / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "webhook").write_text("webhook-signing-secret-0123456789")
    (secrets_dir / "smtp").write_text("smtp-secret-pw")
    for f in secrets_dir.iterdir():
        f.chmod(0o600)
    notify = f"""
[notify]
webhook_url = "{hook.url}"
webhook_secret_file = "{secrets_dir / "webhook"}"
smtp_host = "{smtp.host}"
smtp_port = {smtp.port}
smtp_tls = "starttls"
smtp_ca_file = "{smtp.ca_file}"
smtp_username = "notify"
smtp_password_file = "{secrets_dir / "smtp"}"
mail_from = "imapguard@example.org"
owner_address = "{{user}}@example.org"
admin_addresses = ["postmaster@example.org"]
"""

    def edit(text: str) -> str:
        # Each password check is real: no remembered verifications in these tests.
        text = text.replace(
            "failure_jitter = 0.01", "failure_jitter = 0.01\nverified_cache_seconds = 0"
        )
        return text + notify

    with running_gateway(
        base, dovecot, login="master", methods=("app-password", "password+totp"), edit=edit
    ) as gw:
        yield gw


def _user(dovecot: DovecotServer, password: str | None = None) -> tuple[str, str]:
    name = f"t{secrets.token_hex(3)}"
    password = password or f"pw-{secrets.token_urlsafe(9)}x"
    dovecot.add_user(name, password)
    return name, password


def _enroll(gw: GatewayProcess, user: str) -> pyotp.TOTP:
    out = gw.cli("totp", "enroll", user, "--json")
    document: dict[str, Any] = json.loads(out.stdout)
    assert document["uri"].startswith("otpauth://totp/")
    return pyotp.TOTP(document["secret"])


def _login(gw: GatewayProcess, src: str, user: str, secret: str) -> bool:
    conn = GatewayIMAP4SSL(gw.implicit_port, src, gw.client_ssl())
    refusal = ""
    try:
        conn.login(user, secret)
    except imaplib.IMAP4.error as exc:
        refusal = str(exc)
    if refusal:
        assert "[AUTHENTICATIONFAILED] Authentication failed." in refusal
        close_imap(conn)
        return False
    typ, data = conn.select("INBOX")
    assert typ == "OK", data
    close_imap(conn)
    return True


def _auth_events(gw: GatewayProcess, user: str) -> list[dict[str, Any]]:
    return [e for e in gw.events("auth") if e.get("user") == user]


def _devices(gw: GatewayProcess, user: str) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = json.loads(gw.cli("device", "list", user, "--json").stdout)
    return devices


def test_code_once_stale_string_on_its_device_refused_elsewhere(
    gw_totp: GatewayProcess, dovecot: DovecotServer
) -> None:
    gw = gw_totp
    user, password = _user(dovecot)
    otp = _enroll(gw, user)
    typed = password + otp.now()

    assert _login(gw, "127.0.20.1", user, typed)
    # The mail client reconnects with what was typed (the code is used up by now):
    # accepted from the device that proved it, also from another address of its /24.
    assert _login(gw, "127.0.20.1", user, typed)
    assert _login(gw, "127.0.20.7", user, typed)
    # The same string from another network: the code was accepted once already.
    assert not _login(gw, "127.0.21.1", user, typed)

    events = _auth_events(gw, user)
    assert [(e["result"], e.get("factor")) for e in events] == [
        ("ok", "password+totp"),
        ("ok", "trusted-device"),
        ("ok", "trusted-device"),
        ("missing_factor", None),
    ]
    assert "already used" in events[-1]["reason"] or "wrong or used" in events[-1]["reason"]
    signals = [e for e in gw.events("compromise_signal") if e["user"] == user]
    assert [s["src"] for s in signals] == ["127.0.21.1"]
    (device,) = _devices(gw, user)
    assert (device["network"], device["status"], device["trusted"]) == (
        "127.0.20.0/24",
        "trusted",
        True,
    )


def test_password_alone_from_a_new_device_waits_for_approval(
    gw_totp: GatewayProcess, dovecot: DovecotServer, hook: WebhookReceiver, smtp: SmtpSink
) -> None:
    gw = gw_totp
    user, password = _user(dovecot)
    otp = _enroll(gw, user)
    assert _login(gw, "127.0.22.1", user, password + otp.now())

    # Password alone from an unknown network: refused like any failure, pending device.
    assert not _login(gw, "127.0.23.1", user, password)
    pending = [d for d in _devices(gw, user) if d["status"] == "pending"]
    assert [(d["network"], d["trusted"]) for d in pending] == [("127.0.23.0/24", False)]
    signal = [e for e in gw.events("compromise_signal") if e["user"] == user][-1]
    assert signal["device"] == pending[0]["id"]
    assert "awaits approval" in signal["reason"]

    # The owner is told out of band: a signed webhook and mails (owner, admins).
    def webhooks() -> list[dict[str, Any]]:
        return [r.json() for r in hook.requests if r.json()["user"] == user]

    def mails() -> list[Any]:
        return [m for m in smtp.messages if f"{user}@example.org" in m.rcpt_tos]

    kinds = wait_for(
        lambda: sorted(w["kind"] for w in webhooks()) if len(webhooks()) >= 2 else None
    )
    assert kinds == ["compromise_signal", "new_device"]
    new_device = next(w for w in webhooks() if w["kind"] == "new_device")
    assert (new_device["device_id"], new_device["src"]) == (pending[0]["id"], "127.0.23.1")
    request = next(r for r in hook.requests if r.json() is not None and r.json() == new_device)
    expected = (
        "sha256="
        + hmac.new(b"webhook-signing-secret-0123456789", request.body, hashlib.sha256).hexdigest()
    )
    assert request.headers["x-imapguard-signature"] == expected
    owner_mails = wait_for(lambda: mails() if len(mails()) >= 2 else None)
    assert all(m.login == "notify" and m.tls for m in owner_mails)
    text = "\n".join(str(m.message) for m in owner_mails)
    assert pending[0]["id"] in text
    assert password not in text

    # Again: still refused, still one pending device, and no new notice this hour.
    assert not _login(gw, "127.0.23.1", user, password)
    assert len([d for d in _devices(gw, user) if d["status"] == "pending"]) == 1
    time.sleep(1.0)
    assert len(webhooks()) == 2

    out = gw.cli("device", "approve", user, pending[0]["id"], "--json")
    assert json.loads(out.stdout) == {"id": pending[0]["id"], "approved": True}
    assert _login(gw, "127.0.23.1", user, password)
    # Approval trusts that device only.
    assert not _login(gw, "127.0.24.1", user, password)
    # A revoked device must prove a factor again.
    gw.cli("device", "revoke", user, pending[0]["id"])
    assert not _login(gw, "127.0.23.1", user, password)


def test_wrong_password_never_reaches_the_code_check(
    gw_totp: GatewayProcess, dovecot: DovecotServer
) -> None:
    gw = gw_totp
    user, _ = _user(dovecot)
    otp = _enroll(gw, user)
    assert not _login(gw, "127.0.25.1", user, "wrong-password" + otp.now())
    (event,) = _auth_events(gw, user)
    assert (event["result"], event["reason"].split(" (")[0]) == ("invalid", "wrong password")
    assert not [e for e in gw.events("compromise_signal") if e["user"] == user]
    assert _devices(gw, user) == []


def test_passwords_ending_in_digits_still_work(
    gw_totp: GatewayProcess, dovecot: DovecotServer
) -> None:
    gw = gw_totp
    user, password = _user(dovecot, f"pw-{secrets.token_hex(4)}-123456")
    otp = _enroll(gw, user)
    # With a code after the digits:
    typed = password + otp.now()
    assert _login(gw, "127.0.26.1", user, typed)
    # From that (now trusted) device, what its mail client stored, digits and all:
    assert _login(gw, "127.0.26.1", user, typed)
    factors = [e.get("factor") for e in _auth_events(gw, user) if e["result"] == "ok"]
    assert factors == ["password+totp", "trusted-device"]
    # The password alone is not the device (A7): its last six digits read as a code.
    assert not _login(gw, "127.0.26.1", user, password)


def test_unenrolled_account_password_alone_is_refused_without_a_signal(
    gw_totp: GatewayProcess, dovecot: DovecotServer
) -> None:
    gw = gw_totp
    user, password = _user(dovecot)
    assert not _login(gw, "127.0.27.1", user, password)
    (event,) = _auth_events(gw, user)
    assert event["result"] == "missing_factor"
    assert "no second factor enrolled" in event["reason"]
    assert _devices(gw, user) == []


def test_totp_remove_ends_code_logins(gw_totp: GatewayProcess, dovecot: DovecotServer) -> None:
    gw = gw_totp
    user, password = _user(dovecot)
    otp = _enroll(gw, user)
    gw.cli("totp", "remove", user)
    assert not _login(gw, "127.0.28.1", user, password + otp.now())
    shown = json.loads(gw.cli("user", "show", user, "--json").stdout)
    assert shown["totp"] is None
