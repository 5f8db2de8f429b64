"""Slow-read DoS: a logged-in client asks for far more data than it reads. The
relay's flow control stops reading from Dovecot while the client's side is
backed up, so the gateway's memory does not grow with what the client asked
for; the data still arrives intact once the client reads."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import time
from pathlib import Path

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import message

pytestmark = pytest.mark.dovecot

SIZE = 4 * 1024 * 1024
FETCHES = 8  # 32 MB asked for


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_reader_does_not_grow_gateway_memory(
    gw: GatewayProcess, dovecot: DovecotServer, alice_password: str
) -> None:
    subject = f"slow-{secrets.token_hex(4)}"
    body = os.urandom(SIZE // 2).hex().encode()
    body = b"\r\n".join(body[i : i + 76] for i in range(0, len(body), 76)) + b"\r\n"
    big = message(subject, body=body)
    dovecot.deliver("alice", big)
    assert gw.proc is not None
    pid = gw.proc.pid

    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # a slow, small reader
    raw.bind((source_address(110), 0))
    raw.settimeout(30)
    raw.connect(("127.0.0.1", gw.implicit_port))
    with gw.client_ssl().wrap_socket(raw, server_hostname="localhost") as tls:
        reader = tls.makefile("rb")

        def send(line: bytes) -> None:
            tls.sendall(line + b"\r\n")

        def until(tag: bytes) -> list[bytes]:
            lines: list[bytes] = []
            while True:
                line = reader.readline()
                assert line, lines
                lines.append(line)
                if line.startswith(tag + b" "):
                    return lines

        until(b"*")  # the greeting
        send(f'a LOGIN alice "{alice_password}"'.encode())
        assert until(b"a")[-1].startswith(b"a OK ")
        send(b"b EXAMINE INBOX")
        assert until(b"b")[-1].startswith(b"b OK ")
        send(f'c SEARCH SUBJECT "{subject}"'.encode())
        lines = until(b"c")
        seq = lines[0].split()[2].decode()
        before = _rss_kib(pid)

        for i in range(FETCHES):
            send(f"f{i} FETCH {seq} BODY.PEEK[]".encode())
        time.sleep(1.5)  # Dovecot has all of it ready; the client reads nothing
        stalled = _rss_kib(pid)

        digest = hashlib.sha256(big).hexdigest()
        for i in range(FETCHES):
            head = reader.readline()
            match = re.search(rb"\{(\d+)\}\r\n\Z", head)
            assert match is not None, head
            data = reader.read(int(match.group(1)))
            assert hashlib.sha256(data).hexdigest() == digest
            assert until(f"f{i}".encode())[-1].startswith(f"f{i} OK".encode())
        after = _rss_kib(pid)
        send(b"z LOGOUT")

    assert stalled - before < 12 * 1024, (before, stalled, after)
    assert after - before < 12 * 1024, (before, stalled, after)
