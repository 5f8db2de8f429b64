"""The embedded IMAP server behind ``imapguard demo``.

This runs pymap's in-memory ``dict`` backend inside the *caller's* asyncio
event loop (plain asyncio or uvloop), listening on plain TCP on loopback. The
imapguard gateway in front of it terminates TLS, so the backend never offers
TLS itself.

Accounts:

* the pymap demo user (``demouser`` by default), whose mailboxes are pymap's
  bundled ``--demo-data`` set: INBOX (4 messages), Sent and Trash;
* each account in ``users``: INBOX seeded with :data:`SEEDED_INBOX_MESSAGES`
  messages, plus empty Sent and Trash;
* a master account with pymap's ``admin`` role: SASL PLAIN with
  authzid = some user, authcid = master logs in *as that user*.

pymap is only imported when the backend is built, so importing this module
stays cheap.

Deliberate differences from ``pymap`` run as a program: no argument parsing,
no signal handlers, no logging configuration, no thread pool (passwords are
kept in clear text in memory, which is all an in-memory demo store can do
anyway), no global context variables set, and the greeting never calls
:func:`socket.getfqdn`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from types import TracebackType
from typing import Any, Final, Self

__all__ = [
    "DEFAULT_DEMO_USER",
    "PYMAP_DEMO_INBOX_MESSAGES",
    "SEEDED_INBOX_MESSAGES",
    "DemoAccount",
    "DemoBackend",
    "demo_backend",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoAccount:
    """A login name and its password."""

    name: str
    password: str = field(repr=False)


#: pymap's own demo user (``pymap dict --demo-data``), with its default password.
DEFAULT_DEMO_USER: Final = DemoAccount("demouser", "demopass")

#: Messages in the pymap demo user's INBOX (pymap's bundled demo data).
PYMAP_DEMO_INBOX_MESSAGES: Final = 4

#: Messages seeded into the INBOX of every account in ``users``.
SEEDED_INBOX_MESSAGES: Final = 3

#: Seconds a connection gets to say BYE when the backend stops.
_STOP_GRACE: Final = 2.0

_ADMIN_ROLES: Final = frozenset({"admin"})


def demo_backend(
    *,
    host: str = "127.0.0.1",
    port: int,
    users: Sequence[DemoAccount],
    master: DemoAccount,
    demo_user: DemoAccount | None = DEFAULT_DEMO_USER,
) -> DemoBackend:
    """Describe an embedded IMAP backend; ``async with`` it to run it.

    ``port=0`` picks a free port; the real one is on ``.port`` once entered.
    ``demo_user`` is the account given pymap's demo mailboxes (``None``: no
    such account). Account names must be distinct across ``users``,
    ``master`` and ``demo_user``.
    """
    accounts = [*users, master, *([demo_user] if demo_user is not None else [])]
    names = [a.name for a in accounts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate demo account name(s): {', '.join(duplicates)}")
    if not all(names):
        raise ValueError("demo account names must not be empty")
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return DemoBackend(host=host, port=port, users=tuple(users), master=master, demo_user=demo_user)


class DemoBackend:
    """A running (once entered) pymap ``dict`` backend on plain TCP."""

    host: str
    port: int

    def __init__(
        self,
        *,
        host: str,
        port: int,
        users: Sequence[DemoAccount],
        master: DemoAccount,
        demo_user: DemoAccount | None,
    ) -> None:
        self.host = host
        self.port = port
        self._users: Final = tuple(users)
        self._master: Final = master
        self._demo_user: Final = demo_user
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._used = False

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return f"<DemoBackend {self.host}:{self.port} {state}>"

    async def __aenter__(self) -> Self:
        if self._used:
            raise RuntimeError("a DemoBackend can only be started once")
        self._used = True
        imap_server = await self._build()
        sock_info_get, local_result = _socket_info_factory()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is None:  # pragma: no cover - always inside a task
                writer.close()
                return
            self._connections[task] = writer
            try:
                sock_info = sock_info_get(writer, local_result, unique_id=uuid.uuid4().bytes)
                await imap_server(reader, writer, sock_info)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("demo IMAP backend: connection failed")
                writer.close()
            finally:
                self._connections.pop(task, None)

        self._server = await asyncio.start_server(on_connect, self.host, self.port)
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and end every open connection (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await asyncio.sleep(0)  # let connections accepted just before close() register
        while self._connections:
            conns = dict(self._connections)
            for task in conns:
                task.cancel()  # pymap answers "* BYE" and closes the connection
            _, pending = await asyncio.wait(conns, timeout=_STOP_GRACE)
            for task in pending:  # a peer that does not read: drop it hard
                conns[task].transport.abort()
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        # Let tasks pymap spawned itself (IDLE helpers) see their end.
        for _ in range(3):
            await asyncio.sleep(0)
        await server.wait_closed()

    async def _build(self) -> Any:
        """Build pymap's backend and users; return its connection callback."""
        from proxyprotocol.version import ProxyProtocolVersion
        from pymap.backend.dict import Config, Identity, Login
        from pymap.concurrent import Subsystem
        from pymap.imap import IMAPServer
        from pymap.parsing.message import AppendMessage
        from pymap.parsing.specials.flag import Seen
        from pymap.user import Passwords, UserMetadata
        from pysasl.hashing import Cleartext

        greeting = b"Server ready localhost"

        class _DemoConfig(Config):  # type: ignore[misc, unused-ignore]
            @property
            def greeting(self) -> bytes:  # pymap's default calls socket.getfqdn()
                return greeting

        demo = self._demo_user
        args = Namespace(
            debug=False,
            host=self.host,
            port=self.port,
            tls=False,
            cert=None,
            key=None,
            inherited_sockets=None,
            proxy_protocol=None,
            passlib_cfg=None,
            skip_services=[],
        )
        config = _DemoConfig(
            args,
            host=self.host,
            port=self.port,
            demo_data=demo is not None,
            demo_user=demo.name if demo is not None else "",
            demo_password=demo.password if demo is not None else "",
            tls_enabled=False,
            # an unused context: keeps pymap off the CERT_FILE/KEY_FILE env vars
            ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
            subsystem=Subsystem.for_asyncio(),
            cpu_subsystem=Subsystem.for_asyncio(),
            hash_context=Cleartext(),
            proxy_protocol=ProxyProtocolVersion.NOOP.value,
        )
        login = Login(config)
        passwords = Passwords(config)

        async def add_user(account: DemoAccount, roles: frozenset[str]) -> Any:
            identity = Identity(account.name, login, None, _ADMIN_ROLES)
            hashed = await passwords.hash_password(account.password)
            await identity.set(UserMetadata(config, account.name, password=hashed, roles=roles))
            return identity

        await add_user(self._master, _ADMIN_ROLES)
        if demo is not None:
            identity = await add_user(demo, frozenset())
            async with identity.new_session():  # loads pymap's demo data now
                pass
        for account in self._users:
            identity = await add_user(account, frozenset())
            async with identity.new_session() as session:
                mailbox_set = session.mailbox_set
                inbox = await mailbox_set.get_mailbox("INBOX")
                for i, (literal, when) in enumerate(_seed_messages(account.name)):
                    flags = frozenset({Seen}) if i == 0 else frozenset()
                    await inbox.append(AppendMessage(literal, when, flags), recent=i > 0)
                for name in ("Sent", "Trash"):
                    await mailbox_set.add_mailbox(name)
        return IMAPServer(login, config)


def _socket_info_factory() -> tuple[Any, Any]:
    from proxyprotocol.result import ProxyResultLocal
    from proxyprotocol.sock import SocketInfo

    return SocketInfo.get, ProxyResultLocal()


def _seed_messages(user: str) -> list[tuple[bytes, datetime]]:
    """A few plausible messages for ``user``'s INBOX, oldest first."""
    domain = "imapguard.test"
    base = datetime(2024, 5, 6, 9, 30, tzinfo=UTC)
    specs = [
        (
            f"IT Desk <it@{domain}>",
            "Welcome to the imapguard demo",
            f"Hello {user},\n\nyour mailbox sits behind the imapguard gateway.\n"
            "Every login now needs your password and a second factor.\n",
        ),
        (
            f"Carol <carol@{domain}>",
            "Lunch on Thursday?",
            "The usual place at 12:30? Let me know.\n",
        ),
        (
            f"Security <security@{domain}>",
            "New sign-in to your account",
            "A new sign-in was recorded by the gateway audit log.\n"
            "If this was not you, please contact the IT desk.\n",
        ),
    ]
    out: list[tuple[bytes, datetime]] = []
    for i, (sender, subject, body) in enumerate(specs):
        when = base + timedelta(days=i, hours=i)
        msg = EmailMessage(policy=SMTP)
        msg["From"] = sender
        msg["To"] = f"{user} <{user}@{domain}>"
        msg["Subject"] = subject
        msg["Date"] = format_datetime(when)
        msg["Message-ID"] = make_msgid(idstring=f"{user}-{i}", domain=domain)
        msg.set_content(body)
        out.append((msg.as_bytes(), when))
    return out
