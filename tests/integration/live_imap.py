"""IMAP sessions the live-revocation tests watch (imaplib through the real gateway):
one left in IDLE, the lines it gets until the gateway closes it, whether a login
works, and a login that must be refused. Used by test_revocation_live,
test_user_revoke_live, test_portal_app_passwords, test_portal_disown,
test_portal_devices, test_portal_signin."""

from __future__ import annotations

import imaplib

import pytest

from tests.gateway import GatewayProcess
from tests.integration.conftest import close_imap, open_imap
from tests.integration.test_clients import _read_until


def start_idle(conn: imaplib.IMAP4, user: str, password: str) -> None:
    """Log in, select INBOX and enter IDLE (the server's continuation read)."""
    conn.login(user, password)
    assert conn.select("INBOX")[0] == "OK"
    conn.send(b"I1 IDLE\r\n")
    assert _read_until(conn, rb"\+ ")[-1].startswith(b"+ ")


def lines_until_closed(conn: imaplib.IMAP4) -> list[bytes]:
    """Every line the server sends from now until it closes the connection."""
    lines: list[bytes] = []
    while True:
        line = conn.readline()
        if not line:
            return lines
        lines.append(line.rstrip(b"\r\n"))


def logs_in(gw: GatewayProcess, src: str, user: str, secret: str, timeout: float = 15) -> bool:
    """Whether a new session from `src` logs in; a refusal must be AUTHENTICATIONFAILED."""
    conn = open_imap(gw, "implicit", src, timeout=timeout)
    refusal = ""
    try:
        conn.login(user, secret)
    except imaplib.IMAP4.error as exc:
        refusal = str(exc)
    finally:
        close_imap(conn)
    if refusal:
        assert "AUTHENTICATIONFAILED" in refusal, refusal
    return not refusal


def assert_login_refused(
    gw: GatewayProcess, src: str, user: str, password: str, timeout: float = 15
) -> None:
    """A new session from `src` is refused with AUTHENTICATIONFAILED."""
    conn = open_imap(gw, "implicit", src, timeout=timeout)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            conn.login(user, password)
    finally:
        close_imap(conn)
