"""Attack-named: forging a trusted device, and what a right code costs at the upstream.

A7. A device that proved a code was trusted as (account, client /24, IMAP ID name and
version), so a phished password sent with the victim's mail client ID from another
address of the victim's /24 logged in with the password alone. Now the trust is bound
to what only the device has: the code it proved, which its mail client sends again
after the password; an owner-approved device is trusted at its exact address only.

A10. A right password + code from an unknown device was checked upstream twice at once
(the whole field and the password), so Dovecot logged a failed login and applied its
per-address penalty to every such successful login; the next login waited 4 s. Now
the code is verified locally first and the upstream is asked once.

Through a real `imapguard serve` (password+totp, master mode) in front of the real
Dovecot fixture, with imaplib. Source networks: 127.0.204.0/24 - 127.0.206.0/24.
"""

from __future__ import annotations

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
from tests.integration.conftest import GatewayIMAP4SSL, close_imap, dovecot_lines, running_gateway

pytestmark = pytest.mark.dovecot

CLIENT_ID = '("name" "Mail" "version" "16.0")'


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    def edit(text: str) -> str:
        # Every password check is real (no remembered verification).
        return text.replace(
            "failure_jitter = 0.01", "failure_jitter = 0.01\nverified_cache_seconds = 0"
        )

    with running_gateway(
        tmp_path_factory.mktemp("gw-forgery"),
        dovecot,
        login="master",
        methods=("app-password", "password+totp"),
        edit=edit,
    ) as gw:
        yield gw


def _user(dovecot: DovecotServer) -> tuple[str, str]:
    name = f"f{secrets.token_hex(3)}"
    password = f"pw-{secrets.token_urlsafe(9)}x"
    dovecot.add_user(name, password)
    return name, password


def _enroll(gw: GatewayProcess, user: str) -> pyotp.TOTP:
    document: dict[str, Any] = json.loads(gw.cli("totp", "enroll", user, "--json").stdout)
    return pyotp.TOTP(document["secret"])


def _login(gw: GatewayProcess, src: str, user: str, secret: str) -> bool:
    """Log in as a mail client does (IMAP ID first); True if the mailbox opened."""
    conn = GatewayIMAP4SSL(gw.implicit_port, src, gw.client_ssl())
    try:
        typ, _ = conn.xatom("ID", CLIENT_ID)
        assert typ == "OK"
        refusal = ""
        try:
            conn.login(user, secret)
        except imaplib.IMAP4.error as exc:
            refusal = str(exc)
        if refusal:
            assert "[AUTHENTICATIONFAILED] Authentication failed." in refusal
            return False
        typ, data = conn.select("INBOX")
        assert typ == "OK", data
        return True
    finally:
        close_imap(conn)


def _auth(gw: GatewayProcess, user: str) -> list[dict[str, Any]]:
    return [e for e in gw.events("auth") if e.get("user") == user]


def test_trusted_device_forged_from_the_same_network_with_the_password_alone(
    gw: GatewayProcess, dovecot: DovecotServer
) -> None:
    user, password = _user(dovecot)
    otp = _enroll(gw, user)
    typed = password + otp.now()
    # The victim's phone proves a code; its mail client stores what was typed.
    assert _login(gw, "127.0.204.10", user, typed)
    # The attacker: the phished password, the same mail client ID, another address of
    # the victim's /24. The password alone is not the device.
    assert not _login(gw, "127.0.204.66", user, password)
    # Nor is a guess at the device's stale code.
    guess = f"{(int(otp.now()) + 17) % 1_000_000:06d}"
    assert not _login(gw, "127.0.204.66", user, password + guess)
    # The phone, reconnecting with what it stored (its code long used): fine.
    assert _login(gw, "127.0.204.10", user, typed)

    events = _auth(gw, user)
    assert [(e["src"], e["result"], e.get("factor")) for e in events] == [
        ("127.0.204.10", "ok", "password+totp"),
        ("127.0.204.66", "missing_factor", None),
        ("127.0.204.66", "missing_factor", None),
        ("127.0.204.10", "ok", "trusted-device"),
    ]
    assert "trusted only with the code it proved" in events[1]["reason"]
    assert "wrong" in events[2]["reason"]
    signals = [e for e in gw.events("compromise_signal") if e["user"] == user]
    assert [s["src"] for s in signals] == ["127.0.204.66", "127.0.204.66"]
    # The stale-code guess was counted as a wrong code (codes lock after a few).
    shown = json.loads(gw.cli("user", "show", user, "--json").stdout)
    assert "totp" in json.dumps(shown)


def test_approved_device_is_trusted_at_its_exact_address_only(
    gw: GatewayProcess, dovecot: DovecotServer
) -> None:
    user, password = _user(dovecot)
    _enroll(gw, user)
    # The owner's laptop logs in with the password alone: refused, pending.
    assert not _login(gw, "127.0.205.10", user, password)
    devices = json.loads(gw.cli("device", "list", user, "--json").stdout)
    (pending,) = [d for d in devices if d["status"] == "pending"]
    # Approval says where the login came from, and binds the trust to that address.
    out = gw.cli("device", "approve", user, pending["id"]).stdout
    assert "127.0.205.10" in out
    assert "Mail 16.0" in out
    assert _login(gw, "127.0.205.10", user, password)
    # The same client ID from the same /24, another address: not the approved device.
    assert not _login(gw, "127.0.205.11", user, password)
    last = _auth(gw, user)[-1]
    assert "trusted only at 127.0.205.10" in last["reason"]
    (device,) = json.loads(gw.cli("device", "list", user, "--json").stdout)
    assert device["bound_to"] == "127.0.205.10"
    # Trusted for `approved_device_days` (7 by default), not the 30 of a proven code.
    assert device["trusted_until"] - time.time() < 8 * 86400


def test_right_password_and_code_costs_no_failed_upstream_login(
    gw: GatewayProcess, dovecot: DovecotServer
) -> None:
    user, password = _user(dovecot)
    otp = _enroll(gw, user)
    # A new device: password followed by a fresh code.
    assert _login(gw, "127.0.206.10", user, password + otp.now())
    # Dovecot saw one login for this user, a successful one: no "Password mismatch"
    # (and so no per-address penalty for the user's next login).
    assert not [
        line
        for line in dovecot_lines(dovecot, user)
        if "mismatch" in line.lower() or "auth failed" in line.lower()
    ]
    started = time.monotonic()
    typed_again = password + otp.now()
    assert _login(gw, "127.0.206.10", user, typed_again)
    # Dovecot's penalty after one failure is 4 s; the next login is not held back.
    assert time.monotonic() - started < 3.5
