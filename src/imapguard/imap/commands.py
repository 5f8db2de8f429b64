"""The grammar of the commands imapguard answers before authentication.

Input is a `Frame` (see framing.py): the lines and literals of one command.
Output is a typed command or a `ParseError` carrying the tag when there is one.
Only the pre-auth subset of RFC 9051/3501 is understood; any other command name
is `Unknown` (answered BAD by the state machine, never forwarded).

Grammar (RFC 9051 §9, RFC 2971 for ID, RFC 4959 for SASL-IR):

    command   = tag SP name [SP args]
    LOGIN     = "LOGIN" SP astring SP astring
    AUTH      = "AUTHENTICATE" SP atom [SP (base64 / "=")]
    ID        = "ID" SP ("(" string SP nstring *(SP string SP nstring) ")" / "NIL")
    astring   = atom-ish / quoted / literal

Strings are bytes here; the state machine decides what must be UTF-8.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imapguard.imap.framing import Frame, extract_tag
from imapguard.secret import Secret

__all__ = [
    "Authenticate",
    "Capability",
    "Command",
    "Id",
    "Login",
    "Logout",
    "Noop",
    "ParseError",
    "StartTls",
    "Unknown",
    "parse_command",
    "peek_name",
]

# RFC 2971 §3.3: at most 30 field/value pairs, fields at most 30 octets,
# values at most 1024 octets.
MAX_ID_PAIRS = 30
MAX_ID_FIELD = 30
MAX_ID_VALUE = 1024


@dataclass(frozen=True)
class Capability:
    tag: bytes


@dataclass(frozen=True)
class Noop:
    tag: bytes


@dataclass(frozen=True)
class Logout:
    tag: bytes


@dataclass(frozen=True)
class StartTls:
    tag: bytes


@dataclass(frozen=True)
class Id:
    tag: bytes
    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True)
class Login:
    tag: bytes
    username: bytes
    password: Secret


@dataclass(frozen=True)
class Authenticate:
    tag: bytes
    mechanism: str
    # The base64 text of a SASL-IR initial response; b"=" means empty.
    initial_response: Secret | None


@dataclass(frozen=True)
class Unknown:
    tag: bytes
    name: str


@dataclass(frozen=True)
class ParseError:
    tag: bytes | None
    text: str


Command = Capability | Noop | Logout | StartTls | Id | Login | Authenticate | Unknown

_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9\-]*")
# ATOM-CHAR plus "]" (ASTRING-CHAR): any CHAR except atom-specials.
_ASTRING_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+")
_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")
_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_LITERAL_MARKER = re.compile(rb"\{[0-9]+\+?\}\Z")
_NO_ARGS: dict[str, type[Capability | Noop | Logout | StartTls]] = {
    "CAPABILITY": Capability,
    "NOOP": Noop,
    "LOGOUT": Logout,
    "STARTTLS": StartTls,
}


class _Fail(Exception):
    def __init__(self, text: str) -> None:
        self.text = text


class _Cursor:
    """Walks the lines and literals of a frame. A literal is only reachable where
    its marker stands, so literal bytes are never tokenised."""

    def __init__(self, frame: Frame) -> None:
        self.lines = frame.lines
        self.literals = frame.literals
        self.index = 0
        self.pos = 0

    @property
    def line(self) -> bytes:
        return self.lines[self.index]

    def at_end(self) -> bool:
        return self.index == len(self.lines) - 1 and self.pos == len(self.line)

    def peek(self) -> int | None:
        return self.line[self.pos] if self.pos < len(self.line) else None

    def expect(self, byte: bytes) -> None:
        if self.line[self.pos : self.pos + 1] != byte:
            raise _Fail(f"expected {byte.decode()!r}")
        self.pos += 1

    def regex(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        match = pattern.match(self.line, self.pos)
        if match is None or match.end() == self.pos:
            raise _Fail(f"expected {what}")
        self.pos = match.end()
        return match.group(0)

    def literal(self) -> bytes | None:
        """The literal whose marker starts here, if one does."""
        rest = self.line[self.pos :]
        if not rest.startswith(b"{") or self.index >= len(self.literals):
            return None
        if _LITERAL_MARKER.fullmatch(rest) is None:
            raise _Fail("malformed literal")
        data = self.literals[self.index]
        self.index += 1
        self.pos = 0
        if b"\0" in data:
            raise _Fail("NUL in literal")
        return data

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        line = self.line
        while True:
            if self.pos >= len(line):
                raise _Fail("unterminated quoted string")
            c = line[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(line) or line[self.pos] not in (0x22, 0x5C):
                    raise _Fail("bad escape in quoted string")
                c = line[self.pos]
                self.pos += 1
            elif c in (0x00, 0x0D, 0x0A):
                raise _Fail("control character in quoted string")
            out.append(c)

    def string(self) -> bytes:
        if self.peek() == 0x22:
            return self.quoted()
        data = self.literal()
        if data is None:
            raise _Fail("expected a string")
        return data

    def astring(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            data = self.literal()
            if data is not None:
                return data
        return self.regex(_ASTRING_ATOM, "an astring")

    def nstring(self) -> bytes | None:
        if self.line[self.pos : self.pos + 3].upper() == b"NIL":
            self.pos += 3
            return None
        return self.string()


def peek_name(first: bytes, max_tag: int) -> tuple[bytes, str] | None:
    """Tag and upper-cased command name of a command's first line, without looking
    at the arguments."""
    tag = extract_tag(first, max_tag)
    if tag is None or first[len(tag) : len(tag) + 1] != b" ":
        return None
    match = _NAME.match(first, len(tag) + 1)
    if match is None:
        return None
    end = match.end()
    if end != len(first) and first[end] != 0x20:
        return None
    return tag, match.group(0).decode("ascii").upper()


def parse_command(frame: Frame, max_tag: int) -> Command | ParseError:
    tag = extract_tag(frame.lines[0], max_tag)
    head = peek_name(frame.lines[0], max_tag)
    if head is None:
        return ParseError(tag, "Invalid command syntax.")
    tag, name = head
    cursor = _Cursor(frame)
    cursor.pos = len(tag) + 1 + len(name)
    try:
        command = _parse_args(tag, name, cursor)
    except _Fail as fail:
        return ParseError(tag, f"Invalid arguments: {fail.text}.")
    if not isinstance(command, Unknown) and not cursor.at_end():
        return ParseError(tag, "Invalid arguments: unexpected data after the command.")
    return command


def _parse_args(tag: bytes, name: str, cursor: _Cursor) -> Command:
    if name in _NO_ARGS:
        return _NO_ARGS[name](tag)
    if name == "LOGIN":
        cursor.expect(b" ")
        username = cursor.astring()
        cursor.expect(b" ")
        password = Secret(cursor.astring())
        return Login(tag, username, password)
    if name == "AUTHENTICATE":
        cursor.expect(b" ")
        mechanism = cursor.regex(_ATOM, "a mechanism name").decode("ascii").upper()
        initial: Secret | None = None
        if cursor.peek() == 0x20:
            cursor.pos += 1
            if cursor.line[cursor.pos :] == b"=":
                cursor.pos += 1
                initial = Secret(b"=")
            else:
                initial = Secret(cursor.regex(_BASE64, "a base64 initial response"))
        return Authenticate(tag, mechanism, initial)
    if name == "ID":
        cursor.expect(b" ")
        return Id(tag, _id_params(cursor))
    return Unknown(tag, name)


def _id_params(cursor: _Cursor) -> tuple[tuple[str, str | None], ...] | None:
    if cursor.line[cursor.pos : cursor.pos + 3].upper() == b"NIL":
        cursor.pos += 3
        return None
    cursor.expect(b"(")
    params: list[tuple[str, str | None]] = []
    while cursor.peek() != 0x29:
        if params:
            cursor.expect(b" ")
        field = cursor.string()
        cursor.expect(b" ")
        value = cursor.nstring()
        if len(params) == MAX_ID_PAIRS:
            raise _Fail("too many ID fields")
        if len(field) > MAX_ID_FIELD or (value is not None and len(value) > MAX_ID_VALUE):
            raise _Fail("ID field or value too long")
        params.append((_text(field), None if value is None else _text(value)))
    cursor.expect(b")")
    return tuple(params)


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Fail("ID strings must be UTF-8") from exc
