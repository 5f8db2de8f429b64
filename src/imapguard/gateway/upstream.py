"""Log in to the upstream IMAP server as the user, then hand over the connection.

The I/O of the login: connect (implicit TLS, STARTTLS or plain on loopback),
then drive the dialogue of `imapguard.imap.login` (greeting, STARTTLS, IMAP ID
`x-originating-ip` so that Dovecot's own per-IP limits and logs see the real
client, SASL PLAIN, capabilities), all within `login_timeout`. `master` mode
sends authzid=user, authcid=master user; a password login sends the user's own
password. `UpstreamLogin` is this server as the auth service's `Upstream`.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from imapguard.auth.model import ClientAddress
from imapguard.errors import UpstreamRefused, UpstreamUnavailable
from imapguard.gateway.link import Link
from imapguard.imap.login import (
    MAX_RESPONSE,
    MAX_UNTAGGED,
    LoggedIn,
    LoginDialogue,
    LoginSettings,
    NeedResponse,
    Send,
    StartTls,
    plain_response,
)
from imapguard.secret import Secret

__all__ = [
    "ClientAddress",
    "UpstreamLogin",
    "UpstreamSession",
    "UpstreamSettings",
    "open_session",
]

# The bounds of the login dialogue (imapguard.imap.login): a whole response, and
# the untagged responses kept while waiting for a tagged one.
MAX_RESPONSE_LINE = MAX_RESPONSE
MAX_UNTAGGED_BYTES = MAX_UNTAGGED


@dataclass(frozen=True)
class UpstreamSettings:
    host: str
    port: int
    tls: str  # implicit | starttls | none
    ssl_context: ssl.SSLContext | None
    server_name: str
    master_user: str | None
    master_password: Secret | None
    forward_client_ip: str  # id | none
    connect_timeout: float
    login_timeout: float

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class UpstreamSession:
    """A logged-in upstream connection, ready to relay (auth.model.Session)."""

    link: Link
    capabilities: list[str]
    # Bytes the upstream sent after its tagged OK: the client gets them first.
    leftover: bytes

    async def discard(self) -> None:
        """Log out: the login failed after the password check, or the policy said no."""
        self.link.write(b"z LOGOUT\r\n")
        self.link.close()


class UpstreamLogin:
    """The IMAP server behind the gateway, as the auth service's `Upstream`."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings

    @property
    def logs_in_for_users(self) -> bool:
        return self.settings.master_user is not None

    async def login(
        self, user: str, password: Secret | None, client: ClientAddress
    ) -> UpstreamSession:
        return await open_session(self.settings, user, password, client)


async def open_session(
    settings: UpstreamSettings, user: str, password: Secret | None, client: ClientAddress
) -> UpstreamSession:
    """Log in as `user`: with `password` (the user's own) or, when None, as the master user.

    Raises UpstreamUnavailable (cannot reach or trust it) or UpstreamRefused (NO)."""
    link: Link | None = None
    try:
        async with asyncio.timeout(settings.login_timeout):
            link = await _connect(settings)
            return await _login(settings, link, user, password, client)
    except BaseException as exc:
        if link is not None:
            link.abort()
        if isinstance(exc, UpstreamUnavailable | UpstreamRefused):
            raise
        if isinstance(exc, TimeoutError):
            raise UpstreamUnavailable(settings.address, "timed out") from None
        if isinstance(exc, OSError | ssl.SSLError | EOFError):
            raise UpstreamUnavailable(settings.address, _describe(exc)) from None
        raise


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, EOFError):
        return "connection closed during login"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def _connect(settings: UpstreamSettings) -> Link:
    loop = asyncio.get_running_loop()
    implicit = settings.tls == "implicit"
    async with asyncio.timeout(settings.connect_timeout):
        _, link = await loop.create_connection(
            Link,
            settings.host,
            settings.port,
            ssl=settings.ssl_context if implicit else None,
            server_hostname=settings.server_name if implicit else None,
        )
    return link


async def _login(
    settings: UpstreamSettings,
    link: Link,
    user: str,
    password: Secret | None,
    client: ClientAddress,
) -> UpstreamSession:
    """Drive the login dialogue (imapguard.imap.login) over `link`."""
    if password is None:
        if settings.master_user is None or settings.master_password is None:
            raise UpstreamUnavailable(settings.address, "no master user configured")
        plain = plain_response(user, settings.master_user, settings.master_password)
    else:
        plain = plain_response("", user, password)
    id_fields = None
    if settings.forward_client_ip == "id":
        id_fields = (
            ("x-originating-ip", client.ip),
            ("x-originating-port", str(client.port)),
            ("x-connected-ip", client.local_ip),
            ("x-connected-port", str(client.local_port)),
            ("x-session-ext-id", client.session),
        )
    machine = LoginDialogue(
        plain,
        LoginSettings(
            starttls=settings.tls == "starttls",
            id_fields=id_fields,
            max_response=MAX_RESPONSE_LINE,
            max_untagged=MAX_UNTAGGED_BYTES,
        ),
    )
    while True:
        action = machine.next_action()
        if isinstance(action, NeedResponse):
            machine.receive_data(await link.read())
        elif isinstance(action, Send):
            link.write(action.data)
        elif isinstance(action, StartTls):
            await _start_tls(settings, link)
            machine.tls_established()
        elif isinstance(action, LoggedIn):
            return UpstreamSession(link, action.capabilities, action.leftover + link.take_buffer())
        elif action.refused:
            raise UpstreamRefused(settings.address, action.detail)
        else:
            raise UpstreamUnavailable(settings.address, action.detail)


async def _start_tls(settings: UpstreamSettings, link: Link) -> None:
    """TLS on the upstream connection, after its STARTTLS OK. A byte already
    received is one the server could not have sent yet: an injection."""
    if link.take_buffer():
        raise UpstreamUnavailable(settings.address, "data injected after STARTTLS response")
    if link.transport is None or settings.ssl_context is None:
        raise UpstreamUnavailable(settings.address, "no TLS context for STARTTLS")
    transport = await asyncio.get_running_loop().start_tls(
        link.transport, link, settings.ssl_context, server_hostname=settings.server_name
    )
    if transport is None:
        raise EOFError
    link.tls_protocol = link.transport.get_protocol()  # the SSL protocol now
    link.transport = transport
