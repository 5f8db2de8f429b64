"""Log in to the upstream IMAP server as the user, then hand over the connection.

Steps, each bounded by `login_timeout`: connect (implicit TLS, STARTTLS or plain
on loopback), read the greeting (PREAUTH or BYE is refused), STARTTLS when
configured (any byte after the server's OK and before the handshake is a
response-injection attempt: fail closed), forward the client's address with
IMAP ID `x-originating-ip` (Dovecot honours it from `login_trusted_networks`,
so its own per-IP limits and logs see the real client), then SASL PLAIN:
`master` mode sends authzid=user, authcid=master user; a password login sends
the user's own password. The tagged OK's capabilities (or a CAPABILITY command)
give what the client is told.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from dataclasses import dataclass

from imapguard.auth.model import ClientAddress
from imapguard.errors import UpstreamRefused, UpstreamUnavailable
from imapguard.gateway.link import Link
from imapguard.secret import Secret

__all__ = [
    "ClientAddress",
    "UpstreamLogin",
    "UpstreamSession",
    "UpstreamSettings",
    "open_session",
]

# Upstream responses during login are short; a literal there is an ID value.
# The limit holds for a whole response (its lines and literals), however its
# bytes arrive.
MAX_RESPONSE_LINE = 64 * 1024
# The untagged responses kept while waiting for a tagged one (a CAPABILITY list,
# an ID): a server that sends them without end must not make us keep them all.
MAX_UNTAGGED_BYTES = 64 * 1024
_LITERAL_END = re.compile(rb"\{([0-9]{1,6})\}\r?\n\Z")
_CAPABILITY_CODE = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)


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


class _Reader:
    def __init__(self, link: Link) -> None:
        self.link = link
        self.buf = bytearray()

    async def line(self) -> bytes:
        """One response, literals included, without the final CRLF."""
        out = bytearray()
        while True:
            nl = self.buf.find(b"\n")
            while nl < 0:
                if len(out) + len(self.buf) > MAX_RESPONSE_LINE:
                    raise UpstreamUnavailable("upstream", "response line too long")
                data = await self.link.read()
                if not data:
                    raise EOFError
                self.buf += data
                nl = self.buf.find(b"\n")
            # Checked on the line as a whole too: one read may bring all of it.
            if len(out) + nl > MAX_RESPONSE_LINE:
                raise UpstreamUnavailable("upstream", "response line too long")
            chunk = bytes(self.buf[: nl + 1])
            del self.buf[: nl + 1]
            out += chunk
            literal = _LITERAL_END.search(chunk)
            if literal is None:
                return bytes(out).rstrip(b"\r\n")
            size = int(literal.group(1))
            if size > MAX_RESPONSE_LINE:
                raise UpstreamUnavailable("upstream", "response literal too large")
            if len(out) + size > MAX_RESPONSE_LINE:
                raise UpstreamUnavailable("upstream", "response too long")
            while len(self.buf) < size:
                data = await self.link.read()
                if not data:
                    raise EOFError
                self.buf += data
            out += self.buf[:size]
            del self.buf[:size]

    async def tagged(self, tag: bytes) -> tuple[bytes, list[bytes]]:
        """Read up to the tagged response; returns it and the untagged ones before."""
        untagged: list[bytes] = []
        kept = 0
        while True:
            line = await self.line()
            if line.startswith(tag + b" "):
                return line[len(tag) + 1 :], untagged
            kept += len(line)
            if kept > MAX_UNTAGGED_BYTES:
                raise UpstreamUnavailable("upstream", "too many untagged responses")
            untagged.append(line)

    def leftover(self) -> bytes:
        data = bytes(self.buf) + self.link.take_buffer()
        self.buf.clear()
        return data


def _quote(value: str) -> bytes:
    return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def _capabilities(text: bytes) -> list[str] | None:
    match = _CAPABILITY_CODE.search(text)
    return match.group(1).decode("ascii", "replace").split() if match else None


async def _login(
    settings: UpstreamSettings,
    link: Link,
    user: str,
    password: Secret | None,
    client: ClientAddress,
) -> UpstreamSession:
    reader = _Reader(link)
    greeting = await reader.line()
    if not greeting.upper().startswith(b"* OK"):
        kind = "PREAUTH" if greeting.upper().startswith(b"* PREAUTH") else "refusal"
        raise UpstreamUnavailable(settings.address, f"unexpected greeting ({kind})")
    caps = _capabilities(greeting) or []

    if settings.tls == "starttls":
        link.write(b"g0 STARTTLS\r\n")
        status, _ = await reader.tagged(b"g0")
        if not status.upper().startswith(b"OK"):
            raise UpstreamUnavailable(settings.address, "STARTTLS refused")
        if reader.leftover():
            raise UpstreamUnavailable(settings.address, "data injected after STARTTLS response")
        loop = asyncio.get_running_loop()
        if link.transport is None or settings.ssl_context is None:
            raise UpstreamUnavailable(settings.address, "no TLS context for STARTTLS")
        transport = await loop.start_tls(
            link.transport, link, settings.ssl_context, server_hostname=settings.server_name
        )
        if transport is None:
            raise EOFError
        link.transport = transport
        caps = []  # capabilities sent before TLS are not to be trusted

    out = bytearray()
    if settings.forward_client_ip == "id":
        fields = (
            ("x-originating-ip", client.ip),
            ("x-originating-port", str(client.port)),
            ("x-connected-ip", client.local_ip),
            ("x-connected-port", str(client.local_port)),
            ("x-session-ext-id", client.session),
        )
        out += b"g1 ID (" + b" ".join(_quote(k) + b" " + _quote(v) for k, v in fields) + b")\r\n"
    if password is None:
        if settings.master_user is None or settings.master_password is None:
            raise UpstreamUnavailable(settings.address, "no master user configured")
        plain = user.encode() + b"\0" + settings.master_user.encode() + b"\0"
        plain += settings.master_password.reveal()
    else:
        plain = b"\0" + user.encode() + b"\0" + password.reveal()
    response = base64.b64encode(plain)
    sasl_ir = "SASL-IR" in (c.upper() for c in caps)
    if sasl_ir:
        out += b"g2 AUTHENTICATE PLAIN " + response + b"\r\n"
        link.write(bytes(out))
    else:
        out += b"g2 AUTHENTICATE PLAIN\r\n"
        link.write(bytes(out))
        if settings.forward_client_ip == "id":
            await reader.tagged(b"g1")
        challenge = await reader.line()
        if not challenge.startswith(b"+"):
            raise UpstreamUnavailable(settings.address, "no SASL continuation")
        link.write(response + b"\r\n")
    if sasl_ir and settings.forward_client_ip == "id":
        await reader.tagged(b"g1")
    status, untagged = await reader.tagged(b"g2")
    upper = status.upper()
    if not upper.startswith(b"OK"):
        detail = status.decode("ascii", "replace")[:200]
        if b"[UNAVAILABLE]" in upper or b"[SERVERBUG]" in upper:
            raise UpstreamUnavailable(settings.address, f"login: {detail}")
        raise UpstreamRefused(settings.address, f"login: {detail}")

    capabilities = _capabilities(status)
    if capabilities is None:
        for line in untagged:
            if line.upper().startswith(b"* CAPABILITY "):
                capabilities = line[13:].decode("ascii", "replace").split()
    if capabilities is None:
        link.write(b"g3 CAPABILITY\r\n")
        _, untagged = await reader.tagged(b"g3")
        capabilities = []
        for line in untagged:
            if line.upper().startswith(b"* CAPABILITY "):
                capabilities = line[13:].decode("ascii", "replace").split()
    return UpstreamSession(link, capabilities, reader.leftover())
