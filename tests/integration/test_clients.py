"""Real IMAP clients through the gateway: curl (IMAPS and STARTTLS), mbsync
(IMAPS and STARTTLS into a Maildir), Python imaplib with IDLE, and a 5 MB message
in both directions through the relay."""

from __future__ import annotations

import base64
import hashlib
import imaplib
import os
import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import close_imap, message, open_imap, wait_for

pytestmark = [pytest.mark.dovecot, pytest.mark.clients]


@dataclass(frozen=True)
class Mailbox:
    user: str
    password: str  # an app password on the session gateway
    messages: tuple[bytes, ...]


@pytest.fixture(scope="module")
def mailbox(gw: GatewayProcess, dovecot: DovecotServer) -> Mailbox:
    """A fresh Dovecot user with three known messages and an app password."""
    user = f"clients{secrets.token_hex(3)}"
    dovecot.add_user(user, secrets.token_urlsafe(12))
    messages = tuple(message(f"clients-{i}-{secrets.token_hex(4)}") for i in range(3))
    for msg in messages:
        dovecot.deliver(user, msg)
    return Mailbox(user, gw.create_app_password(user, "clients"), messages)


def _subject(msg: bytes) -> str:
    match = re.search(rb"^Subject: (.*)\r$", msg, re.MULTILINE)
    assert match is not None
    return match.group(1).decode()


# -- curl ---------------------------------------------------------------------------


def _curl(gw: GatewayProcess, mailbox: Mailbox, n: int, url: str, *extra: str) -> str:
    port = int(url.split(":")[2].split("/")[0])
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "30",
            "--cacert",
            str(gw.ca_cert),
            "--resolve",
            f"localhost:{port}:127.0.0.1",
            "--interface",
            source_address(n),
            "--user",
            f"{mailbox.user}:{mailbox.password}",
            *extra,
            url,
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


@pytest.mark.parametrize(("kind", "n"), [("imaps", 30), ("starttls", 31)])
def test_curl_searches_and_fetches(gw: GatewayProcess, mailbox: Mailbox, kind: str, n: int) -> None:
    tls: tuple[str, ...]
    if kind == "imaps":
        base, tls = f"imaps://localhost:{gw.implicit_port}", ()
    else:
        base, tls = f"imap://localhost:{gw.starttls_port}", ("--ssl-reqd",)
    wanted = mailbox.messages[1]
    out = _curl(gw, mailbox, n, f"{base}/INBOX", *tls, "--request", "SEARCH ALL")
    assert out.split() == ["*", "SEARCH", "1", "2", "3"]
    search = f'UID SEARCH SUBJECT "{_subject(wanted)}"'
    out = _curl(gw, mailbox, n, f"{base}/INBOX", *tls, "--request", search)
    uids = out.split()[2:]
    assert len(uids) == 1, out
    fetched = _curl(gw, mailbox, n, f"{base}/INBOX;UID={uids[0]}", *tls)
    assert fetched.encode() == wanted
    auths = [e for e in gw.events("auth") if e.get("src") == source_address(n)]
    assert [e["result"] for e in auths] == ["ok"] * 3


def test_curl_without_tls_cannot_log_in(gw: GatewayProcess, mailbox: Mailbox) -> None:
    """A client that does not ask for STARTTLS gets LOGINDISABLED and no login."""
    src = source_address(32)
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--max-time",
            "30",
            "--interface",
            src,
            "--user",
            f"{mailbox.user}:{mailbox.password}",
            f"imap://127.0.0.1:{gw.starttls_port}/INBOX",
            "--request",
            "SEARCH ALL",
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert b"SEARCH" not in result.stdout
    assert not [e for e in gw.events("auth") if e.get("src") == src]
    assert mailbox.password not in gw.audit_path.read_text()


# -- mbsync -------------------------------------------------------------------------


def _mbsync(tmp_path: Path, gw: GatewayProcess, mailbox: Mailbox, ssl_type: str) -> Path:
    port = gw.implicit_port if ssl_type == "IMAPS" else gw.starttls_port
    maildir = tmp_path / f"maildir-{ssl_type.lower()}"
    maildir.mkdir()
    rc = tmp_path / f"mbsyncrc-{ssl_type.lower()}"
    rc.write_text(
        f"""\
IMAPAccount gateway
Host localhost
Port {port}
User {mailbox.user}
Pass "{mailbox.password}"
SSLType {ssl_type}
CertificateFile {gw.ca_cert}

IMAPStore gateway-remote
Account gateway

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel test
Far :gateway-remote:
Near :local:
Patterns INBOX
Create Near
SyncState *
"""
    )
    result = subprocess.run(
        ["mbsync", "-c", str(rc), "test"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return maildir / "INBOX"


@pytest.mark.parametrize("ssl_type", ["IMAPS", "STARTTLS"])
def test_mbsync_syncs_a_mailbox(
    tmp_path: Path, gw: GatewayProcess, mailbox: Mailbox, ssl_type: str
) -> None:
    port = gw.implicit_port if ssl_type == "IMAPS" else gw.starttls_port

    def logins() -> list[dict[str, Any]]:
        return [
            e
            for e in gw.events("auth")
            if e.get("user") == mailbox.user and e["listener"].endswith(f":{port}")
        ]

    before = len(logins())
    inbox = _mbsync(tmp_path, gw, mailbox, ssl_type)
    assert [e["result"] for e in logins()[before:]] == ["ok"]
    files = [p for sub in ("new", "cur") for p in (inbox / sub).iterdir()]
    assert len(files) == len(mailbox.messages)
    # mbsync stores messages with LF line ends and adds an X-TUID header.
    got = sorted(
        re.sub(rb"(?m)^X-TUID: .*\n", b"", p.read_bytes()).replace(b"\r\n", b"\n") for p in files
    )
    assert got == sorted(m.replace(b"\r\n", b"\n") for m in mailbox.messages)


# -- imaplib: IDLE and a large message ------------------------------------------------


def _read_until(conn: imaplib.IMAP4, pattern: bytes) -> list[bytes]:
    """imaplib lines (IMAP4.readline) until one matches `pattern`."""
    lines: list[bytes] = []
    regex = re.compile(pattern)
    while True:
        line = conn.readline()
        assert line, f"connection closed; got {lines!r}"
        lines.append(line.rstrip(b"\r\n"))
        if regex.match(lines[-1]):
            return lines


def test_idle_sees_new_mail(
    gw: GatewayProcess, dovecot: DovecotServer, alice_password: str
) -> None:
    src = source_address(33)
    idler = open_imap(gw, "implicit", src, timeout=15)
    other = open_imap(gw, "starttls", src, timeout=15)
    try:
        idler.login("alice", alice_password)
        typ, data = idler.select("INBOX")
        assert typ == "OK"
        assert data[0] is not None
        exists = int(data[0])

        idler.send(b"I1 IDLE\r\n")
        assert _read_until(idler, rb"\+ ")[-1].startswith(b"+ ")

        # A message appended through another gateway connection ...
        other.login("alice", alice_password)
        typ, _ = other.append("INBOX", None, None, message(f"idle-{secrets.token_hex(4)}"))
        assert typ == "OK"
        line = _read_until(idler, rb"\* \d+ EXISTS")[-1]
        assert int(line.split()[1]) == exists + 1

        # ... and one delivered by the mail server itself.
        dovecot.deliver("alice", message(f"idle-{secrets.token_hex(4)}"))
        line = _read_until(idler, rb"\* \d+ EXISTS")[-1]
        assert int(line.split()[1]) == exists + 2

        idler.send(b"DONE\r\n")
        assert _read_until(idler, rb"I1 ")[-1].startswith(b"I1 OK")
        typ, _ = idler.noop()
        assert typ == "OK"
    finally:
        close_imap(idler)
        close_imap(other)


def _big_message(size: int) -> bytes:
    raw = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n")
    return message(
        f"big-{secrets.token_hex(4)}",
        body=raw,
        extra_headers="MIME-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n",
    )


def test_five_megabyte_message_round_trip(gw: GatewayProcess, alice_password: str) -> None:
    src = source_address(34)
    big = _big_message(5 * 1024 * 1024)
    assert len(big) > 5 * 1024 * 1024
    msgid = re.search(rb"Message-ID: (<[^>]+>)", big)
    assert msgid is not None

    writer = open_imap(gw, "starttls", src)
    try:
        writer.login("alice", alice_password)
        typ, _ = writer.append("INBOX", None, None, big)
        assert typ == "OK"
    finally:
        close_imap(writer)

    reader = open_imap(gw, "implicit", src)
    try:
        reader.login("alice", alice_password)
        reader.select("INBOX", readonly=True)
        typ, data = reader.search(None, f'HEADER Message-ID "{msgid.group(1).decode()}"')
        assert typ == "OK"
        assert data[0] is not None
        seqs = data[0].split()
        assert len(seqs) == 1
        typ, fetched = reader.fetch(seqs[0].decode(), "(BODY.PEEK[])")
        assert typ == "OK"
        part = fetched[0]
        assert isinstance(part, tuple)
        body = part[1]
        assert len(body) == len(big)
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(big).hexdigest()
        # The relay still works after the large transfer.
        assert reader.noop()[0] == "OK"
    finally:
        close_imap(reader)

    def closes() -> list[dict[str, Any]] | None:
        found = [e for e in gw.events("close") if e.get("src") == src and e.get("user")]
        return found if len(found) == 2 else None

    close = wait_for(closes, what="two close events")
    assert close[0]["bytes_in"] > len(big)  # the APPEND went up through the relay
    assert close[1]["bytes_out"] > len(big)  # the FETCH came down through it
