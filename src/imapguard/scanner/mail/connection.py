"""One TCP connection to a mail service, and why a step on it failed.

`Conn` reads with timeouts into a sans-IO `dialogs` parser (complete responses
only; one deadline for an answer made of many responses), writes commands, and
upgrades to TLS. `open_connection` takes the address's slot in `net.Network`
first. The exceptions say how a dialog ended early; `failure_reason` and
`how_to_rerun` turn them into the words of a not-tested finding, and `PASSING`
names those worth a second run.

TLS here is only a means to reach the other side (`tls_context`): no
certificate verification and every protocol version OpenSSL still has.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import typing
import warnings
from collections.abc import AsyncIterator
from typing import TypeVar

from imapguard.scanner import dialogs as d
from imapguard.scanner.net import Network, Throttled

_READ_SIZE = 65536

_T = TypeVar("_T")


_T_co = TypeVar("_T_co", covariant=True)


class Source(typing.Protocol[_T_co]):
    """What the shell needs of a `dialogs` parser."""

    def feed(self, data: bytes) -> None: ...

    def next(self) -> _T_co | None: ...

    @property
    def buffered(self) -> int: ...


class Closed(Exception):
    """The server closed the connection (or said BYE) before answering."""


class Refused(Exception):
    """The server turned the connection away: 421, `* BYE` or `-ERR` greeting."""

    def __init__(self, reason: str, *, throttling: bool = True) -> None:
        self.reason = reason
        self.throttling = throttling
        super().__init__(reason)


class Unexpected(Exception):
    """A reply the dialog cannot go on from (EHLO refused, no CAPABILITY ...)."""


class Temporary(Exception):
    """The server said its failure is temporary (IMAP NO [UNAVAILABLE], SMTP 4xx)."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        super().__init__(answer)


class ConnectTimeout(TimeoutError):
    """The TCP connection was not accepted within the timeout (a filtered port)."""


class AuthDelayed(TimeoutError):
    """No answer to the dummy credential within `seconds` (see `limits.AUTH_WAIT`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(seconds)


def tls_context() -> ssl.SSLContext:
    """TLS to reach the other side, not to judge it: no verification (the TLS audit
    judges the certificate) and every protocol version and suite OpenSSL still has,
    so a server stuck on TLS 1.0 still gets its mail checks."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # Python 3.10+ starts clients at TLS 1.2 and warns on TLSv1 as deprecated; the
    # warning is for people choosing a policy, and this context chooses none.
    with warnings.catch_warnings(), contextlib.suppress(ValueError, ssl.SSLError):
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    with contextlib.suppress(ssl.SSLError):
        context.set_ciphers("ALL:@SECLEVEL=0")
    return context


def failure_reason(exc: BaseException) -> str:
    """A short, human reason for a check that could not run."""
    match exc:
        case Throttled():
            return f"throttled: {exc.reason}"
        case Temporary():
            return f"the server reported a temporary failure: {exc.answer}"
        case AuthDelayed():
            return f"the server did not answer the dummy credential within {exc.seconds:g} s"
        case Refused():
            return f"server turned the connection away: {exc.reason}"
        case TimeoutError():
            return "timed out waiting for the server"
        case Closed():
            return str(exc) or "the server closed the connection"
        case ssl.SSLError():
            return f"TLS failed: {exc.reason or exc}"
        case ConnectionRefusedError():
            return "connection refused"
        case ConnectionResetError():
            return "connection reset by the server"
        case d.DialogError():
            return f"unexpected response ({exc})"
        case Unexpected():
            return str(exc)
        case _:
            return f"{type(exc).__name__}: {exc}"


NETWORK_ERRORS = (
    OSError,
    TimeoutError,
    EOFError,
    d.DialogError,
    Closed,
    Unexpected,
    Temporary,
)

#: Failures that may pass: the step is run again (`limits.ATTEMPTS`). A refusal, a reply the
#: dialog cannot go on from, or a TLS error says the same the next time.
PASSING = (TimeoutError, ConnectionError, Closed, Temporary)


def how_to_rerun(exc: BaseException) -> str:
    """How to get the check run after `exc` failed it every time."""
    if isinstance(exc, AuthDelayed):
        return (
            "the server delays logins from this address after failed ones (Dovecot's auth"
            " penalty reaches 15 s and lasts until 15 s pass without a failure): rerun in a"
            " minute, or from another address"
        )
    if isinstance(exc, TimeoutError):
        return "rerun with a longer --timeout, or when the server is less busy"
    if isinstance(exc, Temporary):
        return (
            "rerun in a few minutes; the server's log says what failed (often its password backend)"
        )
    return "rerun when the server is reachable again"


class Conn:
    """One TCP connection: timed reads into a sans-IO parser, writes, STARTTLS."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    async def send(self, command: d.Command) -> None:
        self.writer.write(command.wire)
        await asyncio.wait_for(self.writer.drain(), self.timeout)

    async def _read(self, seconds: float) -> bytes:
        return await asyncio.wait_for(self.reader.read(_READ_SIZE), max(seconds, 0.001))

    async def receive(self, parser: Source[_T], wait: float | None = None) -> _T:
        """The next complete response; TimeoutError, or Closed at EOF."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if wait is None else wait)
        while (item := parser.next()) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            data = await self._read(remaining)
            if not data:
                raise Closed("the server closed the connection")
            parser.feed(data)
        return item

    def deadline(self, wait: float | None = None) -> float:
        """The loop time by which a whole answer must be in: an answer made of many
        responses (IMAP's untagged ones, ManageSieve's lines) gets one timeout for
        all of them, so a server dripping them slowly cannot hold the scan for
        `limits.MAX_RESPONSES` timeouts. `wait`: a longer time for this answer only."""
        return asyncio.get_running_loop().time() + max(self.timeout, wait or 0.0)

    async def receive_by(self, parser: Source[_T], deadline: float) -> _T:
        """The next complete response, by `deadline` (see `deadline()`)."""
        return await self.receive(parser, deadline - asyncio.get_running_loop().time())

    async def quiet(self, parser: Source[_T], seconds: float) -> tuple[_T | None, bytes]:
        """What arrives within `seconds`: the first complete response (or None)
        and every byte read meanwhile (garbage and half responses included)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        raw = bytearray()
        while (item := parser.next()) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                data = await self._read(remaining)
            except TimeoutError:
                break
            if not data:
                break
            raw += data
            try:
                parser.feed(data)
            except d.DialogError:
                break
        return item, bytes(raw)

    async def starttls(self, server_name: str | None) -> None:
        await asyncio.wait_for(
            self.writer.start_tls(
                tls_context(), server_hostname=server_name, ssl_handshake_timeout=self.timeout
            ),
            self.timeout + 1.0,
        )

    async def try_starttls(self, server_name: str | None) -> str | None:
        """The handshake; None when it worked, else why it failed (the connection is
        then unusable: closing it is all that is left)."""
        try:
            await self.starttls(server_name)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            return failure_reason(exc)
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 1.0)
            except (TimeoutError, OSError):
                self.writer.transport.abort()


@contextlib.asynccontextmanager
async def open_connection(net: Network, address: str, port: int) -> AsyncIterator[Conn]:
    """A fresh connection inside the address's slot, closed on the way out."""
    async with net.slot(address):
        try:
            reader, writer = await net.connect(address, port)
        except TimeoutError as exc:
            raise ConnectTimeout from exc
        conn = Conn(reader, writer, net.settings.timeout)
        try:
            yield conn
        finally:
            await conn.close()


def sni_name(server_name: str | None, address: str) -> str | None:
    """The name for SNI: the user's name for the host, never an address, and none
    the ssl module refuses (a label over 63 characters, a name over 255, a NUL:
    ValueError, TypeError or SSLError before any byte is sent, which would crash
    the scan or make every TLS port look dead). The mail checks do not judge the
    certificate, so they go without SNI then."""
    name = server_name or address
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        return None
    try:
        tls_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=name)
    except (ValueError, TypeError, ssl.SSLError):
        return None
    return name
