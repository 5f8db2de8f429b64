"""Sans-IO mail dialogs for the scanner: the server's responses parsed for IMAP,
POP3, SMTP and the ManageSieve greeting.

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
- IMAP responses are read by `imapguard.imap.responses`, which the gateway shares.
- No sockets, no asyncio, no clock: `scanner/mail/` does the reading, writing and
  waiting. The client's commands are built in `commands.py`, NTLM in `ntlm.py`;
  this module re-exports them, so a dialog needs only `dialogs`.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import re
from typing import Generic, TypeVar

from imapguard.imap.responses import (
    Response,
    ResponseKind,
    ResponseLimits,
    ResponseReader,
    canonical_capabilities,
)
from imapguard.imap.responses import ResponseLimitExceeded as ImapTooLong
from imapguard.imap.responses import ResponseSyntaxError as ImapMalformed
from imapguard.scanner.commands import (
    Command,
    TagSequence,
    imap_authenticate,
    imap_command,
    imap_login,
    imap_quote,
    pop3_command,
    pop3_user,
    sasl_line,
    sasl_plain_command,
    smtp_auth_plain,
    smtp_command,
)
from imapguard.scanner.dialog_errors import (
    DialogError,
    MalformedResponse,
    ResponseTooLong,
    printable,
)
from imapguard.scanner.model import Protocol
from imapguard.scanner.ntlm import NtlmChallenge, ntlm_negotiate, parse_ntlm_challenge
from imapguard.scanner.sasl import LEGACY_SASL, PLAINTEXT_SASL, sasl_mechanisms

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
