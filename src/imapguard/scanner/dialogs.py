"""Sans-IO mail dialogs for the scanner: the server's responses parsed, the client's
commands built, for IMAP, POP3, SMTP and the ManageSieve greeting.

Rules:
- Bytes in, complete responses out. `feed()` takes whatever one read returned and
  `next()` hands out a response only once all of it has arrived, so a reply split
  over many reads and many replies in one read give the same responses. No decision
  is ever taken on a substring of one read (the counter-example is sslyze's
  `opportunistic_tls_helpers.py`, which looks for "OK" in a single `recv()`).
- Every buffer is bounded by a named limit. Going past one raises `ResponseTooLong`;
  bytes that are not the protocol raise `MalformedResponse`; both are a
  `DialogError` carrying the protocol, the reason and an excerpt. A parser that has
  raised stays broken: every later `feed()` raises the same error, while the
  responses completed before the error can still be taken with `next()`.
- A line ends with LF; a CR before it is dropped (servers send CRLF; a bare LF is
  tolerated, as the servers themselves tolerate it from clients).
- Client commands are `Command`s: the bytes for the wire and the line to show in
  evidence, built together so that a secret is masked where it is put on the wire.
  An argument containing CR, LF or NUL is refused (`ValueError`): the scanner must
  never be the one injecting commands. Tags come from a `TagSequence`, so the bytes
  of every dialog are deterministic and tests can spell them out.
- No sockets, no asyncio, no clock: `mail.py` does the reading, writing and waiting.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import enum
import re
import struct
from collections.abc import Iterable
from typing import Generic, TypeVar

from imapguard.imap.responses import MalformedResponse as ImapMalformed
from imapguard.imap.responses import (
    Response,
    ResponseKind,
    ResponseLimits,
    ResponseReader,
    canonical_capabilities,
    is_tag,
)
from imapguard.imap.responses import ResponseTooLong as ImapTooLong
from imapguard.scanner.model import Protocol
from imapguard.secret import Secret

__all__ = [
    "LEGACY_SASL",
    "MAX_LINE",
    "MAX_LITERAL",
    "MAX_RESPONSE_BYTES",
    "MAX_RESPONSE_LINES",
    "PLAINTEXT_SASL",
    "Command",
    "DialogError",
    "EhloInfo",
    "ImapKind",
    "ImapParser",
    "ImapResponse",
    "LineParser",
    "MalformedResponse",
    "NtlmChallenge",
    "Pop3Kind",
    "Pop3Parser",
    "Pop3Response",
    "ResponseParser",
    "ResponseTooLong",
    "SmtpParser",
    "SmtpReply",
    "TagSequence",
    "imap_authenticate",
    "imap_command",
    "imap_login",
    "imap_quote",
    "ntlm_negotiate",
    "parse_capa",
    "parse_ehlo",
    "parse_imap_capabilities",
    "parse_imap_id",
    "parse_ntlm_challenge",
    "parse_sieve_line",
    "pop3_command",
    "pop3_user",
    "printable",
    "sasl_line",
    "sasl_mechanisms",
    "sasl_plain_command",
    "smtp_auth_plain",
    "smtp_command",
    "sniff_greeting",
]

#: Longest response line accepted, CR included. The longest pre-auth lines in the
#: wild are CAPABILITY lists and EHLO replies of well under 1 KiB; 64 KiB is the
#: StreamReader limit `net.Network` uses, so one bound holds everywhere.
MAX_LINE = 64 * 1024
#: Largest IMAP literal accepted inside a response. Nothing is sent as a literal
#: before login except, possibly, a value in the ID response (RFC 2971 §3.3 limits
#: each value to 1024 octets); 64 KiB leaves room and still bounds memory.
MAX_LITERAL = 64 * 1024
#: Largest response as a whole (lines and literals of one IMAP response, all lines
#: of one multi-line POP3 or SMTP response).
MAX_RESPONSE_BYTES = 256 * 1024
#: Most lines in one multi-line POP3 or SMTP response (a CAPA or EHLO list has a
#: few dozen; a server that never ends its list must not keep us reading).
MAX_RESPONSE_LINES = 1000
#: Longest excerpt of a line kept in errors and evidence.
_EXCERPT = 200

#: SASL mechanisms that carry the password in clear (RFC 9051 §6.2.2 "plaintext
#: password mechanisms"; LOGIN is the draft-murchison-sasl-login mechanism).
PLAINTEXT_SASL = frozenset({"PLAIN", "LOGIN"})
#: SASL mechanisms that are only legacy challenge-response (RFC 6331 moved
#: DIGEST-MD5 to Historic; CRAM-MD5 is on the same path, draft-ietf-sasl-crammd5-to-historic).
LEGACY_SASL = frozenset({"CRAM-MD5", "DIGEST-MD5"})


# -- errors ------------------------------------------------------------------------


class DialogError(Exception):
    """The server's bytes are not a response we can accept."""

    def __init__(self, protocol: str, reason: str, excerpt: bytes = b"") -> None:
        self.protocol = protocol
        self.reason = reason
        self.excerpt = bytes(excerpt[:_EXCERPT])
        detail = f": {printable(self.excerpt)}" if self.excerpt else ""
        super().__init__(f"{protocol}: {reason}{detail}")


class ResponseTooLong(DialogError):
    """A line, literal or multi-line response went past its limit."""


class MalformedResponse(DialogError):
    """Bytes that are not a response of the protocol."""


def printable(data: bytes | str, limit: int = _EXCERPT) -> str:
    """`data` as one short, printable line for evidence (control bytes escaped)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# -- line splitting ----------------------------------------------------------------


class _Lines:
    """A byte buffer that gives out whole lines (and, for IMAP literals, n bytes)."""

    def __init__(self, protocol: str) -> None:
        self._protocol = protocol
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def take_line(self) -> bytes | None:
        """The next line without its line end, or None while it is incomplete."""
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > MAX_LINE:
                raise ResponseTooLong(
                    self._protocol, f"line longer than {MAX_LINE} bytes", bytes(self._buf)
                )
            return None
        if end > MAX_LINE:
            raise ResponseTooLong(
                self._protocol, f"line longer than {MAX_LINE} bytes", bytes(self._buf[:end])
            )
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def take_bytes(self, count: int) -> bytes | None:
        if len(self._buf) < count:
            return None
        data = bytes(self._buf[:count])
        del self._buf[:count]
        return data


_T = TypeVar("_T")


class ResponseParser(Generic[_T]):
    """Shared machinery of the parsers: a queue of complete responses and a sticky error."""

    protocol = "?"

    def __init__(self) -> None:
        self._lines = _Lines(self.protocol)
        self._out: collections.deque[_T] = collections.deque()
        self._error: DialogError | None = None

    def feed(self, data: bytes) -> None:
        """Add bytes from one read; raises `DialogError` on bytes we cannot accept."""
        if self._error is not None:
            raise self._error
        self._lines.feed(data)
        try:
            self._parse()
        except DialogError as exc:
            self._error = exc
            raise

    def next(self) -> _T | None:
        """The next complete response, or None until more bytes arrive."""
        return self._out.popleft() if self._out else None

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet part of a response handed out (queued
        responses count as one byte each: "something is waiting")."""
        return len(self._lines) + len(self._out) + self._partial_size()

    def _partial_size(self) -> int:
        return 0

    def _parse(self) -> None:
        raise NotImplementedError


class LineParser(ResponseParser[bytes]):
    """Plain lines (used for the ManageSieve greeting and for unknown banners)."""

    protocol = "line"

    def _parse(self) -> None:
        while (line := self._lines.take_line()) is not None:
            self._out.append(line)


# -- greeting sniffing -------------------------------------------------------------

_SMTP_LINE = re.compile(rb"([1-5][0-9][0-9])(?:([ -])(.*)|)\Z", re.DOTALL)


def sniff_greeting(line: bytes) -> Protocol | None:
    """Which protocol a first line of a greeting belongs to, or None for anything else.

    IMAP greets with `* OK`, `* PREAUTH` or `* BYE` (RFC 9051 §7.1), POP3 with
    `+OK` or `-ERR` (RFC 1939 §4), SMTP with a three-digit reply (220, or 421 / 554
    when it refuses, RFC 5321 §3.1), ManageSieve with its capability strings
    (`"IMPLEMENTATION" "..."`, RFC 5804 §1.7)."""
    upper = line.upper()
    if re.match(rb"\* (OK|PREAUTH|BYE)\b", upper):
        return Protocol.IMAP
    if upper.startswith((b"+OK", b"-ERR")):
        return Protocol.POP3
    if _SMTP_LINE.match(line) and line[:1] in b"245":
        return Protocol.SMTP
    if re.match(rb'"(IMPLEMENTATION|SIEVE|SASL|STARTTLS|VERSION)"', upper):
        return Protocol.SIEVE
    return None


def parse_sieve_line(line: bytes) -> tuple[str, str] | None:
    """A ManageSieve capability line `"NAME" "value"` as (NAME, value); None if the
    line is not one (e.g. the final `OK`)."""
    match = re.fullmatch(rb'"([^"]*)"(?: "((?:[^"\\]|\\.)*)")?\s*', line)
    if match is None:
        return None
    return _text(match.group(1)).upper(), _text(match.group(2) or b"")


# -- IMAP --------------------------------------------------------------------------


#: IMAP responses are read by `imapguard.imap.responses`, the parser the gateway's
#: upstream login shares; the scanner adds its limits, its errors and `shown()`.
ImapKind = ResponseKind
parse_imap_capabilities = canonical_capabilities


class ImapResponse(Response):
    """One IMAP response (see `imapguard.imap.responses.Response`), as evidence shows it."""

    __slots__ = ()

    def shown(self) -> str:
        return printable(self.line)


class ImapParser(ResponseParser[ImapResponse]):
    """IMAP server responses (RFC 9051 §7, literals included), read by
    `imapguard.imap.responses.ResponseReader` under this module's limits; its
    errors become this module's `ResponseTooLong` and `MalformedResponse`."""

    protocol = "imap"

    def __init__(self) -> None:
        super().__init__()
        limits = ResponseLimits(
            max_line=MAX_LINE, max_literal=MAX_LITERAL, max_response=MAX_RESPONSE_BYTES
        )
        self._reader = ResponseReader(ImapResponse, limits)

    def _partial_size(self) -> int:
        return self._reader.buffered

    def _parse(self) -> None:
        try:
            self._reader.feed(self._lines.take_bytes(len(self._lines)) or b"")
        except ImapTooLong as exc:
            raise ResponseTooLong(self.protocol, exc.reason, exc.excerpt) from None
        except ImapMalformed as exc:
            raise MalformedResponse(self.protocol, exc.reason, exc.excerpt) from None
        finally:
            while (response := self._reader.next()) is not None:
                self._out.append(response)


def parse_imap_id(data: str | bytes) -> dict[str, str | None] | None:
    """The field/value pairs of an ID response's data (`("name" "Dovecot" ...)` or
    `NIL`, RFC 2971 §3.2); None for NIL. Strings may be quoted or literals.
    Raises `MalformedResponse` for anything else."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    items = _imap_list(raw.strip(), 0)
    if items is None:
        return None
    if len(items) % 2:
        raise MalformedResponse("imap", "ID list with an odd number of items", raw)
    out: dict[str, str | None] = {}
    for key, value in zip(items[::2], items[1::2], strict=True):
        if key is None:
            raise MalformedResponse("imap", "ID field name is NIL", raw)
        out[key.lower()] = value
    return out


def _imap_list(raw: bytes, pos: int) -> list[str | None] | None:
    if raw[pos:].upper() == b"NIL":
        return None
    if raw[pos : pos + 1] != b"(":
        raise MalformedResponse("imap", "ID data is neither a list nor NIL", raw)
    pos += 1
    items: list[str | None] = []
    while True:
        while raw[pos : pos + 1] == b" ":
            pos += 1
        char = raw[pos : pos + 1]
        if char == b")":
            if raw[pos + 1 :].strip():
                raise MalformedResponse("imap", "data after the ID list", raw)
            return items
        if char == b"":
            raise MalformedResponse("imap", "unterminated ID list", raw)
        value, pos = _imap_nstring(raw, pos)
        items.append(value)


def _imap_nstring(raw: bytes, pos: int) -> tuple[str | None, int]:
    char = raw[pos : pos + 1]
    if char == b'"':
        out = bytearray()
        pos += 1
        while pos < len(raw):
            byte = raw[pos : pos + 1]
            if byte == b"\\" and pos + 1 < len(raw):
                out += raw[pos + 1 : pos + 2]
                pos += 2
                continue
            if byte == b'"':
                return _text(bytes(out)), pos + 1
            out += byte
            pos += 1
        raise MalformedResponse("imap", "unterminated quoted string", raw)
    if char == b"{":
        match = re.compile(rb"\{([0-9]{1,10})\}\r\n").match(raw, pos)
        if match is None:
            raise MalformedResponse("imap", "bad literal in ID data", raw)
        size = int(match.group(1))
        start = match.end()
        if start + size > len(raw):
            raise MalformedResponse("imap", "literal longer than the response", raw)
        return _text(raw[start : start + size]), start + size
    if raw[pos : pos + 3].upper() == b"NIL":
        return None, pos + 3
    raise MalformedResponse("imap", "ID item is not a string", raw)


# -- POP3 --------------------------------------------------------------------------


class Pop3Kind(enum.StrEnum):
    OK = "+OK"
    ERR = "-ERR"
    CONTINUATION = "+"  # a SASL challenge (RFC 5034 §4)


@dataclasses.dataclass(frozen=True, slots=True)
class Pop3Response:
    kind: Pop3Kind
    code: str  # RFC 2449 §8 response code ("AUTH", "SYS/TEMP", "IN-USE"), upper case, or ""
    text: str  # the rest of the status line
    lines: tuple[str, ...]  # a multi-line body, dot-unstuffed, without the final "."
    line: bytes  # the status line as received

    @property
    def ok(self) -> bool:
        return self.kind is Pop3Kind.OK

    def shown(self) -> str:
        return printable(self.line)


_POP3_CODE = re.compile(r"\[([A-Za-z0-9/\-]+)\]\s*")


class Pop3Parser(ResponseParser[Pop3Response]):
    """POP3 responses. A POP3 response does not say whether a body follows, so the
    client says what it expects with `expect(multiline)`, once per command sent, in
    order (RFC 1939 §3: CAPA, LIST, UIDL ... have bodies after +OK). A response
    with no expectation left (the greeting, or one nobody asked for) is read as a
    single line. -ERR and continuations are always single lines."""

    protocol = "pop3"

    def __init__(self) -> None:
        super().__init__()
        self._expect: collections.deque[bool] = collections.deque()
        self._status: bytes | None = None
        self._body: list[str] = []
        self._body_bytes = 0

    def expect(self, multiline: bool) -> None:
        self._expect.append(multiline)

    def _partial_size(self) -> int:
        return self._body_bytes + (len(self._status) if self._status is not None else 0)

    def _parse(self) -> None:
        while (line := self._lines.take_line()) is not None:
            if self._status is not None:
                self._body_line(line)
                continue
            response = self._status_line(line)
            multiline = self._expect.popleft() if self._expect else False
            if multiline and response.kind is Pop3Kind.OK:
                self._status = line
                continue
            self._out.append(response)

    def _body_line(self, line: bytes) -> None:
        if line == b".":
            status = self._status_line(self._status or b"")
            self._out.append(dataclasses.replace(status, lines=tuple(self._body)))
            self._status, self._body, self._body_bytes = None, [], 0
            return
        if len(self._body) >= MAX_RESPONSE_LINES:
            raise ResponseTooLong("pop3", f"more than {MAX_RESPONSE_LINES} lines", line)
        self._body_bytes += len(line) + 2
        if self._body_bytes > MAX_RESPONSE_BYTES:
            raise ResponseTooLong("pop3", f"response longer than {MAX_RESPONSE_BYTES} bytes", line)
        self._body.append(_text(line[1:] if line.startswith(b".") else line))

    @staticmethod
    def _status_line(line: bytes) -> Pop3Response:
        upper = line[:4].upper()
        if upper.startswith(b"+OK") and line[3:4] in (b"", b" "):
            kind, rest = Pop3Kind.OK, line[4:]
        elif upper == b"-ERR" and line[4:5] in (b"", b" "):
            kind, rest = Pop3Kind.ERR, line[5:]
        elif line == b"+" or line.startswith(b"+ "):
            return Pop3Response(Pop3Kind.CONTINUATION, "", _text(line[2:]), (), line)
        else:
            raise MalformedResponse("pop3", "not a POP3 response", line)
        text = _text(rest)
        code = ""
        match = _POP3_CODE.match(text)
        if match is not None:
            code, text = match.group(1).upper(), text[match.end() :]
        return Pop3Response(kind, code, text, (), line)


def parse_capa(lines: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """A CAPA body (RFC 2449 §5) as {TAG: arguments}; tags upper case, SASL
    mechanism names upper case, IMPLEMENTATION kept as sent."""
    out: dict[str, tuple[str, ...]] = {}
    for line in lines:
        words = line.split()
        if not words:
            continue
        tag = words[0].upper()
        args = tuple(w.upper() for w in words[1:]) if tag == "SASL" else tuple(words[1:])
        out[tag] = args
    return out


# -- SMTP --------------------------------------------------------------------------

_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |\Z)")


@dataclasses.dataclass(frozen=True, slots=True)
class SmtpReply:
    """One SMTP reply (RFC 5321 §4.2), all its lines."""

    code: int
    lines: tuple[str, ...]  # the text of each line, without the code and separator
    enhanced: str  # RFC 3463 enhanced status code of the first line ("5.7.0"), or ""
    raw: tuple[bytes, ...]  # each line as received

    @property
    def text(self) -> str:
        """The first line's text without its enhanced status code."""
        first = self.lines[0] if self.lines else ""
        return first[len(self.enhanced) :].lstrip() if self.enhanced else first

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    def shown(self) -> str:
        first = printable(self.raw[0]) if self.raw else str(self.code)
        more = len(self.raw) - 1
        return f"{first} (+{more} lines)" if more > 0 else first


class SmtpParser(ResponseParser[SmtpReply]):
    """SMTP replies: `NNN-text` lines continue a reply, `NNN text` (or a bare `NNN`)
    ends it; every line of one reply must carry the same code."""

    protocol = "smtp"

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def _partial_size(self) -> int:
        return self._pending_bytes

    def _parse(self) -> None:
        while (line := self._lines.take_line()) is not None:
            match = _SMTP_LINE.match(line)
            if match is None:
                raise MalformedResponse("smtp", "not an SMTP reply line", line)
            if self._pending and line[:3] != self._pending[0][:3]:
                raise MalformedResponse(
                    "smtp",
                    f"reply code changed within a reply ({_text(self._pending[0][:3])})",
                    line,
                )
            if len(self._pending) >= MAX_RESPONSE_LINES:
                raise ResponseTooLong("smtp", f"more than {MAX_RESPONSE_LINES} lines", line)
            self._pending_bytes += len(line) + 2
            if self._pending_bytes > MAX_RESPONSE_BYTES:
                raise ResponseTooLong("smtp", f"reply longer than {MAX_RESPONSE_BYTES} bytes", line)
            self._pending.append(line)
            if match.group(2) == b"-":
                continue
            self._out.append(_smtp_reply(self._pending))
            self._pending, self._pending_bytes = [], 0


def _smtp_reply(raw: list[bytes]) -> SmtpReply:
    code = int(raw[0][:3])
    lines = tuple(_text(line[4:]) for line in raw)
    enhanced = ""
    match = _ENHANCED.match(lines[0])
    if match is not None and match.group(1) == str(code)[0]:
        enhanced = ".".join(match.groups())
    return SmtpReply(code, lines, enhanced, tuple(raw))


@dataclasses.dataclass(frozen=True, slots=True)
class EhloInfo:
    """An EHLO reply (RFC 5321 §4.1.1.1): the server's name and its extensions."""

    domain: str  # the first word of the first line (the server's name for itself)
    greet: str  # the rest of the first line
    keywords: dict[str, tuple[str, ...]]  # EHLO keyword (upper case) -> parameters
    lines: tuple[str, ...]  # the extension lines as sent (keyword upper-cased)

    @property
    def auth(self) -> tuple[str, ...]:
        return self.keywords.get("AUTH", ())


def parse_ehlo(reply: SmtpReply) -> EhloInfo:
    """Keywords of a 250 EHLO reply. The old `AUTH=LOGIN PLAIN` spelling (sent for
    pre-RFC 2554 Outlook clients) is merged into AUTH; mechanism names are upper case."""
    first = reply.lines[0].split(None, 1) if reply.lines else []
    domain = first[0] if first else ""
    greet = first[1] if len(first) > 1 else ""
    keywords: dict[str, tuple[str, ...]] = {}
    shown: list[str] = []
    for line in reply.lines[1:]:
        words = line.split()
        if not words:
            continue
        keyword = words[0].upper()
        params = tuple(words[1:])
        if keyword.startswith("AUTH="):
            params = (keyword[5:], *params)
            keyword = "AUTH"
        if keyword == "AUTH":
            merged = dict.fromkeys((*keywords.get("AUTH", ()), *(p.upper() for p in params)))
            params = tuple(merged)
        keywords[keyword] = params
        shown.append(" ".join((words[0].upper(), *words[1:])))
    return EhloInfo(domain, greet, keywords, tuple(shown))


# -- SASL mechanisms across protocols ------------------------------------------------


def sasl_mechanisms(protocol: Protocol, capabilities: Iterable[str]) -> tuple[str, ...]:
    """The SASL mechanisms a capability list (as `mail.py` records it) offers:
    IMAP `AUTH=X` atoms, a POP3 `SASL X Y` line, an SMTP `AUTH X Y` line."""
    mechanisms: list[str] = []
    for entry in capabilities:
        words = entry.upper().split()
        if not words:
            continue
        if protocol is Protocol.IMAP and words[0].startswith("AUTH="):
            mechanisms.append(words[0][5:])
        elif (protocol is Protocol.POP3 and words[0] == "SASL") or (
            protocol is Protocol.SMTP and words[0] == "AUTH"
        ):
            mechanisms.extend(words[1:])
    return tuple(dict.fromkeys(mechanisms))


# -- client commands ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    """Bytes for the wire and the line shown in evidence (secrets masked)."""

    wire: bytes
    shown: str

    def __add__(self, other: Command) -> Command:
        """Two commands in one write (the STARTTLS injection tests)."""
        return Command(self.wire + other.wire, f"{self.shown} + {other.shown}")


def _clean(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"command argument with CR, LF or NUL: {value!r}")
    return value


def _plain(line: str) -> Command:
    line = _clean(line)
    return Command(line.encode("utf-8") + b"\r\n", line)


class TagSequence:
    """IMAP tags `<prefix>1`, `<prefix>2`, ... (deterministic, so tests can spell
    out the dialog)."""

    def __init__(self, prefix: str = "s") -> None:
        if not is_tag(prefix):
            raise ValueError(f"bad tag prefix {prefix!r}")
        self._prefix = prefix
        self._count = 0

    def next(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count}"


def imap_quote(value: str) -> str:
    """An IMAP quoted string (RFC 9051 §4.3)."""
    escaped = _clean(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def imap_command(tag: str, command: str) -> Command:
    """`<tag> <command>` (CAPABILITY, STARTTLS, NOOP, LOGOUT, `ID NIL` ...)."""
    return _plain(f"{tag} {command}")


def _secret_text(password: Secret) -> str:
    """The secret for the wire; refused (without echoing it) if it could break a line."""
    value = password.reveal().decode("utf-8")
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a password with CR, LF or NUL cannot be sent")
    return value


def imap_login(tag: str, user: str, password: Secret) -> Command:
    """LOGIN with quoted strings; the password is masked in `shown`."""
    quoted = _secret_text(password).replace("\\", "\\\\").replace('"', '\\"')
    wire = f'{_clean(tag)} LOGIN {imap_quote(user)} "{quoted}"\r\n'.encode()
    return Command(wire, f"{tag} LOGIN {user} ***")


def imap_authenticate(tag: str, mechanism: str) -> Command:
    return _plain(f"{tag} AUTHENTICATE {mechanism}")


def pop3_command(command: str) -> Command:
    """A POP3 command line (CAPA, STLS, NOOP, QUIT, `AUTH NTLM` ...)."""
    return _plain(command)


def pop3_user(user: str) -> Command:
    return _plain(f"USER {user}")


def smtp_command(command: str) -> Command:
    """An SMTP command line (`EHLO name`, STARTTLS, `MAIL FROM:<>`, RSET, QUIT ...)."""
    return _plain(command)


def _plain_response(user: str, password: Secret) -> str:
    secret = _secret_text(password).encode("utf-8")
    token = b"\0" + _clean(user).encode("utf-8") + b"\0" + secret
    return base64.b64encode(token).decode("ascii")


def smtp_auth_plain(user: str, password: Secret) -> Command:
    """`AUTH PLAIN <initial response>` (RFC 4954 §4); the response is masked."""
    wire = f"AUTH PLAIN {_plain_response(user, password)}\r\n".encode("ascii")
    return Command(wire, f"AUTH PLAIN *** (user {user})")


def sasl_plain_command(user: str, password: Secret) -> Command:
    """A bare SASL PLAIN response line (after a `+`/`334` continuation), masked."""
    wire = f"{_plain_response(user, password)}\r\n".encode("ascii")
    return Command(wire, f"*** (PLAIN response for {user})")


def sasl_line(data: bytes, shown: str) -> Command:
    """A base64 SASL response line."""
    return Command(base64.b64encode(data) + b"\r\n", shown)


# -- NTLM (MS-NLMP) ------------------------------------------------------------------

#: Negotiate flags asked for (MS-NLMP §2.2.2.5): UNICODE, OEM, REQUEST_TARGET, NTLM,
#: ALWAYS_SIGN, EXTENDED_SESSIONSECURITY, TARGET_INFO, VERSION, 128, 56.
_NTLM_FLAGS = 0x00000001 | 0x00000002 | 0x00000004 | 0x00000200
_NTLM_FLAGS |= 0x00008000 | 0x00080000 | 0x00800000 | 0x02000000 | 0x20000000 | 0x80000000
_NTLM_SIGNATURE = b"NTLMSSP\0"
_NTLM_VERSION_FLAG = 0x02000000
#: AV_PAIR ids (MS-NLMP §2.2.2.1) whose values are names.
_AV_NAMES = {
    1: "NetBIOS computer",
    2: "NetBIOS domain",
    3: "DNS computer",
    4: "DNS domain",
    5: "DNS forest",
}


def ntlm_negotiate() -> bytes:
    """An NTLM NEGOTIATE_MESSAGE with no domain or workstation (MS-NLMP §2.2.1.1):
    it names nothing about us and asks the server for its target information."""
    empty = struct.pack("<HHI", 0, 0, 40)
    version = bytes(8)  # our version is nobody's business
    return _NTLM_SIGNATURE + struct.pack("<II", 1, _NTLM_FLAGS) + empty + empty + version


@dataclasses.dataclass(frozen=True, slots=True)
class NtlmChallenge:
    """What an NTLM CHALLENGE_MESSAGE (MS-NLMP §2.2.1.2) tells about the server."""

    target: str  # TargetName
    names: tuple[tuple[str, str], ...]  # (label, value) from TargetInfo
    os_version: str  # "10.0 build 17763", or ""

    def disclosed(self) -> tuple[str, ...]:
        out = [f"target {self.target}"] if self.target else []
        out += [f"{label} {value}" for label, value in self.names]
        if self.os_version:
            out.append(f"OS version {self.os_version}")
        return tuple(out)


def parse_ntlm_challenge(data: str | bytes) -> NtlmChallenge:
    """Decode a base64 (str) or binary CHALLENGE_MESSAGE; `MalformedResponse` if
    it is not one."""
    if isinstance(data, str):
        try:
            blob = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedResponse("ntlm", "challenge is not base64", data.encode()) from exc
    else:
        blob = data
    if len(blob) < 48 or not blob.startswith(_NTLM_SIGNATURE):
        raise MalformedResponse("ntlm", "not an NTLM message", blob)
    (kind,) = struct.unpack_from("<I", blob, 8)
    if kind != 2:
        raise MalformedResponse("ntlm", f"NTLM message type {kind}, not a challenge", blob)
    (flags,) = struct.unpack_from("<I", blob, 20)
    unicode = bool(flags & 1)
    target = _ntlm_string(_ntlm_field(blob, 12), unicode)
    names: list[tuple[str, str]] = []
    info = _ntlm_field(blob, 40)
    pos = 0
    while pos + 4 <= len(info):
        av_id, av_len = struct.unpack_from("<HH", info, pos)
        pos += 4
        if av_id == 0:
            break
        if pos + av_len > len(info):
            raise MalformedResponse("ntlm", "truncated target information", blob)
        if av_id in _AV_NAMES:
            value = info[pos : pos + av_len].decode("utf-16-le", "replace")
            if value:
                names.append((_AV_NAMES[av_id], printable(value)))
        pos += av_len
    os_version = ""
    if flags & _NTLM_VERSION_FLAG and len(blob) >= 56:
        major, minor, build = struct.unpack_from("<BBH", blob, 48)
        if major or minor or build:
            os_version = f"{major}.{minor} build {build}"
    return NtlmChallenge(printable(target), tuple(names), os_version)


def _ntlm_field(blob: bytes, offset: int) -> bytes:
    length, _, start = struct.unpack_from("<HHI", blob, offset)
    if length == 0:
        return b""
    if start + length > len(blob):
        raise MalformedResponse("ntlm", "field points past the message", blob)
    return blob[start : start + length]


def _ntlm_string(data: bytes, unicode: bool) -> str:
    return data.decode("utf-16-le" if unicode else "latin-1", "replace")
