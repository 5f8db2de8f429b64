"""The embedded pymap backend behind ``imapguard demo``, driven by stdlib imaplib."""

from __future__ import annotations

import asyncio
import imaplib
from collections.abc import Callable
from typing import TypeVar

import pytest

from imapguard.demo_backend import (
    DEFAULT_DEMO_USER,
    PYMAP_DEMO_INBOX_MESSAGES,
    SEEDED_INBOX_MESSAGES,
    DemoAccount,
    DemoBackend,
    demo_backend,
)

ALICE = DemoAccount("alice", "alicepw")
BOB = DemoAccount("bob", "bobpw")
MASTER = DemoAccount("imapguard", "masterpw")

T = TypeVar("T")


def make_backend() -> DemoBackend:
    return demo_backend(port=0, users=[ALICE, BOB], master=MASTER)


def with_client(backend: DemoBackend, fn: Callable[[imaplib.IMAP4], T]) -> T:
    """Connect, run ``fn``, always close the socket (ResourceWarnings are errors)."""
    client = imaplib.IMAP4(backend.host, backend.port, timeout=10)
    try:
        return fn(client)
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            client.shutdown()


def select_count(client: imaplib.IMAP4, mailbox: str = "INBOX") -> int:
    typ, data = client.select(mailbox)
    assert typ == "OK", data
    assert data[0] is not None
    return int(data[0])


def login_and_count(account: DemoAccount) -> Callable[[imaplib.IMAP4], int]:
    def run(client: imaplib.IMAP4) -> int:
        typ, _ = client.login(account.name, account.password)
        assert typ == "OK"
        return select_count(client)

    return run


def subjects(client: imaplib.IMAP4) -> list[bytes]:
    typ, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    return [part[1].strip() for part in data if isinstance(part, tuple)]


def assert_no_stray_tasks() -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.asyncio
async def test_port_zero_picks_a_real_port() -> None:
    backend = make_backend()
    async with backend as running:
        assert running is backend
        assert backend.host == "127.0.0.1"
        assert backend.port > 0
        greeting = await asyncio.to_thread(with_client, backend, lambda c: c.welcome)
        assert greeting.startswith(b"* OK")
        assert b"localhost" in greeting  # never socket.getfqdn()
    assert_no_stray_tasks()


@pytest.mark.asyncio
async def test_alice_logs_in_and_sees_her_seeded_inbox() -> None:
    async with make_backend() as backend:
        count = await asyncio.to_thread(with_client, backend, login_and_count(ALICE))
        assert count == SEEDED_INBOX_MESSAGES

        def mailboxes(client: imaplib.IMAP4) -> list[bytes]:
            client.login(BOB.name, BOB.password)
            typ, data = client.list()
            assert typ == "OK"
            return [line for line in data if isinstance(line, bytes)]

        listing = await asyncio.to_thread(with_client, backend, mailboxes)
        names = {line.rsplit(b" ", 1)[-1].strip(b'"') for line in listing}
        assert {b"INBOX", b"Sent", b"Trash"} <= names
    assert_no_stray_tasks()


@pytest.mark.asyncio
async def test_demouser_gets_pymap_demo_data() -> None:
    async with make_backend() as backend:
        count = await asyncio.to_thread(with_client, backend, login_and_count(DEFAULT_DEMO_USER))
        assert count == PYMAP_DEMO_INBOX_MESSAGES == 4


@pytest.mark.asyncio
async def test_master_login_lands_in_the_target_users_mailbox() -> None:
    def as_alice_via_master(client: imaplib.IMAP4) -> list[bytes]:
        typ, _ = client.authenticate("PLAIN", lambda _: b"alice\0imapguard\0masterpw")
        assert typ == "OK"
        assert select_count(client) == SEEDED_INBOX_MESSAGES
        return subjects(client)

    async with make_backend() as backend:
        seen = await asyncio.to_thread(with_client, backend, as_alice_via_master)
        direct = await asyncio.to_thread(
            with_client,
            backend,
            lambda c: (c.login(ALICE.name, ALICE.password), c.select("INBOX"), subjects(c))[2],
        )
        assert seen == direct
        assert b"Subject: Welcome to the imapguard demo" in seen


@pytest.mark.asyncio
async def test_mail_is_per_user_and_persists_across_sessions() -> None:
    message = b"From: a@x\r\nTo: b@x\r\nSubject: hi\r\n\r\nbody\r\n"

    async with make_backend() as backend:

        def append_as_alice(client: imaplib.IMAP4) -> None:
            client.login(ALICE.name, ALICE.password)
            typ, _ = client.append("INBOX", "", imaplib.Time2Internaldate(0), message)
            assert typ == "OK"

        await asyncio.to_thread(with_client, backend, append_as_alice)
        alice = await asyncio.to_thread(with_client, backend, login_and_count(ALICE))
        bob = await asyncio.to_thread(with_client, backend, login_and_count(BOB))
        assert alice == SEEDED_INBOX_MESSAGES + 1
        assert bob == SEEDED_INBOX_MESSAGES


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("authcid", "authzid", "password"),
    [
        ("alice", "alice", "wrong"),
        ("nobody", "nobody", "alicepw"),
        ("imapguard", "alice", "wrong"),
        ("bob", "alice", "bobpw"),  # not admin: may not act as someone else
    ],
)
async def test_bad_credentials_are_refused(authcid: str, authzid: str, password: str) -> None:
    def attempt(client: imaplib.IMAP4) -> None:
        if authcid == authzid:
            with pytest.raises(imaplib.IMAP4.error):
                client.login(authcid, password)
        else:
            blob = f"{authzid}\0{authcid}\0{password}".encode()
            with pytest.raises(imaplib.IMAP4.error):
                client.authenticate("PLAIN", lambda _: blob)
        assert client.state == "NONAUTH"

    async with make_backend() as backend:
        await asyncio.to_thread(with_client, backend, attempt)


@pytest.mark.asyncio
async def test_stop_ends_open_connections_without_stray_tasks() -> None:
    async with make_backend() as backend:
        reader, writer = await asyncio.open_connection(backend.host, backend.port)
        assert (await reader.readline()).startswith(b"* OK")
        writer.write(b"a LOGIN alice alicepw\r\nb SELECT INBOX\r\nc IDLE\r\n")
        await writer.drain()
        while not (await reader.readline()).startswith(b"+"):
            pass
    # The backend said goodbye and closed the socket on the way out.
    rest = await asyncio.wait_for(reader.read(), 5)
    assert b"* BYE" in rest
    writer.close()
    await writer.wait_closed()
    assert_no_stray_tasks()


@pytest.mark.asyncio
async def test_cannot_start_twice_and_stop_is_idempotent() -> None:
    backend = make_backend()
    async with backend:
        pass
    await backend.aclose()
    with pytest.raises(RuntimeError):
        await backend.__aenter__()


def test_account_names_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="alice"):
        demo_backend(port=0, users=[ALICE, DemoAccount("alice", "x")], master=MASTER)
    with pytest.raises(ValueError, match="demouser"):
        demo_backend(port=0, users=[DemoAccount("demouser", "x")], master=MASTER)
    backend = demo_backend(
        port=0, users=[DemoAccount("demouser", "x")], master=MASTER, demo_user=None
    )
    assert "x" not in repr(backend)


def test_runs_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[int, int]:
        async with make_backend() as backend:
            alice = await asyncio.to_thread(with_client, backend, login_and_count(ALICE))
            demo = await asyncio.to_thread(with_client, backend, login_and_count(DEFAULT_DEMO_USER))
        assert_no_stray_tasks()
        return alice, demo

    assert uvloop.run(scenario()) == (SEEDED_INBOX_MESSAGES, PYMAP_DEMO_INBOX_MESSAGES)
