"""Checks that the private Dovecot instance from tests/dovecot.py behaves as documented."""

from __future__ import annotations

import imaplib
import secrets
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.dovecot import DovecotServer

pytestmark = pytest.mark.dovecot


def _message(subject: str) -> bytes:
    return (
        f"From: sender@example.org\r\nTo: rcpt@example.org\r\nSubject: {subject}\r\n\r\nHello.\r\n"
    ).encode()


def _tls_context(server: DovecotServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_cert))


@contextmanager
def _imaps(server: DovecotServer) -> Iterator[imaplib.IMAP4_SSL]:
    conn = imaplib.IMAP4_SSL(
        "127.0.0.1", server.imaps_port, ssl_context=_tls_context(server), timeout=30
    )
    # imaplib verifies against the address it dialled; IP:127.0.0.1 is in the certificate.
    try:
        yield conn
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError):
            conn.shutdown()


def _forward_ip(conn: imaplib.IMAP4, ip: str) -> None:
    typ, _ = conn.xatom("ID", f'("x-originating-ip" "{ip}")')
    assert typ == "OK"


def _inbox_count(conn: imaplib.IMAP4) -> int:
    typ, data = conn.select("INBOX")
    assert typ == "OK"
    assert data[0] is not None
    return int(data[0])


def test_imaps_login_sees_delivered_messages(dovecot: DovecotServer) -> None:
    with _imaps(dovecot) as conn:
        conn.login("alice", dovecot.users["alice"])
        before = _inbox_count(conn)
        conn.close()
    dovecot.deliver("alice", _message("first"))
    dovecot.deliver("alice", _message("second"))
    with _imaps(dovecot) as conn:
        typ, _ = conn.login("alice", dovecot.users["alice"])
        assert typ == "OK"
        assert _inbox_count(conn) == before + 2


def test_added_user_can_log_in(dovecot: DovecotServer) -> None:
    name, password = f"dave{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    dovecot.add_user(name, password)
    dovecot.deliver(name, _message("only"))
    dovecot.deliver(name, _message("two"))
    with _imaps(dovecot) as conn:
        conn.login(name, password)
        assert _inbox_count(conn) == 2


def test_starttls_on_plain_port(dovecot: DovecotServer) -> None:
    conn = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=30)
    try:
        assert "STARTTLS" in conn.capabilities
        # imaplib passes self.host as server_hostname: verify against the certificate's DNS
        # name rather than the address we dialled.
        conn.host = dovecot.server_name
        typ, _ = conn.starttls(ssl_context=_tls_context(dovecot))
        assert typ == "OK"
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock.server_hostname == "localhost"
        assert conn.sock.version() in {"TLSv1.2", "TLSv1.3"}
        typ, _ = conn.login("bob", dovecot.users["bob"])
        assert typ == "OK"
    finally:
        conn.logout()


def test_master_user_logs_in_as_alice(dovecot: DovecotServer) -> None:
    secret = f"alice\0{dovecot.master_user}\0{dovecot.master_password}".encode()
    with _imaps(dovecot) as conn:
        typ, _ = conn.authenticate("PLAIN", lambda _: secret)
        assert typ == "OK"
        assert conn.state == "AUTH"
        _inbox_count(conn)
    assert "user=<alice>" in dovecot.log_text()
    assert f"orig_user=<{dovecot.master_user}>" in dovecot.log_text()


def test_wrong_password_is_rejected(dovecot: DovecotServer) -> None:
    with _imaps(dovecot) as conn:
        _forward_ip(conn, "192.0.2.77")  # the auth failure penalty lands on a fake IP
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            conn.login("carol", "not-" + dovecot.users["carol"])


def test_id_forwards_client_address(dovecot: DovecotServer) -> None:
    with _imaps(dovecot) as conn:
        _forward_ip(conn, "203.0.113.9")
        typ, _ = conn.login("carol", dovecot.users["carol"])
        assert typ == "OK"
    assert "rip=203.0.113.9" in dovecot.log_text()
