"""The mail checks of `imapguard scan`: what an IMAP, POP3 or SMTP service says
before, during and after TLS (the EXP, ST, AUTH and BAN families of the catalog).

Theory of operation:
- `recognise()` learns the protocol from what answers, never from the port number:
  a cleartext greeting (`* OK`, `+OK`, `220`, ManageSieve's `"IMPLEMENTATION"`), or,
  when nothing arrives within `GREETING_WAIT` seconds (or the bytes are none of
  these), a TLS handshake and the greeting inside it (implicit TLS).
- `audit_mail()` runs the checks of one recognised service as a few steps, one
  connection each, one after the other (at most about six connections a service;
  `net.Network` bounds the rest): the main dialog (capabilities, STARTTLS,
  capabilities again), the dummy-credential probe, the two STARTTLS injection
  variants, and where they apply the NTLM probe and the SMTP envelope checks.
  Every connection goes through `Network.slot()` / `Network.connect()`.
- The I/O here only collects what the server said; the verdicts are pure functions
  (`classify_*`, `disclosed_version`, `internal_name` ...) tested by tables, and
  parsing is `dialogs.py`'s (complete responses only).
- Reads are bounded: `dialogs` limits every response's size, and a command's
  answer gets one timeout in all, however slowly its responses trickle in.
- A step cut short for a passing reason (a timeout, a reset, a close before the
  answer, a temporary authentication failure) runs again from a clean state,
  `ATTEMPTS` runs in all, `Network.settings.backoff` seconds apart, so one slow moment
  of the server or of this machine does not change the report. The answer to the
  dummy credential may take `AUTH_WAIT` seconds: servers delay logins after failed
  ones from the same address, and the previous scan's probe was one.
- A check that could not run (timeout, reset, a reply the dialog cannot go on from,
  throttling) ends as `not_tested` with the reason and how to rerun, never as a pass
  or a fail. A check that does not apply (no STARTTLS at all, so nothing to inject
  into) leaves nothing; one that depends on a STARTTLS that is broken (ST-02) is
  `not_tested`.
- TLS here is only a means to reach the other side: certificate verification is
  off and old protocol versions are allowed, because judging TLS is `tlsaudit`'s
  job and a service that only speaks TLS 1.0 must still get its mail checks.
- The probe credential is a user name that says what it is and a fresh random
  password that exists only in memory; evidence shows `***` in its place.

Decisions worth knowing:
- ST-06 (STARTTLS on an implicit-TLS port): IMAP must answer a tagged BAD
  (RFC 9051 §6.2.1); POP3 anything but -ERR and SMTP a 2xx count as accepted. ST-04
  ("STARTTLS still advertised after TLS") is checked on implicit-TLS ports too:
  RFC 3207 §4.2 and RFC 9051 §6.2.1 speak of any established TLS.
- ST-07 is tested twice, each on a fresh connection, with the injected command
  in the same write as STARTTLS: the cleartext variant waits `QUIET_WAIT` seconds
  after the STARTTLS reply, and any byte before our ClientHello convicts; the TLS
  variant completes the handshake and then sends a command of its own: IMAP
  convicts on a response tagged for the injected command, POP3 and SMTP on a
  second response (the injected command's) arriving besides the one we asked for.
  A handshake that fails after the injection passes (RFC 9051 §6.2.1 allows the
  server to read the extra bytes as the start of the handshake).
- AUTH-06 open relay: `MAIL FROM:<scanner address>` then `RCPT TO:` an address in
  the reserved `.invalid` domain (RFC 2606), then RSET. DATA is never sent, so
  nothing is ever queued, and an accepted recipient under `.invalid` could never
  be delivered anyway. 250/251 to that RCPT without AUTH is an open relay.
- AUTH-08 reports enumeration only when VRFY/EXPN tell a real mailbox
  (`postmaster`, which RFC 5321 §4.5.1 makes mandatory) from a random one: a
  positive answer for the first and 550/551/553 for the second. A `252` for both
  (aiosmtpd, Postfix with disable_vrfy_command) reveals nothing.
- Port 25 is the mail-exchanger port, where RFC 3207 §4 forbids requiring TLS: it
  gets every check except EXP-03 and the MAIL-before-TLS test (its exposure is
  EXP-04's, decided by the orchestrator). Every other SMTP port is treated as
  submission.
- EXP-01 also fails on ST-09: a PREAUTH greeting in cleartext is access without TLS.
- EXP-06 is reported for ManageSieve only; IMAP, POP3 or SMTP on an unusual port
  get the full audit of their protocol instead.
- ST-10 is an info finding on every cleartext service whose STARTTLS works (the
  lists before and after, and their difference), even when nothing changed.
- AUTH-04 keeps its high severity when PLAIN or LOGIN is offered before STARTTLS and
  is lowered to medium (said so in its evidence) when only challenge-response
  mechanisms are.
- BAN-03 reads the names in the SMTP greeting and the EHLO reply; HELP is not sent
  (its text is free-form, and a name there is the same name).
- AUTH-07 (NTLM) runs only where NTLM is advertised, inside TLS when it is offered
  there: a NEGOTIATE_MESSAGE naming nothing of ours, then `*` to cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import enum
import ipaddress
import re
import secrets
import ssl
import typing
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from imapguard.scanner import dialogs as d
from imapguard.scanner.catalog import CATALOG, finding, not_tested
from imapguard.scanner.model import Finding, Identified, Protocol, Severity, Status, TlsMode
from imapguard.scanner.net import Network, Throttled
from imapguard.scanner.software import identify
from imapguard.secret import Secret

__all__ = [
    "ATTEMPTS",
    "AUTH_WAIT",
    "GREETING_WAIT",
    "PROBE_USER",
    "QUIET_WAIT",
    "MailResult",
    "ProbeVerdict",
    "Recognised",
    "audit_mail",
    "capability_diff",
    "classify_imap_login",
    "classify_pop3_user",
    "classify_relay",
    "classify_smtp_auth",
    "classify_state_reset",
    "disclosed_version",
    "internal_name",
    "legacy_only",
    "recognise",
    "vrfy_enumerates",
]

#: Seconds a cleartext greeting gets before we try TLS instead. Mail servers greet
#: at once (Dovecot, Postfix and Exim within milliseconds; Postfix's postscreen
#: sends the first line of its greeting at once too); an implicit-TLS port says
#: nothing until our ClientHello.
GREETING_WAIT = 1.5
#: Seconds of silence that show an injected command was not answered. testssl.sh
#: sleeps 1 s before it reads, EAST's tester uses a 2 s socket timeout; a server
#: that answers a command does so in milliseconds.
QUIET_WAIT = 1.0
#: Responses read while waiting for the one that answers our command (a server
#: sending endless untagged data must not keep us reading).
MAX_RESPONSES = 200
#: Seconds the answer to the dummy credential (AUTH-05) may take, whatever --timeout
#: says: servers delay authentication on purpose after failures from an address, and
#: the probe's own failure is one. Dovecot's is the longest we know: its anvil penalty
#: reaches AUTH_PENALTY_MAX_SECS = 15 s (src/auth/auth-penalty.h) on top of
#: auth_failure_delay = 2 s, so a scan run again soon after the last one waits up to 17 s.
AUTH_WAIT = 20.0
#: Runs of one step in all when it fails for a passing reason (a timeout, a reset, a
#: close before the answer); the runs are `Network.settings.backoff` seconds apart.
ATTEMPTS = 2
#: The probe's user name: it says what it is in the server's log.
PROBE_USER = "imapguard-scan-probe"
#: The RCPT of the open-relay test: under .invalid (RFC 2606), never deliverable.
RELAY_PROBE_RCPT = "imapguard-relay-probe@example.invalid"
_READ_SIZE = 65536

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class _Source(typing.Protocol[_T_co]):
    """What the shell needs of a `dialogs` parser."""

    def feed(self, data: bytes) -> None: ...

    def next(self) -> _T_co | None: ...

    @property
    def buffered(self) -> int: ...


def _ids(text: str) -> tuple[str, ...]:
    """Words of a string: short lists of check IDs and keywords stay readable."""
    return tuple(text.split())


# -- results -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Recognised:
    """What answered on a port."""

    protocol: Protocol
    tls_mode: TlsMode
    banner: str  # the first greeting line, CRLF stripped (printable)
    throttled: str | None = None  # why the server turned us away (421, BYE, -ERR), or None


@dataclasses.dataclass(frozen=True, slots=True)
class MailResult:
    findings: tuple[Finding, ...]
    capabilities_before_tls: tuple[str, ...]
    capabilities_after_tls: tuple[str, ...]
    starttls_works: bool | None  # None: implicit TLS, or not tested
    banner: str
    software: Identified | None = None  # what answered, when it could be told


# -- pure verdicts -----------------------------------------------------------------


class ProbeVerdict(enum.StrEnum):
    """How a server treated the dummy credential sent before TLS (AUTH-05)."""

    REFUSED = "refused"  # refused before looking at it: the check passes
    EVALUATED = "evaluated"  # checked it (and said no): a real password would have leaked
    ACCEPTED = "accepted"  # let the dummy credential in
    UNCLEAR = "unclear"  # cannot tell (backend down, odd reply): not tested


#: Response codes that only come after the credential was looked at (RFC 5530).
_IMAP_EVALUATED_CODES = frozenset(
    {"AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "EXPIRED", "CONTACTADMIN"}
)
#: Response codes that say nothing about the credential.
_IMAP_UNCLEAR_CODES = frozenset({"UNAVAILABLE", "SERVERBUG", "LIMIT", "INUSE"})


def classify_imap_login(tagged: d.ImapResponse, *, logindisabled: bool) -> ProbeVerdict:
    """The tagged answer to `LOGIN <probe> <random>` sent in cleartext.

    `NO [PRIVACYREQUIRED]` and `BAD` refuse before evaluation; a `NO` is a refusal
    too when the server advertised LOGINDISABLED (RFC 9051 §7.2.2: "their validity
    will not be checked"), unless its code says it did check. Any other NO means
    the password was evaluated."""
    if tagged.status == "OK":
        return ProbeVerdict.ACCEPTED
    if tagged.status == "BAD":
        return ProbeVerdict.REFUSED
    if tagged.status != "NO":
        return ProbeVerdict.UNCLEAR
    if tagged.code == "PRIVACYREQUIRED":
        return ProbeVerdict.REFUSED
    if tagged.code in _IMAP_EVALUATED_CODES:
        return ProbeVerdict.EVALUATED
    if tagged.code in _IMAP_UNCLEAR_CODES:
        return ProbeVerdict.UNCLEAR
    return ProbeVerdict.REFUSED if logindisabled else ProbeVerdict.EVALUATED


def classify_smtp_auth(reply: d.SmtpReply) -> ProbeVerdict:
    """The final reply to `AUTH PLAIN <probe>` (or the AUTH LOGIN exchange).

    530 (STARTTLS first) and 538 (encryption required, RFC 4954 §6) refuse; so do
    500/501/502/503/504 (no AUTH, or not this mechanism, in cleartext) and 534
    (mechanism too weak). 535 (RFC 4954 §6: credentials invalid) means evaluated;
    235 means accepted; anything else (454 temporary failure ...) is unclear."""
    if reply.code == 235:
        return ProbeVerdict.ACCEPTED
    if reply.code == 535:
        return ProbeVerdict.EVALUATED
    if reply.code in (500, 501, 502, 503, 504, 530, 534, 538):
        return ProbeVerdict.REFUSED
    return ProbeVerdict.UNCLEAR


def classify_pop3_user(response: d.Pop3Response) -> ProbeVerdict:
    """The answer to `USER <probe>` in cleartext: +OK means the server takes user
    names (and next the password) without TLS; -ERR refuses."""
    if response.kind is d.Pop3Kind.OK:
        return ProbeVerdict.EVALUATED
    if response.kind is d.Pop3Kind.ERR:
        return ProbeVerdict.REFUSED
    return ProbeVerdict.UNCLEAR


def classify_state_reset(reply: d.SmtpReply) -> bool | None:
    """ST-08: the reply to MAIL sent right after STARTTLS, without a new EHLO.
    True: the pre-TLS state was kept (MAIL accepted); False: reset (503, "send
    EHLO first"); None: refused for some other reason, so we cannot tell."""
    if reply.positive:
        return True
    if reply.code == 503:
        return False
    return None


def classify_relay(mail: d.SmtpReply, rcpt: d.SmtpReply | None) -> bool:
    """AUTH-06: an unauthenticated MAIL and a RCPT to a foreign domain accepted."""
    return mail.positive and rcpt is not None and rcpt.code in (250, 251)


def vrfy_enumerates(known: d.SmtpReply, unknown: d.SmtpReply) -> bool:
    """AUTH-08: VRFY/EXPN tell an existing mailbox from a random one."""
    return known.code in (250, 251, 252) and unknown.code in (550, 551, 553)


def legacy_only(mechanisms: Iterable[str]) -> bool:
    """AUTH-09: a non-empty SASL list made of legacy mechanisms only."""
    names = {m.upper() for m in mechanisms}
    return bool(names) and names <= d.LEGACY_SASL


def capability_diff(
    before: Sequence[str], after: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(added after TLS, removed after TLS), each in its list's order."""
    upper_before = {c.upper() for c in before}
    upper_after = {c.upper() for c in after}
    added = tuple(c for c in after if c.upper() not in upper_before)
    removed = tuple(c for c in before if c.upper() not in upper_after)
    return added, removed


_VERSION = re.compile(r"v?[0-9]+(?:\.[0-9]+)+(?:[-+~_][0-9A-Za-z.+~_-]*)?", re.IGNORECASE)
_JOINED_VERSION = re.compile(
    r"([A-Za-z][A-Za-z]+)[-_](v?[0-9]+(?:\.[0-9]+)+(?:[-+~_][0-9A-Za-z.+~_-]*)?)", re.IGNORECASE
)
_IPV4_SHAPE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
#: Words before a dotted quad that make it an address, not a version.
_NOT_PRODUCTS = frozenset(_ids("at by for from host ip on to via esmtp smtp lmtp imap pop3 ready"))
_NOT_PRODUCTS |= frozenset(_ids("server service hello helo"))


def disclosed_version(text: str) -> str | None:
    """A "product version" pair in a greeting or an IMPLEMENTATION string
    ("Exim 4.96", "Cyrus v3.2.6-184", "Version 15.1.2507.23"), or None.

    Heuristics, tested by table: response codes and address literals in brackets
    are dropped; a dotted quad counts only after a product-like word (so "Dovecot
    2.3.19.1" is a version, "ready at 10.0.0.1" is not); host names never match
    because a version token must stand alone between separators."""
    text = re.sub(r"\[[^\]]*\]", " ", text)
    previous = ""
    for raw in re.split(r"[\s/;,()]+", text):
        word = raw.strip(".:!\"'<>")
        if not word:
            continue
        joined = _JOINED_VERSION.fullmatch(word)
        if joined is not None:  # "Qpopper-4.1.0", "Dovecot_2.3.19"
            return f"{joined.group(1)} {joined.group(2)}"
        if _VERSION.fullmatch(word):
            is_address = _IPV4_SHAPE.fullmatch(word) is not None and (
                not previous[:1].isalpha() or previous.lower() in _NOT_PRODUCTS
            )
            if not is_address:
                return f"{previous} {word}".strip() if previous[:1].isalpha() else word
        previous = word
    return None


#: Suffixes of names that only resolve inside an organisation (RFC 6762 .local,
#: RFC 8375 home.arpa, and the common private habits).
_INTERNAL_SUFFIXES = (
    ".local",
    ".localdomain",
    ".lan",
    ".internal",
    ".intranet",
    ".corp",
    ".home",
    ".home.arpa",
    ".private",
)


def internal_name(name: str) -> str | None:
    """Why `name` (an EHLO or greeting host name, or an address literal) looks
    internal, or None. Single-label names, internal suffixes and private or
    loopback addresses (RFC 1918, RFC 4193 ...) count."""
    host = name.strip().rstrip(".").lower()
    if not host:
        return None
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    literal = literal.removeprefix("ipv6:")
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        pass
    else:
        return "a private address" if address.is_private else None
    if "." not in host:
        return "a single-label name"
    for suffix in _INTERNAL_SUFFIXES:
        if host.endswith(suffix):
            return f"an internal domain ({suffix})"
    return None


# -- the connection shell ------------------------------------------------------------


class _Closed(Exception):
    """The server closed the connection (or said BYE) before answering."""


class _Refused(Exception):
    """The server turned the connection away: 421, `* BYE` or `-ERR` greeting."""

    def __init__(self, reason: str, *, throttling: bool = True) -> None:
        self.reason = reason
        self.throttling = throttling
        super().__init__(reason)


class _Unexpected(Exception):
    """A reply the dialog cannot go on from (EHLO refused, no CAPABILITY ...)."""


class _Temporary(Exception):
    """The server said its failure is temporary (IMAP NO [UNAVAILABLE], SMTP 4xx)."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        super().__init__(answer)


class _ConnectTimeout(TimeoutError):
    """The TCP connection was not accepted within the timeout (a filtered port)."""


class _AuthDelayed(TimeoutError):
    """No answer to the dummy credential within `seconds` (see `AUTH_WAIT`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(seconds)


def _tls_context() -> ssl.SSLContext:
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


def _reason(exc: BaseException) -> str:
    """A short, human reason for a check that could not run."""
    match exc:
        case Throttled():
            return f"throttled: {exc.reason}"
        case _Temporary():
            return f"the server reported a temporary failure: {exc.answer}"
        case _AuthDelayed():
            return f"the server did not answer the dummy credential within {exc.seconds:g} s"
        case _Refused():
            return f"server turned the connection away: {exc.reason}"
        case TimeoutError():
            return "timed out waiting for the server"
        case _Closed():
            return str(exc) or "the server closed the connection"
        case ssl.SSLError():
            return f"TLS failed: {exc.reason or exc}"
        case ConnectionRefusedError():
            return "connection refused"
        case ConnectionResetError():
            return "connection reset by the server"
        case d.DialogError():
            return f"unexpected response ({exc})"
        case _Unexpected():
            return str(exc)
        case _:
            return f"{type(exc).__name__}: {exc}"


_NETWORK_ERRORS = (
    OSError,
    TimeoutError,
    EOFError,
    d.DialogError,
    _Closed,
    _Unexpected,
    _Temporary,
)
#: Failures that may pass: the step is run again (`ATTEMPTS`). A refusal, a reply the
#: dialog cannot go on from, or a TLS error says the same the next time.
_PASSING = (TimeoutError, ConnectionError, _Closed, _Temporary)


def _rerun(exc: BaseException) -> str:
    """How to get the check run after `exc` failed it every time."""
    if isinstance(exc, _AuthDelayed):
        return (
            "the server delays logins from this address after failed ones (Dovecot's auth"
            " penalty reaches 15 s and lasts until 15 s pass without a failure): rerun in a"
            " minute, or from another address"
        )
    if isinstance(exc, TimeoutError):
        return "rerun with a longer --timeout, or when the server is less busy"
    if isinstance(exc, _Temporary):
        return (
            "rerun in a few minutes; the server's log says what failed (often its password backend)"
        )
    return "rerun when the server is reachable again"


class _Conn:
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

    async def receive(self, parser: _Source[_T], wait: float | None = None) -> _T:
        """The next complete response; TimeoutError, or _Closed at EOF."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if wait is None else wait)
        while (item := parser.next()) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            data = await self._read(remaining)
            if not data:
                raise _Closed("the server closed the connection")
            parser.feed(data)
        return item

    def deadline(self, wait: float | None = None) -> float:
        """The loop time by which a whole answer must be in: an answer made of many
        responses (IMAP's untagged ones, ManageSieve's lines) gets one timeout for
        all of them, so a server dripping them slowly cannot hold the scan for
        `MAX_RESPONSES` timeouts. `wait`: a longer time for this answer only."""
        return asyncio.get_running_loop().time() + max(self.timeout, wait or 0.0)

    async def receive_by(self, parser: _Source[_T], deadline: float) -> _T:
        """The next complete response, by `deadline` (see `deadline()`)."""
        return await self.receive(parser, deadline - asyncio.get_running_loop().time())

    async def quiet(self, parser: _Source[_T], seconds: float) -> tuple[_T | None, bytes]:
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
                _tls_context(), server_hostname=server_name, ssl_handshake_timeout=self.timeout
            ),
            self.timeout + 1.0,
        )

    async def try_starttls(self, server_name: str | None) -> str | None:
        """The handshake; None when it worked, else why it failed (the connection is
        then unusable: closing it is all that is left)."""
        try:
            await self.starttls(server_name)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            return _reason(exc)
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 1.0)
            except (TimeoutError, OSError):
                self.writer.transport.abort()


@contextlib.asynccontextmanager
async def _connection(net: Network, address: str, port: int) -> AsyncIterator[_Conn]:
    """A fresh connection inside the address's slot, closed on the way out."""
    async with net.slot(address):
        try:
            reader, writer = await net.connect(address, port)
        except TimeoutError as exc:
            raise _ConnectTimeout from exc
        conn = _Conn(reader, writer, net.settings.timeout)
        try:
            yield conn
        finally:
            await conn.close()


def _sni(server_name: str | None, address: str) -> str | None:
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
        _tls_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=name)
    except (ValueError, TypeError, ssl.SSLError):
        return None
    return name


# -- protocol sessions -------------------------------------------------------------


class _Imap:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.parser = d.ImapParser()
        self.tags = d.TagSequence("s")

    async def greeting(self) -> d.ImapResponse:
        greeting = await self.conn.receive(self.parser)
        if greeting.kind is not d.ImapKind.UNTAGGED or greeting.status not in (
            "OK",
            "PREAUTH",
            "BYE",
        ):
            raise _Unexpected(f"not an IMAP greeting: {greeting.shown()}")
        if greeting.status == "BYE":
            raise _Refused(greeting.shown())
        return greeting

    def command(self, text: str) -> tuple[str, d.Command]:
        tag = self.tags.next()
        return tag, d.imap_command(tag, text)

    async def run(self, text: str) -> tuple[d.Command, list[d.ImapResponse], d.ImapResponse]:
        tag, command = self.command(text)
        await self.conn.send(command)
        others, tagged = await self.until_tagged(tag)
        return command, others, tagged

    async def until_tagged(
        self, tag: str, wait: float | None = None
    ) -> tuple[list[d.ImapResponse], d.ImapResponse]:
        others: list[d.ImapResponse] = []
        deadline = self.conn.deadline(wait)
        for _ in range(MAX_RESPONSES):
            response = await self.conn.receive_by(self.parser, deadline)
            if response.kind is d.ImapKind.TAGGED and response.tag == tag:
                return others, response
            if response.kind is d.ImapKind.UNTAGGED and response.status == "BYE":
                raise _Closed(f"the server said {response.shown()}")
            others.append(response)
        raise _Unexpected(f"more than {MAX_RESPONSES} responses without the tagged one")

    def restart(self) -> None:
        """After the handshake: forget everything received in cleartext."""
        self.parser = d.ImapParser()

    async def bye(self) -> None:
        with contextlib.suppress(*_NETWORK_ERRORS):
            await self.conn.send(self.command("LOGOUT")[1])


class _Pop3:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.parser = d.Pop3Parser()

    async def greeting(self) -> d.Pop3Response:
        greeting = await self.conn.receive(self.parser)
        if greeting.kind is not d.Pop3Kind.OK:
            raise _Refused(greeting.shown())
        return greeting

    async def run(self, command: d.Command, *, multiline: bool = False) -> d.Pop3Response:
        self.parser.expect(multiline)
        await self.conn.send(command)
        return await self.conn.receive(self.parser)

    def restart(self) -> None:
        self.parser = d.Pop3Parser()

    async def bye(self) -> None:
        with contextlib.suppress(*_NETWORK_ERRORS):
            await self.conn.send(d.pop3_command("QUIT"))


class _Smtp:
    def __init__(self, conn: _Conn, ehlo_name: str, on_421: Callable[[str], None]) -> None:
        self.conn = conn
        self.parser = d.SmtpParser()
        self.ehlo_name = ehlo_name
        self._on_421 = on_421

    async def greeting(self) -> d.SmtpReply:
        greeting = await self.conn.receive(self.parser)
        if greeting.code != 220:
            if greeting.code == 421:
                self._on_421(greeting.shown())
            raise _Refused(greeting.shown(), throttling=greeting.code == 421)
        return greeting

    async def reply(self, wait: float | None = None) -> d.SmtpReply:
        """The next reply; `wait`: longer than the timeout for this one."""
        seconds = None if wait is None else max(self.conn.timeout, wait)
        reply = await self.conn.receive(self.parser, seconds)
        if reply.code == 421:
            self._on_421(reply.shown())
            raise _Refused(reply.shown())
        return reply

    async def run(self, command: d.Command, wait: float | None = None) -> d.SmtpReply:
        await self.conn.send(command)
        return await self.reply(wait)

    async def ehlo(self) -> tuple[d.Command, d.SmtpReply, d.EhloInfo]:
        command = d.smtp_command(f"EHLO {self.ehlo_name}")
        reply = await self.run(command)
        if reply.code != 250:
            raise _Unexpected(f"EHLO refused: {reply.shown()}")
        return command, reply, d.parse_ehlo(reply)

    async def mail_from(self) -> tuple[d.Command, d.SmtpReply]:
        """MAIL FROM the probe's address under our EHLO name."""
        command = d.smtp_command(f"MAIL FROM:<{PROBE_USER}@{self.ehlo_name}>")
        return command, await self.run(command)

    async def rset(self) -> None:
        await self.run(d.smtp_command("RSET"))

    def restart(self) -> None:
        self.parser = d.SmtpParser()

    async def bye(self) -> None:
        with contextlib.suppress(*_NETWORK_ERRORS):
            await self.conn.send(d.smtp_command("QUIT"))


def _c(command: d.Command) -> str:
    return f"C: {command.shown}"


#: A response of any of the three protocols.
_Response = d.ImapResponse | d.Pop3Response | d.SmtpReply


def _s(response: _Response) -> str:
    return f"S: {response.shown()}"


_R = TypeVar("_R", bound=_Response)


# -- the audit ---------------------------------------------------------------------


#: Checks that need a working STARTTLS, per protocol (cleartext ports).
_AFTER_STARTTLS = {
    Protocol.IMAP: _ids("ST-04 ST-07 ST-10 AUTH-09"),
    Protocol.POP3: _ids("ST-04 ST-07 ST-10 AUTH-09"),
    Protocol.SMTP: _ids("ST-04 ST-05 ST-07 ST-08 ST-10 AUTH-09"),
}
#: What decides each exposure finding (SCANNER-CHECKS.md, EXP-01..03).
_EXPOSURE = {
    Protocol.IMAP: ("EXP-01", _ids("ST-09 ST-01 AUTH-01 AUTH-02 AUTH-05")),
    Protocol.POP3: ("EXP-02", _ids("ST-01 AUTH-03 AUTH-05")),
    Protocol.SMTP: ("EXP-03", _ids("ST-01 AUTH-04 AUTH-05")),
}
#: Every check a service of each kind gets (the not_tested list when throttled).
_CLEARTEXT_CHECKS = {
    Protocol.IMAP: _ids(
        "EXP-01 EXP-07 ST-01 ST-02 ST-03 ST-04 ST-07 ST-09 ST-10 "
        "AUTH-01 AUTH-02 AUTH-05 AUTH-06 AUTH-09 BAN-01 BAN-02"
    ),
    Protocol.POP3: _ids(
        "EXP-02 EXP-07 ST-01 ST-02 ST-03 ST-04 ST-07 ST-10 "
        "AUTH-03 AUTH-05 AUTH-06 AUTH-09 BAN-01 BAN-02"
    ),
    Protocol.SMTP: _ids(
        "EXP-03 EXP-07 ST-01 ST-02 ST-03 ST-04 ST-05 ST-07 ST-08 ST-10 "
        "AUTH-04 AUTH-05 AUTH-06 AUTH-08 AUTH-09 BAN-01 BAN-03"
    ),
}
_IMPLICIT_CHECKS = {
    Protocol.IMAP: _ids("ST-04 ST-06 AUTH-06 AUTH-09 BAN-01 BAN-02"),
    Protocol.POP3: _ids("ST-04 ST-06 AUTH-06 AUTH-09 BAN-01 BAN-02"),
    Protocol.SMTP: _ids("ST-04 ST-06 AUTH-06 AUTH-08 AUTH-09 BAN-01 BAN-03"),
}


#: The `_Audit` attributes a step changes (restored before a step runs again).
_STEP_STATE = (
    "findings",
    "decided",
    "banner",
    "caps_before",
    "caps_after",
    "starttls_works",
    "starttls_state",
    "anonymous",
    "ntlm",
    "logindisabled",
    "extra_exposure",
    "imap_id",
)


class _Audit:
    """The findings of one service as they are decided, and the step runner."""

    def __init__(
        self,
        net: Network,
        address: str,
        port: int,
        rec: Recognised,
        server_name: str | None,
        ehlo_name: str,
    ) -> None:
        self.net = net
        self.address = address
        self.port = port
        self.rec = rec
        self.sni = _sni(server_name, address)
        self.ehlo_name = ehlo_name
        self.cleartext = rec.tls_mode is TlsMode.CLEARTEXT
        self.findings: dict[str, Finding] = {}
        self.decided: set[str] = set()
        self.throttled: str | None = rec.throttled
        self.banner = rec.banner
        self.caps_before: tuple[str, ...] = ()
        self.caps_after: tuple[str, ...] = ()
        self.starttls_works: bool | None = None
        self.starttls_state = "unknown"  # "works", "absent", "broken", "unknown"
        self.anonymous: list[str] = []  # evidence of AUTH=ANONYMOUS anywhere
        self.ntlm: tuple[str, ...] = ()  # where NTLM was advertised: "before", "after"
        self.logindisabled = False
        self.extra_exposure: list[str] = []  # EXP-03's MAIL-before-TLS evidence
        self.imap_id: dict[str, str | None] | None = None  # the ID fields, for `identify`

    # -- decisions -------------------------------------------------------------

    @property
    def failed(self) -> set[str]:
        return {i for i, f in self.findings.items() if f.status is Status.FAIL}

    @property
    def untested_ids(self) -> set[str]:
        return {i for i, f in self.findings.items() if f.status is Status.NOT_TESTED}

    def fail(
        self,
        check_id: str,
        evidence: Iterable[str],
        *,
        severity: Severity | None = None,
        standard: str | None = None,
    ) -> None:
        """Record a problem; a second call for the same ID adds its evidence."""
        lines = tuple(evidence)
        old = self.findings.get(check_id)
        if old is not None and old.status is Status.FAIL:
            self.findings[check_id] = dataclasses.replace(old, evidence=old.evidence + lines)
        else:
            self.findings[check_id] = finding(check_id, lines, severity=severity, standard=standard)
        self.decided.add(check_id)

    def ok(self, *check_ids: str) -> None:
        """The check ran and found nothing (or does not apply)."""
        self.decided.update(check_ids)

    def untested(self, check_ids: Iterable[str], reason: str) -> None:
        for check_id in check_ids:
            if check_id not in self.decided:
                self.findings[check_id] = not_tested(check_id, reason)
                self.decided.add(check_id)

    def throttle(self, reason: str) -> None:
        if self.throttled is None:
            self.throttled = reason
        self.net.mark_throttled(self.address, reason)

    def _save(self) -> dict[str, Any]:
        """What a step may change, to undo a run that failed half way."""
        return {name: copy.copy(getattr(self, name)) for name in _STEP_STATE}

    def _restore(self, saved: dict[str, Any]) -> None:
        for name, value in saved.items():
            setattr(self, name, value)

    async def attempt(self, body: Callable[[], Awaitable[None]]) -> str | None:
        """Run one step; the reason it could not finish, or None. A step that fails
        for a passing reason runs again from a clean state (`ATTEMPTS` runs in all,
        `backoff` seconds apart); what the last run decided before it failed stands."""
        backoff = self.net.settings.backoff
        for run in range(1, ATTEMPTS + 1):
            if self.throttled is not None:
                return f"server throttled the scan ({self.throttled})"
            saved = self._save()
            try:
                await body()
            except (Throttled, _Refused) as exc:
                if not isinstance(exc, _Refused) or exc.throttling:
                    self.throttle(exc.reason)
                return _reason(exc)
            except _PASSING as exc:
                if run == ATTEMPTS:
                    tries = f"{ATTEMPTS} tries, {backoff:g} s apart" if ATTEMPTS > 1 else "1 try"
                    return f"{_reason(exc)} ({tries}); {_rerun(exc)}"
                self._restore(saved)
                await asyncio.sleep(backoff)
            except _NETWORK_ERRORS as exc:
                return _reason(exc)
            else:
                return None
        raise AssertionError("unreachable: the last run returns")

    async def run(self, check_ids: Sequence[str], body: Callable[[], Awaitable[None]]) -> bool:
        """Run one step deciding `check_ids`; those it left undecided become not_tested."""
        reason = await self.attempt(body)
        if reason is not None:
            self.untested(check_ids, reason)
            return False
        return True

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[_Conn]:
        """A fresh connection inside the address's slot; on an implicit-TLS port
        the handshake comes first."""
        async with _connection(self.net, self.address, self.port) as conn:
            if not self.cleartext:
                await conn.starttls(self.sni)
            yield conn

    # -- shared judgements -----------------------------------------------------

    def judge_greeting(self, greeting: _Response) -> None:
        """BAN-01 from the greeting, whose first line becomes the service's banner."""
        if isinstance(greeting, d.SmtpReply):
            self.banner = d.printable(greeting.raw[0]) if greeting.raw else str(greeting.code)
            text = " ".join(greeting.lines)
        else:
            self.banner = greeting.shown()
            text = greeting.text
        version = disclosed_version(text)
        if version:
            self.fail("BAN-01", (_s(greeting), f"discloses {version!r}"))
        else:
            self.ok("BAN-01")

    def judge_starttls(
        self,
        advertised: bool,
        reply_ok: bool,
        handshake_error: str | None,
        evidence: Sequence[str],
    ) -> bool:
        """ST-01, ST-02, ST-03 and EXP-07 from one STARTTLS attempt."""
        works = reply_ok and handshake_error is None
        self.starttls_works = works
        self.starttls_state = "works" if works else ("broken" if advertised else "absent")
        outcome = list(evidence)
        if handshake_error is not None:
            outcome.append(f"TLS handshake failed: {handshake_error}")
        if advertised:
            self.ok("ST-01", "ST-03", "EXP-07")
            if works:
                self.ok("ST-02")
            else:
                self.fail("ST-02", outcome)
            return works
        self.ok("ST-02")
        if reply_ok:
            self.fail("ST-03", (*outcome, "STARTTLS answered although not advertised"))
            self.starttls_state = "works" if works else "broken"
        else:
            self.ok("ST-03")
        if works:
            self.ok("EXP-07")
        else:
            self.fail("EXP-07", (*outcome, "no STARTTLS: every command crosses in clear"))
        return works

    def after_starttls_unavailable(self, protocol: Protocol) -> None:
        """Checks that need STARTTLS: nothing to check when there is none at all,
        not tested when it is there but broken."""
        ids = _AFTER_STARTTLS[protocol]
        if self.starttls_state == "absent":
            self.ok(*ids)
        else:
            self.untested(ids, "STARTTLS did not work (see ST-02)")

    def record_before_tls(self, protocol: Protocol, caps: Sequence[str]) -> None:
        """The capabilities seen in clear (ST-10, AUTH-06 and AUTH-07 use them)."""
        self.caps_before = tuple(caps)
        self.note_anonymous(protocol, caps, "before TLS")

    def judge_after_tls(
        self, protocol: Protocol, caps: Sequence[str], where: str, shown: Sequence[str]
    ) -> None:
        """ST-04, ST-10 and AUTH-09 from the capabilities seen inside TLS (`where`:
        after STARTTLS, or inside implicit TLS); AUTH-06 and AUTH-07 use them too."""
        self.caps_after = after = tuple(caps)
        self.note_anonymous(protocol, after, where)
        starttls_word = "STLS" if protocol is Protocol.POP3 else "STARTTLS"
        if any(c.upper().split()[:1] == [starttls_word] for c in after):
            self.fail("ST-04", (*shown, f"{starttls_word} is still offered inside TLS"))
        else:
            self.ok("ST-04")
        mechanisms = d.sasl_mechanisms(protocol, after)
        if legacy_only(mechanisms):
            self.fail(
                "AUTH-09",
                (*shown, f"SASL mechanisms inside TLS: {' '.join(mechanisms)} (legacy only)"),
            )
        else:
            self.ok("AUTH-09")
        if self.cleartext:
            added, removed = capability_diff(self.caps_before, after)
            self.fail(
                "ST-10",
                (
                    f"before TLS: {' '.join(self.caps_before) or '(none)'}",
                    f"after TLS: {' '.join(after) or '(none)'}",
                    f"added after TLS: {' '.join(added) or '(none)'}",
                    f"removed after TLS: {' '.join(removed) or '(none)'}",
                ),
            )

    def note_anonymous(self, protocol: Protocol, caps: Sequence[str], where: str) -> None:
        mechanisms = d.sasl_mechanisms(protocol, caps)
        if "ANONYMOUS" in mechanisms:
            self.anonymous.append(f"SASL ANONYMOUS offered {where}")
        if "NTLM" in mechanisms:
            self.ntlm = (*self.ntlm, where)

    def judge_anonymous(self, extra: Sequence[str] = ()) -> None:
        evidence = [*self.anonymous, *extra]
        if evidence:
            self.fail("AUTH-06", evidence)
        else:
            self.ok("AUTH-06")

    def judge_probe(self, verdict: ProbeVerdict, evidence: Sequence[str]) -> None:
        if verdict is ProbeVerdict.REFUSED:
            self.ok("AUTH-05")
        elif verdict is ProbeVerdict.UNCLEAR:
            self.untested(("AUTH-05",), f"the answer does not say: {evidence[-1]}")
        else:
            why = (
                "the dummy credential was ACCEPTED before TLS"
                if verdict is ProbeVerdict.ACCEPTED
                else "the credential was checked before TLS: a real password would cross in clear"
            )
            self.fail("AUTH-05", (*evidence, why))

    def judge_injection(self, results: Sequence[tuple[str, list[str] | None, str | None]]) -> None:
        """ST-07 from both variants: (name, evidence if convicted, error reason)."""
        convicted = [line for _, lines, _ in results if lines for line in lines]
        if convicted:
            self.fail("ST-07", convicted)
            return
        errors = [f"{name}: {error}" for name, _, error in results if error]
        if errors:
            self.untested(("ST-07",), "; ".join(errors))
        else:
            self.ok("ST-07")

    def judge_exposure(self, protocol: Protocol) -> None:
        if not self.cleartext or protocol not in _EXPOSURE:
            return
        if protocol is Protocol.SMTP and self.port == 25:
            return
        exposure_id, inputs = _EXPOSURE[protocol]
        failed = [i for i in inputs if i in self.failed]
        extra = self.extra_exposure if protocol is Protocol.SMTP else []
        if failed or extra:
            evidence = [f"{i}: {CATALOG[i].title}" for i in failed] + extra
            severity = None
            if "AUTH-05" in failed and protocol is not Protocol.SMTP:
                severity = Severity.CRITICAL
                evidence.append("severity raised to critical: AUTH-05 failed")
            self.fail(exposure_id, evidence, severity=severity)
            return
        missing = [i for i in inputs if i in self.untested_ids]
        if missing:
            self.untested((exposure_id,), f"depends on {', '.join(missing)}, not tested")
        else:
            self.ok(exposure_id)

    def result(self) -> MailResult:
        ordered = sorted(self.findings.values(), key=lambda f: _catalog_order(f.id))
        return MailResult(
            findings=tuple(ordered),
            capabilities_before_tls=self.caps_before,
            capabilities_after_tls=self.caps_after,
            starttls_works=self.starttls_works if self.cleartext else None,
            banner=self.banner,
            software=identify(
                self.rec.protocol, self.banner, (self.caps_before, self.caps_after), self.imap_id
            ),
        )


_ORDER = {check_id: index for index, check_id in enumerate(CATALOG)}


def _catalog_order(check_id: str) -> int:
    return _ORDER.get(check_id, len(_ORDER))


# -- recognise ---------------------------------------------------------------------


async def recognise(
    net: Network, address: str, port: int, *, server_name: str | None
) -> Recognised | None:
    """What speaks on address:port, or None (closed, refused, silent, reset).

    One connection waits `GREETING_WAIT` seconds for a cleartext greeting; if none
    comes, the same connection tries a TLS handshake and reads the greeting inside
    (implicit TLS). A port that sent bytes we do not know gets a TLS try on a fresh
    connection; one that stayed silent and refused TLS gets one more, patient,
    cleartext try (a slow greeter). A try cut short for a passing reason (a timeout
    or a reset half way) is made again, as a step of the audit is (`ATTEMPTS`)."""
    for run in range(1, ATTEMPTS + 1):
        try:
            return await _recognise_once(net, address, port, server_name)
        except _ConnectTimeout:
            break  # filtered, or no host: the usual case in a network range
        except _PASSING:
            if run < ATTEMPTS:
                await asyncio.sleep(net.settings.backoff)
        except _NETWORK_ERRORS:
            break
    return None


async def _recognise_once(
    net: Network, address: str, port: int, server_name: str | None
) -> Recognised | None:
    sni = _sni(server_name, address)
    try:
        async with _connection(net, address, port) as conn:
            raw, line = await _first_line(conn, GREETING_WAIT)
            if line is not None:
                found = await _identify(conn, raw, line, TlsMode.CLEARTEXT, net, address)
                if found is not None:
                    return found
                unknown = d.printable(line)
            elif raw:
                unknown = d.printable(raw)
            else:
                unknown = None
                if await conn.try_starttls(sni) is None:
                    return await _inside_tls(conn, net, address)
        if unknown is not None:
            tls = await _try_tls(net, address, port, sni)
            return tls or Recognised(Protocol.UNKNOWN, TlsMode.CLEARTEXT, unknown)
        return await _slow_greeter(net, address, port)
    except Throttled as exc:
        return Recognised(Protocol.UNKNOWN, TlsMode.CLEARTEXT, "", throttled=exc.reason)
    except ConnectionRefusedError:
        return None  # closed: nothing to try again


async def _first_line(conn: _Conn, wait: float) -> tuple[bytes, bytes | None]:
    """(all bytes read, the first complete line or None). Silence for `wait`
    seconds gives up; once bytes flow, the line gets the full timeout."""
    parser = d.LineParser()
    line, raw = await conn.quiet(parser, wait)
    data = bytearray(raw)
    if line is None and raw and parser.buffered:
        with contextlib.suppress(TimeoutError, _Closed, d.DialogError):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + conn.timeout
            while (line := parser.next()) is None and loop.time() < deadline:
                chunk = await conn._read(deadline - loop.time())
                if not chunk:
                    break
                data += chunk
                parser.feed(chunk)
    return bytes(data), line


async def _identify(
    conn: _Conn, raw: bytes, line: bytes, mode: TlsMode, net: Network, address: str
) -> Recognised | None:
    """Read the whole greeting of the protocol `line` starts and name it."""
    protocol = d.sniff_greeting(line)
    banner = d.printable(line)
    if protocol is None:
        return None
    if protocol is Protocol.IMAP:
        imap = d.ImapParser()
        imap.feed(raw)
        greeting = await conn.receive(imap)
        throttled = greeting.shown() if greeting.status == "BYE" else None
        if throttled:
            net.mark_throttled(address, throttled)
        return Recognised(Protocol.IMAP, mode, banner, throttled)
    if protocol is Protocol.POP3:
        throttled = banner if line[:1] == b"-" else None
        if throttled:
            net.mark_throttled(address, throttled)
        return Recognised(Protocol.POP3, mode, banner, throttled)
    if protocol is Protocol.SMTP:
        smtp = d.SmtpParser()
        smtp.feed(raw)
        reply = await conn.receive(smtp)
        throttled = None if reply.code == 220 else reply.shown()
        if reply.code == 421:
            net.mark_throttled(address, reply.shown())
        return Recognised(Protocol.SMTP, mode, banner, throttled)
    # ManageSieve: capability lines up to OK; the IMPLEMENTATION names the server.
    lines = d.LineParser()
    lines.feed(raw)
    deadline = conn.deadline()
    for _ in range(MAX_RESPONSES):
        sieve = await conn.receive_by(lines, deadline)
        pair = d.parse_sieve_line(sieve)
        if pair is not None and pair[0] == "IMPLEMENTATION":
            banner = d.printable(sieve)
        if pair is None:
            break
    return Recognised(Protocol.SIEVE, mode, banner)


async def _inside_tls(conn: _Conn, net: Network, address: str) -> Recognised:
    """After a handshake: the greeting inside TLS names the protocol."""
    try:
        raw, line = await _first_line(conn, conn.timeout)
    except _NETWORK_ERRORS:
        return Recognised(Protocol.UNKNOWN, TlsMode.IMPLICIT, "")
    if line is None:
        return Recognised(Protocol.UNKNOWN, TlsMode.IMPLICIT, d.printable(raw))
    found = await _identify(conn, raw, line, TlsMode.IMPLICIT, net, address)
    return found or Recognised(Protocol.UNKNOWN, TlsMode.IMPLICIT, d.printable(line))


async def _try_tls(net: Network, address: str, port: int, sni: str | None) -> Recognised | None:
    async with _connection(net, address, port) as conn:
        if await conn.try_starttls(sni) is not None:
            return None
        return await _inside_tls(conn, net, address)


async def _slow_greeter(net: Network, address: str, port: int) -> Recognised | None:
    async with _connection(net, address, port) as conn:
        raw, line = await _first_line(conn, conn.timeout)
        if line is None:
            return None
        found = await _identify(conn, raw, line, TlsMode.CLEARTEXT, net, address)
        return found or Recognised(Protocol.UNKNOWN, TlsMode.CLEARTEXT, d.printable(line))


# -- audit_mail --------------------------------------------------------------------


async def audit_mail(
    net: Network,
    address: str,
    port: int,
    rec: Recognised,
    *,
    server_name: str | None,
    ehlo_name: str = "imapguard.scan.invalid",
) -> MailResult:
    """Run the mail checks of one recognised service (see the module docstring)."""
    audit = _Audit(net, address, port, rec, server_name, ehlo_name)
    protocol = rec.protocol
    if protocol is Protocol.SIEVE:
        audit.fail(
            "EXP-06",
            (f"ManageSieve answers on port {port}", f"S: {rec.banner}"),
        )
        return audit.result()
    if protocol not in _DIALOGS:
        if audit.throttled is not None:
            audit.fail(
                "ST-11",
                (
                    f"throttled: {audit.throttled}",
                    "not tested: everything (turned away before the server said what it is)",
                ),
            )
        return audit.result()
    checks = (_CLEARTEXT_CHECKS if audit.cleartext else _IMPLICIT_CHECKS)[protocol]
    if audit.throttled is None:
        await _audit_service(audit, protocol)
        audit.judge_exposure(protocol)
    if audit.throttled is not None:
        audit.untested(checks, f"server throttled the scan ({audit.throttled})")
        skipped = sorted(audit.untested_ids, key=_catalog_order)
        audit.fail(
            "ST-11",
            (
                f"throttled: {audit.throttled}",
                f"not tested: {', '.join(skipped) or '(none)'}",
            ),
        )
    return audit.result()


async def _audit_service(audit: _Audit, protocol: Protocol) -> None:
    """The steps of an IMAP, POP3 or SMTP service, each on its own connection."""
    dialogs = _DIALOGS[protocol]
    if not audit.cleartext:
        await audit.run(_IMPLICIT_CHECKS[protocol], lambda: dialogs.implicit(audit))
        if audit.ntlm:
            await _ntlm_step(audit, protocol)
        return
    await audit.run(_CLEARTEXT_CHECKS[protocol], lambda: dialogs.main(audit))
    if protocol is Protocol.SMTP and audit.starttls_state != "works":
        # The envelope checks ran inside TLS when STARTTLS worked; else in clear.
        await audit.run(("AUTH-06", "AUTH-08"), lambda: _smtp_envelope_clear(audit))
    if audit.ntlm:
        await _ntlm_step(audit, protocol)
    await audit.run(("AUTH-05",), lambda: dialogs.probe(audit))
    await _injection(audit, protocol)


async def _mailbox_without_tls(
    audit: _Audit, protocol: Protocol, session: _Imap | _Pop3, handshake_error: str | None
) -> None:
    """IMAP or POP3 whose STARTTLS did not work: what was seen in clear decides
    AUTH-06 and BAN-02, what needs TLS is decided by `after_starttls_unavailable`."""
    audit.after_starttls_unavailable(protocol)
    audit.judge_anonymous()
    audit.ok("BAN-02")
    if handshake_error is None:  # refused in clear: the session still speaks
        await session.bye()


# -- IMAP ----------------------------------------------------------------------------


def _imap_caps(
    others: Sequence[d.ImapResponse], tagged: d.ImapResponse, greeting: d.ImapResponse | None
) -> tuple[str, ...]:
    for response in (*others, tagged):
        caps = response.capabilities()
        if caps is not None:
            return caps
    if greeting is not None and (caps := greeting.capabilities()) is not None:
        return caps
    raise _Unexpected(f"no capability list in the answer to CAPABILITY: {tagged.shown()}")


async def _imap_id(audit: _Audit, imap: _Imap) -> None:
    """BAN-02 from `ID NIL` (RFC 2971): a version, OS version or versioned name."""
    command, others, _ = await imap.run("ID NIL")
    data = next((r for r in others if r.name == "ID"), None)
    if data is None:
        audit.ok("BAN-02")
        return
    try:
        fields = d.parse_imap_id(data.text) or {}
    except d.MalformedResponse as exc:
        audit.untested(("BAN-02",), f"ID response not understood ({exc})")
        return
    audit.imap_id = fields
    disclosed = [
        f"{key} {value!r}" for key in ("version", "os-version") if (value := fields.get(key))
    ]
    name_version = disclosed_version(fields.get("name") or "")
    if name_version:
        disclosed.append(f"name {name_version!r}")
    if disclosed:
        audit.fail("BAN-02", (_c(command), _s(data), "ID discloses " + ", ".join(disclosed)))
    else:
        audit.ok("BAN-02")


async def _imap_after_tls(
    audit: _Audit, imap: _Imap, greeting: d.ImapResponse | None, where: str
) -> None:
    """ST-04, ST-10, AUTH-06, AUTH-09 and (unless decided in clear) BAN-02 from
    CAPABILITY inside TLS. `greeting`: the implicit-TLS greeting, whose capability
    code may answer for CAPABILITY."""
    command, others, tagged = await imap.run("CAPABILITY")
    caps = _imap_caps(others, tagged, greeting)
    shown = (_c(command), f"S: * CAPABILITY {' '.join(caps)}")
    audit.judge_after_tls(Protocol.IMAP, caps, where, shown)
    audit.judge_anonymous()
    if "BAN-02" not in audit.decided and "ID" in audit.caps_after:
        await _imap_id(audit, imap)
    audit.ok("BAN-02")


async def _imap_main(audit: _Audit) -> None:
    async with audit.connection() as conn:
        imap = _Imap(conn)
        greeting = await imap.greeting()
        audit.judge_greeting(greeting)
        if greeting.status == "PREAUTH":
            audit.fail(
                "ST-09",
                (_s(greeting), "PREAUTH in cleartext: the session is authenticated before TLS"),
            )
        else:
            audit.ok("ST-09")
        command, others, tagged = await imap.run("CAPABILITY")
        caps = _imap_caps(others, tagged, greeting)
        shown = (_c(command), f"S: * CAPABILITY {' '.join(caps)}")
        audit.record_before_tls(Protocol.IMAP, caps)
        if "ID" in caps:
            await _imap_id(audit, imap)
        if greeting.status == "PREAUTH":
            # STARTTLS is valid only in the not-authenticated state (RFC 9051 §6.2.1):
            # this session can never be encrypted, whatever it advertises.
            decided = ("EXP-01", "BAN-02", "ST-01", "EXP-07")
            if "STARTTLS" not in caps:
                audit.fail("ST-01", (*shown, "STARTTLS is not advertised"))
            else:
                audit.ok("ST-01")
            audit.fail(
                "EXP-07",
                (
                    _s(greeting),
                    "STARTTLS is only allowed before authentication (RFC 9051 §6.2.1); "
                    "a PREAUTH session stays in cleartext",
                ),
            )
            audit.untested(
                [i for i in _CLEARTEXT_CHECKS[Protocol.IMAP] if i not in decided],
                "the PREAUTH greeting makes the session authenticated: STARTTLS and "
                "login cannot be tried (see ST-09)",
            )
            audit.ok("BAN-02")
            await imap.bye()
            return
        advertised = "STARTTLS" in caps
        if not advertised:
            audit.fail("ST-01", (*shown, "STARTTLS is not advertised"))
        audit.logindisabled = "LOGINDISABLED" in caps
        if audit.logindisabled:
            audit.ok("AUTH-01")
        else:
            audit.fail("AUTH-01", (*shown, "LOGINDISABLED is missing: LOGIN is allowed in clear"))
        plaintext = [m for m in d.sasl_mechanisms(Protocol.IMAP, caps) if m in d.PLAINTEXT_SASL]
        if plaintext:
            audit.fail(
                "AUTH-02",
                (*shown, f"plaintext SASL before TLS: {' '.join('AUTH=' + m for m in plaintext)}"),
            )
        else:
            audit.ok("AUTH-02")
        command, _, tagged = await imap.run("STARTTLS")
        accepted = tagged.status == "OK"
        handshake_error = await conn.try_starttls(audit.sni) if accepted else None
        evidence = (_c(command), _s(tagged))
        if not audit.judge_starttls(advertised, accepted, handshake_error, evidence):
            await _mailbox_without_tls(audit, Protocol.IMAP, imap, handshake_error)
            return
        imap.restart()
        await _imap_after_tls(audit, imap, None, "after TLS")
        await imap.bye()


async def _imap_implicit(audit: _Audit) -> None:
    async with audit.connection() as conn:
        imap = _Imap(conn)
        greeting = await imap.greeting()
        audit.judge_greeting(greeting)
        await _imap_after_tls(audit, imap, greeting, "inside TLS")
        # RFC 9051 §6.2.1: a tagged BAD on an implicit-TLS port, in any state
        # (so also after a PREAUTH greeting, which is fine inside TLS).
        command, _, tagged = await imap.run("STARTTLS")
        if tagged.status == "BAD":
            audit.ok("ST-06")
            await imap.bye()
        else:
            audit.fail("ST-06", (_c(command), _s(tagged), "a tagged BAD is required"))


async def _imap_probe(audit: _Audit) -> None:
    async with audit.connection() as conn:
        imap = _Imap(conn)
        greeting = await imap.greeting()
        if greeting.status == "PREAUTH":
            audit.untested(("AUTH-05",), "PREAUTH greeting: no login to probe (see ST-09)")
            await imap.bye()
            return
        caps = greeting.capabilities()
        logindisabled = "LOGINDISABLED" in caps if caps is not None else audit.logindisabled
        tag = imap.tags.next()
        command = d.imap_login(tag, PROBE_USER, Secret(secrets.token_urlsafe(18)))
        await conn.send(command)
        async with _credential_answer(conn):
            _, tagged = await imap.until_tagged(tag, wait=AUTH_WAIT)
        if tagged.status == "NO" and tagged.code == "UNAVAILABLE":
            # RFC 5530: "temporary failure because a subsystem is down"
            raise _Temporary(_s(tagged))
        verdict = classify_imap_login(tagged, logindisabled=logindisabled)
        audit.judge_probe(verdict, (_c(command), _s(tagged)))
        await imap.bye()


# -- POP3 ----------------------------------------------------------------------------


async def _pop3_capa(pop3: _Pop3) -> tuple[d.Command, d.Pop3Response, tuple[str, ...] | None]:
    command = d.pop3_command("CAPA")
    response = await pop3.run(command, multiline=True)
    return command, response, response.lines if response.ok else None


def _pop3_implementation(audit: _Audit, caps: Sequence[str], shown: Sequence[str]) -> bool:
    """BAN-02 from CAPA's IMPLEMENTATION line; True once decided."""
    line = next((c for c in caps if c.upper().startswith("IMPLEMENTATION")), None)
    if line is None:
        return False
    version = disclosed_version(line.partition(" ")[2])
    if version:
        audit.fail("BAN-02", (*shown, f"S: {line}", f"discloses {version!r}"))
    else:
        audit.ok("BAN-02")
    return True


async def _pop3_after_tls(audit: _Audit, pop3: _Pop3, where: str) -> None:
    """ST-04, ST-10, AUTH-06, AUTH-09 and (unless decided in clear) BAN-02 from
    CAPA inside TLS."""
    command, response, caps = await _pop3_capa(pop3)
    after = caps or ()
    shown = (_c(command), _s(response))
    audit.judge_after_tls(Protocol.POP3, after, where, (*shown, f"S: {' | '.join(after)}"))
    audit.judge_anonymous()
    if "BAN-02" not in audit.decided:
        _pop3_implementation(audit, audit.caps_after, shown)
    audit.ok("BAN-02")


async def _pop3_main(audit: _Audit) -> None:
    async with audit.connection() as conn:
        pop3 = _Pop3(conn)
        greeting = await pop3.greeting()
        audit.judge_greeting(greeting)
        command, response, caps = await _pop3_capa(pop3)
        shown = (_c(command), _s(response))
        audit.record_before_tls(Protocol.POP3, caps or ())
        capa = d.parse_capa(audit.caps_before)
        advertised = "STLS" in capa
        if not advertised:
            why = "STLS is not advertised" if caps is not None else "CAPA is not supported"
            audit.fail("ST-01", (*shown, why))
        if caps is None:
            audit.untested(("AUTH-03",), "the server does not answer CAPA")
        else:
            plaintext = [m for m in capa.get("SASL", ()) if m in d.PLAINTEXT_SASL]
            offered = (["USER"] if "USER" in capa else []) + [f"SASL {m}" for m in plaintext]
            if offered:
                listing = " | ".join(caps)
                audit.fail(
                    "AUTH-03", (*shown, f"S: {listing}", f"before STLS: {', '.join(offered)}")
                )
            else:
                audit.ok("AUTH-03")
        _pop3_implementation(audit, audit.caps_before, shown)
        command = d.pop3_command("STLS")
        response = await pop3.run(command)
        handshake_error = await conn.try_starttls(audit.sni) if response.ok else None
        evidence = (_c(command), _s(response))
        if not audit.judge_starttls(advertised, response.ok, handshake_error, evidence):
            await _mailbox_without_tls(audit, Protocol.POP3, pop3, handshake_error)
            return
        pop3.restart()
        await _pop3_after_tls(audit, pop3, "after TLS")
        await pop3.bye()


async def _pop3_implicit(audit: _Audit) -> None:
    async with audit.connection() as conn:
        pop3 = _Pop3(conn)
        greeting = await pop3.greeting()
        audit.judge_greeting(greeting)
        await _pop3_after_tls(audit, pop3, "inside TLS")
        command = d.pop3_command("STLS")
        response = await pop3.run(command)
        if response.kind is d.Pop3Kind.ERR:
            audit.ok("ST-06")
            await pop3.bye()
        else:
            audit.fail(
                "ST-06",
                (_c(command), _s(response), "STLS inside TLS must be refused with -ERR"),
                standard="RFC 2595 §4, RFC 8314 §3.2 (by analogy with RFC 9051 §6.2.1)",
            )


async def _pop3_probe(audit: _Audit) -> None:
    async with audit.connection() as conn:
        pop3 = _Pop3(conn)
        await pop3.greeting()
        command = d.pop3_user(PROBE_USER)
        response = await pop3.run(command)
        audit.judge_probe(classify_pop3_user(response), (_c(command), _s(response)))
        await pop3.bye()


# -- SMTP ----------------------------------------------------------------------------


def _smtp(audit: _Audit, conn: _Conn) -> _Smtp:
    return _Smtp(conn, audit.ehlo_name, audit.throttle)


def _judge_names(audit: _Audit, greeting: d.SmtpReply, ehlo: d.EhloInfo) -> None:
    """BAN-03: the host names the server gives itself in its greeting and EHLO."""
    greeting_words = greeting.lines[0].split() if greeting.lines else []
    names = [("greeting", greeting_words[0])] if greeting_words else []
    names.append(("EHLO", ehlo.domain))
    evidence = [
        f"{where} names the host {name!r}: {why}"
        for where, name in names
        if (why := internal_name(name))
    ]
    if evidence:
        audit.fail("BAN-03", evidence)
    else:
        audit.ok("BAN-03")


async def _smtp_envelope(audit: _Audit, smtp: _Smtp) -> None:
    """AUTH-06 (anonymous SASL, open relay) and AUTH-08 (VRFY/EXPN enumeration)
    on a session that has said EHLO."""
    mail_command, mail = await smtp.mail_from()
    rcpt_command = d.smtp_command(f"RCPT TO:<{RELAY_PROBE_RCPT}>")
    rcpt = await smtp.run(rcpt_command) if mail.positive else None
    if mail.positive:
        await smtp.rset()
    relay: list[str] = []
    if rcpt is not None and classify_relay(mail, rcpt):
        relay = [
            _c(mail_command),
            _s(mail),
            _c(rcpt_command),
            _s(rcpt),
            "open relay: a recipient in a foreign domain was accepted without AUTH",
        ]
    audit.judge_anonymous(relay)
    unknown = f"imapguard-no-such-user-{secrets.token_hex(4)}"
    evidence: list[str] = []
    for verb in ("VRFY", "EXPN"):
        known_command = d.smtp_command(f"{verb} postmaster")
        known = await smtp.run(known_command)
        if known.code not in (250, 251, 252):
            continue
        unknown_command = d.smtp_command(f"{verb} {unknown}")
        other = await smtp.run(unknown_command)
        if vrfy_enumerates(known, other):
            evidence += [_c(known_command), _s(known), _c(unknown_command), _s(other)]
    if evidence:
        audit.fail("AUTH-08", (*evidence, "existing and unknown mailboxes get different answers"))
    else:
        audit.ok("AUTH-08")


async def _smtp_after_tls(audit: _Audit, smtp: _Smtp, where: str) -> d.EhloInfo:
    """ST-04, ST-10 and AUTH-09 from EHLO inside TLS."""
    command, _, ehlo = await smtp.ehlo()
    shown = (_c(command), f"S: extensions {' | '.join(ehlo.lines)}")
    audit.judge_after_tls(Protocol.SMTP, ehlo.lines, where, shown)
    return ehlo


async def _smtp_main(audit: _Audit) -> None:
    async with audit.connection() as conn:
        smtp = _smtp(audit, conn)
        greeting = await smtp.greeting()
        audit.judge_greeting(greeting)
        command, reply, ehlo = await smtp.ehlo()
        audit.record_before_tls(Protocol.SMTP, ehlo.lines)
        _judge_names(audit, greeting, ehlo)
        shown = (_c(command), _s(reply), f"S: extensions {' | '.join(ehlo.lines)}")
        advertised = "STARTTLS" in ehlo.keywords
        if not advertised:
            audit.fail("ST-01", (*shown, "STARTTLS is not advertised"))
        if ehlo.auth:
            plaintext = [m for m in ehlo.auth if m in d.PLAINTEXT_SASL]
            severity = None if plaintext else Severity.MEDIUM
            note = (
                "AUTH before STARTTLS"
                if plaintext
                else "AUTH before STARTTLS (no plaintext mechanism: severity lowered to medium)"
            )
            audit.fail("AUTH-04", (*shown, f"{note}: {' '.join(ehlo.auth)}"), severity=severity)
        else:
            audit.ok("AUTH-04")
        if audit.port != 25:
            mail_command, mail = await smtp.mail_from()
            if mail.positive:
                audit.extra_exposure += [
                    _c(mail_command),
                    _s(mail),
                    "MAIL accepted before STARTTLS",
                ]
                await smtp.rset()
        command = d.smtp_command("STARTTLS")
        reply = await smtp.run(command)
        accepted = reply.code == 220
        handshake_error = await conn.try_starttls(audit.sni) if accepted else None
        evidence = (_c(command), _s(reply))
        if not audit.judge_starttls(advertised, accepted, handshake_error, evidence):
            audit.after_starttls_unavailable(Protocol.SMTP)
            if handshake_error is None:
                await smtp.bye()
            return
        smtp.restart()
        # ST-08 first: MAIL right after the handshake, before any new EHLO.
        mail_command, mail = await smtp.mail_from()
        kept = classify_state_reset(mail)
        if kept is True:
            audit.fail(
                "ST-08",
                (_c(mail_command), _s(mail), "MAIL accepted inside TLS without a new EHLO"),
            )
            await smtp.rset()
        elif kept is False:
            audit.ok("ST-08")
        else:
            audit.untested(("ST-08",), f"MAIL refused for another reason: {mail.shown()}")
        await _smtp_after_tls(audit, smtp, "after TLS")
        await _smtp_envelope(audit, smtp)
        command = d.smtp_command("STARTTLS")
        reply = await smtp.run(command)
        if reply.code == 220:
            audit.fail("ST-05", (_c(command), _s(reply), "a second STARTTLS was accepted"))
            return  # the server now waits for a handshake inside TLS: just close
        audit.ok("ST-05")
        await smtp.bye()


async def _smtp_envelope_clear(audit: _Audit) -> None:
    async with audit.connection() as conn:
        smtp = _smtp(audit, conn)
        await smtp.greeting()
        await smtp.ehlo()
        await _smtp_envelope(audit, smtp)
        await smtp.bye()


async def _smtp_implicit(audit: _Audit) -> None:
    async with audit.connection() as conn:
        smtp = _smtp(audit, conn)
        greeting = await smtp.greeting()
        audit.judge_greeting(greeting)
        ehlo = await _smtp_after_tls(audit, smtp, "inside TLS")
        _judge_names(audit, greeting, ehlo)
        await _smtp_envelope(audit, smtp)
        command = d.smtp_command("STARTTLS")
        reply = await smtp.run(command)
        if reply.positive:
            audit.fail(
                "ST-06",
                (_c(command), _s(reply), "STARTTLS inside TLS must be refused"),
                standard="RFC 3207 §4, §4.2",
            )
            return
        audit.ok("ST-06")
        await smtp.bye()


async def _smtp_probe(audit: _Audit) -> None:
    async with audit.connection() as conn:
        smtp = _smtp(audit, conn)
        await smtp.greeting()
        _, _, ehlo = await smtp.ehlo()
        password = Secret(secrets.token_urlsafe(18))
        if "LOGIN" in ehlo.auth and "PLAIN" not in ehlo.auth:
            evidence, reply = await _smtp_auth_login(smtp, password)
        else:
            command = d.smtp_auth_plain(PROBE_USER, password)
            async with _credential_answer(conn):
                reply = await smtp.run(command, wait=AUTH_WAIT)
            evidence = [_c(command), _s(reply)]
            if reply.code == 334:
                # A challenge although we sent the response: cancel, cannot tell.
                await smtp.run(d.smtp_command("*"))
                audit.untested(("AUTH-05",), f"AUTH PLAIN with a response got {evidence[1]}")
                await smtp.bye()
                return
        if 400 <= reply.code < 500:  # RFC 5321 §4.2.1: transient (454: RFC 4954 §6)
            raise _Temporary(_s(reply))
        audit.judge_probe(classify_smtp_auth(reply), evidence)
        await smtp.bye()


@contextlib.asynccontextmanager
async def _credential_answer(conn: _Conn) -> AsyncIterator[None]:
    """Around the wait for the answer to the dummy credential: a timeout there is
    `_AuthDelayed` (its reason says how to rerun)."""
    try:
        yield
    except _AuthDelayed:
        raise
    except TimeoutError as exc:
        raise _AuthDelayed(max(conn.timeout, AUTH_WAIT)) from exc


async def _smtp_auth_login(smtp: _Smtp, password: Secret) -> tuple[list[str], d.SmtpReply]:
    """AUTH LOGIN (user, then password, each after a 334)."""
    command = d.smtp_command("AUTH LOGIN")
    reply = await smtp.run(command)
    evidence = [_c(command), _s(reply)]
    if reply.code != 334:
        return evidence, reply
    user_line = d.sasl_line(PROBE_USER.encode(), f"{PROBE_USER} (base64)")
    reply = await smtp.run(user_line)
    evidence += [_c(user_line), _s(reply)]
    if reply.code != 334:
        return evidence, reply
    async with _credential_answer(smtp.conn):
        reply = await smtp.run(d.sasl_line(password.reveal(), "*** (base64)"), wait=AUTH_WAIT)
    evidence += ["C: *** (base64)", _s(reply)]
    return evidence, reply


# -- NTLM (AUTH-07) ------------------------------------------------------------------


async def _ntlm_step(audit: _Audit, protocol: Protocol) -> None:
    """Ask for an NTLM challenge and read the names in it (nmap's *-ntlm-info).
    Inside TLS when NTLM is offered there, else in clear."""
    inside = "after TLS" in audit.ntlm and audit.starttls_state == "works"
    if audit.cleartext and not inside and "before TLS" not in audit.ntlm:
        return

    async def body() -> None:
        async with audit.connection() as conn:
            blob, evidence = await _DIALOGS[protocol].ntlm(audit, conn, inside)
            if blob is None:
                audit.untested(("AUTH-07",), f"no NTLM challenge: {evidence[-1]}")
                return
            challenge = d.parse_ntlm_challenge(blob)
            disclosed = challenge.disclosed()
            if disclosed:
                audit.fail("AUTH-07", (*evidence, "challenge discloses " + "; ".join(disclosed)))
            else:
                audit.ok("AUTH-07")

    await audit.run(("AUTH-07",), body)


_CANCEL = d.smtp_command("*")  # "*" cancels a SASL exchange in all three protocols


async def _ntlm_exchange(
    command: d.Command,
    ask: Callable[[d.Command], Awaitable[_R]],
    challenge: Callable[[_R], str | None],
    cancel: Callable[[], Awaitable[object]],
    bye: Callable[[], Awaitable[None]],
) -> tuple[str | None, list[str]]:
    """(base64 challenge or None, evidence) of one NTLM exchange, cancelled at once:
    `command` starts it, a NEGOTIATE_MESSAGE naming nothing of ours follows.
    `ask` sends a line and reads the answer; `challenge` is the base64 text of a
    continuation, None for any other answer."""
    first = await ask(command)
    if challenge(first) is None:
        return None, [_c(command), _s(first)]
    negotiate = d.sasl_line(d.ntlm_negotiate(), "NTLM NEGOTIATE_MESSAGE (base64)")
    second = await ask(negotiate)
    evidence = [_c(command), _s(first), _c(negotiate), _s(second)]
    blob = challenge(second)
    if blob is None:
        return None, evidence
    with contextlib.suppress(*_NETWORK_ERRORS):  # the challenge is in: it decides
        await cancel()
    await bye()
    return blob, evidence


async def _ntlm_imap(audit: _Audit, conn: _Conn, starttls: bool) -> tuple[str | None, list[str]]:
    imap = _Imap(conn)
    await imap.greeting()
    if starttls:
        await imap.run("STARTTLS")
        await conn.starttls(audit.sni)
        imap.restart()
    tag = imap.tags.next()

    async def ask(command: d.Command) -> d.ImapResponse:
        await conn.send(command)
        return await conn.receive(imap.parser)

    async def cancel() -> None:
        await conn.send(_CANCEL)
        await imap.until_tagged(tag)

    def challenge(response: d.ImapResponse) -> str | None:
        return response.text if response.kind is d.ImapKind.CONTINUATION else None

    return await _ntlm_exchange(d.imap_authenticate(tag, "NTLM"), ask, challenge, cancel, imap.bye)


async def _ntlm_pop3(audit: _Audit, conn: _Conn, starttls: bool) -> tuple[str | None, list[str]]:
    pop3 = _Pop3(conn)
    await pop3.greeting()
    if starttls:
        await pop3.run(d.pop3_command("STLS"))
        await conn.starttls(audit.sni)
        pop3.restart()

    def challenge(response: d.Pop3Response) -> str | None:
        return response.text if response.kind is d.Pop3Kind.CONTINUATION else None

    return await _ntlm_exchange(
        d.pop3_command("AUTH NTLM"), pop3.run, challenge, lambda: pop3.run(_CANCEL), pop3.bye
    )


async def _ntlm_smtp(audit: _Audit, conn: _Conn, starttls: bool) -> tuple[str | None, list[str]]:
    smtp = _smtp(audit, conn)
    await smtp.greeting()
    await smtp.ehlo()
    if starttls:
        await smtp.run(d.smtp_command("STARTTLS"))
        await conn.starttls(audit.sni)
        smtp.restart()
        await smtp.ehlo()

    def challenge(reply: d.SmtpReply) -> str | None:
        return reply.lines[0] if reply.code == 334 else None

    return await _ntlm_exchange(
        d.smtp_command("AUTH NTLM"), smtp.run, challenge, lambda: smtp.run(_CANCEL), smtp.bye
    )


# -- STARTTLS injection (ST-07) ------------------------------------------------------


async def _injection(audit: _Audit, protocol: Protocol) -> None:
    """Both variants, each on its own connection, only when STARTTLS works."""
    if audit.starttls_state != "works":
        return  # after_starttls_unavailable() has decided ST-07 already
    inject = _DIALOGS[protocol].inject
    results: list[tuple[str, list[str] | None, str | None]] = []
    for name, inside in (("cleartext variant", False), ("TLS variant", True)):
        convicted: list[list[str] | None] = [None]

        async def body(inside: bool = inside, out: list[list[str] | None] = convicted) -> None:
            async with audit.connection() as conn:
                out[0] = await inject(audit, conn, inside)

        error = await audit.attempt(body)
        results.append((name, convicted[0], error))
    audit.judge_injection(results)


def _heard(raw: bytes, response: _Response | None) -> str:
    return _s(response) if response is not None else f"S: {d.printable(raw)}"


async def _after_injection(
    audit: _Audit,
    conn: _Conn,
    parser: _Source[_Response],
    head: Sequence[str],
    verb: str,
    *,
    inside: bool,
    restart: Callable[[], None],
    probe: Callable[[], Awaitable[list[str] | None]],
) -> list[str] | None:
    """The part of one injection attempt common to the three protocols, once the
    server accepted a STARTTLS (`verb`) written together with an injected command:
    the evidence if the server answered that command, None if it did not. `head`
    shows what we sent and the STARTTLS reply; `parser` is the cleartext one.

    Cleartext variant: any response or byte within `QUIET_WAIT` convicts. TLS
    variant: the handshake (a failure passes: the server read our bytes as TLS),
    `restart`, then `probe`, which returns its evidence when the injected command
    was answered inside TLS. In both, bytes already received after the STARTTLS
    reply convict."""
    leftover = parser.buffered
    if not inside:
        extra, raw = await conn.quiet(parser, QUIET_WAIT)
        if extra is not None or raw:
            return [*head, _heard(raw, extra), f"answered in cleartext after {verb}"]
    else:
        if await conn.try_starttls(audit.sni) is not None:
            return None
        restart()
        answered = await probe()
        if answered is not None:
            return [*head, "(TLS handshake)", *answered]
    if leftover:
        return [*head, f"bytes followed the {verb} reply in cleartext"]
    return None


async def _second_answer(
    conn: _Conn,
    parser: _Source[_Response],
    command: d.Command,
    answer: Callable[[], Awaitable[_Response]],
    verdict: str,
) -> list[str] | None:
    """POP3 and SMTP inside TLS: `command`, its answer, and a second answer within
    `QUIET_WAIT` (the injected command's) as evidence, or None."""
    await conn.send(command)
    first = await answer()
    second, raw = await conn.quiet(parser, QUIET_WAIT)
    if second is None and not raw:
        return None
    return [_c(command), _s(first), _heard(raw, second), verdict]


async def _inject_imap(audit: _Audit, conn: _Conn, inside: bool) -> list[str] | None:
    imap = _Imap(conn)
    await imap.greeting()
    starttls_tag, starttls = imap.command("STARTTLS")
    injected_tag, injected = imap.command("NOOP")
    both = starttls + injected
    await conn.send(both)
    others, tagged = await imap.until_tagged(starttls_tag)
    early = [r for r in others if r.tag == injected_tag]
    if tagged.status != "OK":
        return None  # refused (perhaps because of the pipelined bytes): nothing to inject into
    if early:
        return [
            _c(both),
            _s(early[0]),
            "the injected command was answered before the STARTTLS reply",
        ]

    async def probe() -> list[str] | None:
        probe_tag, command = imap.command("NOOP")
        await conn.send(command)
        others, _ = await imap.until_tagged(probe_tag)
        answered = [r for r in others if r.tag == injected_tag]
        if not answered:
            return None
        return [_c(command), _s(answered[0]), "the injected command was answered inside TLS"]

    head = (_c(both), _s(tagged))
    return await _after_injection(
        audit, conn, imap.parser, head, "STARTTLS", inside=inside, restart=imap.restart, probe=probe
    )


async def _inject_pop3(audit: _Audit, conn: _Conn, inside: bool) -> list[str] | None:
    pop3 = _Pop3(conn)
    await pop3.greeting()
    both = d.pop3_command("STLS") + d.pop3_command("CAPA" if inside else "NOOP")
    pop3.parser.expect(False)
    await conn.send(both)
    response = await conn.receive(pop3.parser)
    if not response.ok:
        return None

    async def probe() -> list[str] | None:
        # Both the injected CAPA (if it was kept) and ours have a body.
        pop3.parser.expect(True)
        pop3.parser.expect(True)
        return await _second_answer(
            conn,
            pop3.parser,
            d.pop3_command("CAPA"),
            lambda: conn.receive(pop3.parser),
            "two answers to one CAPA: the injected one was kept",
        )

    head = (_c(both), _s(response))
    return await _after_injection(
        audit, conn, pop3.parser, head, "STLS", inside=inside, restart=pop3.restart, probe=probe
    )


async def _inject_smtp(audit: _Audit, conn: _Conn, inside: bool) -> list[str] | None:
    smtp = _smtp(audit, conn)
    await smtp.greeting()
    await smtp.ehlo()
    injected = d.smtp_command(f"EHLO {audit.ehlo_name}" if inside else "NOOP")
    both = d.smtp_command("STARTTLS") + injected
    await conn.send(both)
    reply = await smtp.reply()
    if reply.code != 220:
        return None

    async def probe() -> list[str] | None:
        return await _second_answer(
            conn,
            smtp.parser,
            d.smtp_command("NOOP"),
            smtp.reply,
            "two replies to one NOOP: the injected EHLO was kept",
        )

    head = (_c(both), _s(reply))
    return await _after_injection(
        audit, conn, smtp.parser, head, "STARTTLS", inside=inside, restart=smtp.restart, probe=probe
    )


# -- the dialogs of each protocol ----------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Dialogs:
    """The steps of one protocol, as `_audit_service` runs them."""

    main: Callable[[_Audit], Awaitable[None]]  # cleartext: capabilities, STARTTLS, again
    implicit: Callable[[_Audit], Awaitable[None]]  # the same inside implicit TLS
    probe: Callable[[_Audit], Awaitable[None]]  # AUTH-05
    #: AUTH-07 on a fresh connection (inside STARTTLS when the flag says so).
    ntlm: Callable[[_Audit, _Conn, bool], Awaitable[tuple[str | None, list[str]]]]
    #: ST-07 on a fresh connection (the TLS variant when the flag says so).
    inject: Callable[[_Audit, _Conn, bool], Awaitable[list[str] | None]]


_DIALOGS = {
    Protocol.IMAP: _Dialogs(_imap_main, _imap_implicit, _imap_probe, _ntlm_imap, _inject_imap),
    Protocol.POP3: _Dialogs(_pop3_main, _pop3_implicit, _pop3_probe, _ntlm_pop3, _inject_pop3),
    Protocol.SMTP: _Dialogs(_smtp_main, _smtp_implicit, _smtp_probe, _ntlm_smtp, _inject_smtp),
}
