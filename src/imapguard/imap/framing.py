"""Split a client's byte stream into IMAP commands before any grammar is applied.

Theory of operation (after imap-codec's fragmentizer and Stalwart's receiver):

* A command is a line ended by LF (an optional CR before it is dropped; real
  clients send CRLF, bare LF is tolerated like Dovecot does).
* When a line ends with a literal marker `{n}` (synchronizing) or `{n+}`
  (non-synchronizing, RFC 7888), exactly n bytes of literal data follow, and
  then the command line continues. Literal bytes are never searched for line
  ends, so they can never be read as a command.
* A synchronizing literal needs the server's `+` continuation first; the framer
  says so with `ContinuationRequest`, every time, whether or not the client has
  already (illegally) sent the data. That keeps the event sequence identical
  whatever way the bytes were split into reads. The consumer may instead refuse
  the literal (`refuse_literal()`, e.g. a LOGIN in clear): the command is then
  forgotten, as a client waits for `+` before it sends the literal.

Every limit is named in `FrameLimits`. A limit is enforced while the bytes
arrive: an over-long line or an oversize literal is counted and discarded, never
buffered, and then answered with one `FrameError` that keeps the tag so the
machine can answer a tagged BAD. Non-synchronizing literals of a refused
command adding up to more than `max_discard` bytes are fatal (the client would
make us read them all), and so is a literal marker with more digits than any
sane size. A raw line (a SASL response) has no literals: an over-long one is
discarded up to its line end, whatever it ends with.

The framer is sans-IO: `feed()` bytes in, `next_event()` events out.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = [
    "NEED_DATA",
    "ContinuationRequest",
    "Frame",
    "FrameError",
    "FrameErrorKind",
    "FrameLimits",
    "Framer",
    "NeedData",
    "RawLine",
    "extract_tag",
]


@dataclass(frozen=True)
class FrameLimits:
    # Dovecot's imap-login refuses pre-auth lines over 8 KiB; LOGIN lines are tiny,
    # and a SASL response for PLAIN is under 1 KiB.
    max_line: int = 8192
    # A pre-auth literal only ever carries a user name or a password.
    max_literal: int = 8192
    # All lines and literals of one command together.
    max_command: int = 16384
    # The non-synchronizing literals of a refused command are read and thrown
    # away only up to this many bytes in all; more ends the connection (the
    # client would make us read gigabytes, one chained literal after the other,
    # before we could answer).
    max_discard: int = 65536
    # Stalwart limits literal size digits to 15: 10^15 bytes is no email.
    max_literal_digits: int = 15
    # Stalwart uses 128; every real client uses a handful of characters.
    max_tag: int = 64


@dataclass(frozen=True)
class Frame:
    """One complete command: len(lines) == len(literals) + 1.

    Every line but the last ends with the literal marker that announced the
    literal of the same index.
    """

    lines: tuple[bytes, ...]
    literals: tuple[bytes, ...]


@dataclass(frozen=True)
class RawLine:
    """A line read in raw mode (a SASL response): no literal processing."""

    data: bytes


@dataclass(frozen=True)
class ContinuationRequest:
    """The client announced a synchronizing literal and waits for `+`.

    `first_line` is the command's first line, so that the consumer can decide
    from the command name whether to send `+` or `refuse_literal()`."""

    size: int
    first_line: bytes = b""


class FrameErrorKind(enum.Enum):
    LINE_TOO_LONG = "line too long"
    LITERAL_TOO_LARGE = "literal too large"
    COMMAND_TOO_LARGE = "command too large"


@dataclass(frozen=True)
class FrameError:
    kind: FrameErrorKind
    tag: bytes | None
    # Fatal errors leave the stream out of sync: the connection must end.
    fatal: bool = False


class NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()

FrameEvent = Frame | RawLine | ContinuationRequest | FrameError | NeedData

# A literal marker at the very end of a line. The digit run is matched without a
# bound so that an over-long size is recognised (and refused) as one.
_LITERAL_MARKER = re.compile(rb"\{([0-9]+)(\+?)\}\Z")
# In a discarded line only the tail is kept, so the brace may have been cut off.
_DISCARD_MARKER = re.compile(rb"\{?([0-9]+)(\+?)\}\Z")
_TAG_CHARS = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+")


def extract_tag(line: bytes | bytearray, max_tag: int) -> bytes | None:
    """The tag at the start of `line`, if it is a valid IMAP tag (RFC 9051 `tag`)."""
    # Only the head is looked at: `line` may be a megabyte-long discarded buffer.
    head = bytes(line[: max_tag + 2])
    end = head.find(b" ")
    if end < 0 and len(line) > len(head):
        return None
    candidate = head[: end if end >= 0 else len(head)].rstrip(b"\r")
    if 0 < len(candidate) <= max_tag and _TAG_CHARS.fullmatch(candidate):
        return candidate
    return None


class _State(enum.Enum):
    LINE = "line"
    LITERAL = "literal"
    DISCARD_LITERAL = "discard literal"
    DISCARD_LINE = "discard line"


class Framer:
    def __init__(self, limits: FrameLimits | None = None) -> None:
        self.limits = limits or FrameLimits()
        self._buf = bytearray()
        self._state = _State.LINE
        self._lines: list[bytes] = []
        self._literals: list[bytes] = []
        self._size = 0
        self._remaining = 0
        # Literal bytes of the current (refused) command thrown away so far.
        self._discarded = 0
        self._pending: FrameError | None = None
        # The line being discarded is a raw line (no literal marker to honour).
        self._discard_raw = False
        # Bytes of the line being discarded were dropped before its tail.
        self._discard_cut = False
        self._dead = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if not self._dead:
            self._buf += data

    def discard_buffered(self) -> int:
        """Drop every byte received so far (STARTTLS: nothing sent in clear before the
        handshake may be read after it). Returns how many bytes were dropped."""
        dropped = len(self._buf)
        self._buf.clear()
        self._reset_command()
        self._state = _State.LINE
        return dropped

    def refuse_literal(self) -> None:
        """Answer the `ContinuationRequest` just returned with a refusal instead of
        `+`: the command is forgotten and the next byte starts a new command."""
        if self._state is not _State.LITERAL or self._dead:
            raise RuntimeError("refuse_literal() without a pending synchronizing literal")
        self._reset_command()
        self._state = _State.LINE

    def take_buffered(self) -> bytes:
        """Hand over the raw bytes not yet framed (pipelined after a login command)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def next_event(self, *, raw_line: bool = False) -> FrameEvent:
        if self._dead:
            return NEED_DATA
        while True:
            if self._state is _State.LINE:
                event = self._read_line(raw_line)
            elif self._state is _State.LITERAL:
                event = self._read_literal()
            elif self._state is _State.DISCARD_LITERAL:
                event = self._discard_literal()
            else:
                event = self._discard_line()
            if event is not None:
                return event

    # -- states ---------------------------------------------------------------

    def _read_line(self, raw_line: bool) -> FrameEvent | None:
        limits = self.limits
        nl = self._buf.find(b"\n")
        raw = raw_line and not self._lines
        if nl < 0:
            if len(self._buf) > limits.max_line:
                return self._start_discard_line(FrameErrorKind.LINE_TOO_LONG, raw)
            return NEED_DATA
        if nl > limits.max_line:
            return self._start_discard_line(FrameErrorKind.LINE_TOO_LONG, raw)
        line = bytes(self._buf[:nl])
        del self._buf[: nl + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if raw:
            return RawLine(line)
        self._size += len(line)
        marker = _LITERAL_MARKER.search(line)
        if self._size > limits.max_command:
            return self._refuse(FrameErrorKind.COMMAND_TOO_LARGE, line, marker)
        if marker is None:
            self._lines.append(line)
            frame = Frame(tuple(self._lines), tuple(self._literals))
            self._reset_command()
            return frame
        digits = marker.group(1)
        too_many_digits = len(digits) > limits.max_literal_digits
        size = 0 if too_many_digits else int(digits)
        if too_many_digits or size > limits.max_literal:
            return self._refuse(FrameErrorKind.LITERAL_TOO_LARGE, line, marker)
        if self._size + size > limits.max_command:
            return self._refuse(FrameErrorKind.COMMAND_TOO_LARGE, line, marker)
        self._lines.append(line)
        self._remaining = size
        self._state = _State.LITERAL
        if not marker.group(2):
            return ContinuationRequest(size, self._lines[0])
        return None

    def _read_literal(self) -> FrameEvent | None:
        if len(self._buf) < self._remaining:
            return NEED_DATA
        self._literals.append(bytes(self._buf[: self._remaining]))
        del self._buf[: self._remaining]
        self._size += self._remaining
        self._state = _State.LINE
        return None

    def _discard_literal(self) -> FrameEvent | None:
        take = min(len(self._buf), self._remaining)
        del self._buf[:take]
        self._remaining -= take
        if self._remaining:
            return NEED_DATA
        self._state = _State.DISCARD_LINE
        return None

    def _discard_line(self) -> FrameEvent | None:
        # Only the tail of a discarded line is kept and looked at, whether it
        # arrived in one read or byte by byte: enough for a literal marker.
        keep = self.limits.max_literal_digits + 4
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > keep:
                del self._buf[: len(self._buf) - keep]
                self._discard_cut = True
            return NEED_DATA
        cut = self._discard_cut or nl > keep
        tail = bytes(self._buf[max(0, nl - keep) : nl])
        del self._buf[: nl + 1]
        self._discard_cut = False
        tail = tail.rstrip(b"\r")
        marker = None if self._discard_raw else _DISCARD_MARKER.search(tail)
        # Digits without a brace are a marker only if the brace was cut off, and
        # then the marker has more digits than any literal may have.
        if marker is not None and marker.group(0)[:1] != b"{" and (marker.start() > 0 or not cut):
            marker = None
        if marker is not None and marker.group(2):
            if marker.group(0)[:1] != b"{":
                return self._fatal(FrameErrorKind.LITERAL_TOO_LARGE, b"", self._pending)
            return self._start_discard_literal(marker.group(1), b"")
        error = self._pending or FrameError(FrameErrorKind.LINE_TOO_LONG, None)
        self._reset_command()
        self._state = _State.LINE
        return error

    # -- helpers --------------------------------------------------------------

    def _tag_for(self, line: bytes | bytearray) -> bytes | None:
        first = self._lines[0] if self._lines else line
        return extract_tag(first, self.limits.max_tag)

    def _start_discard_line(self, kind: FrameErrorKind, raw: bool) -> FrameEvent | None:
        # A raw line is no command: what looks like a tag in it is not one. Only
        # the bytes that made the line too long are looked at, whatever the read
        # brought after them, so that the tag does not depend on the reads.
        head = self._buf[: self.limits.max_line + 1]
        self._pending = FrameError(kind, None if raw else self._tag_for(head))
        self._discard_raw = raw
        self._discard_cut = False
        self._state = _State.DISCARD_LINE
        return None

    def _start_discard_literal(self, digits: bytes, line: bytes) -> FrameEvent | None:
        """Throw away the non-synchronizing literal announced by `digits`, unless
        the refused command's literals then add up to more than `max_discard`."""
        limits = self.limits
        if len(digits) > limits.max_literal_digits:
            return self._fatal(FrameErrorKind.LITERAL_TOO_LARGE, line, self._pending)
        size = int(digits)
        if self._discarded + size > limits.max_discard:
            return self._fatal(FrameErrorKind.LITERAL_TOO_LARGE, line, self._pending)
        self._discarded += size
        self._remaining = size
        self._state = _State.DISCARD_LITERAL
        return None

    def _refuse(
        self, kind: FrameErrorKind, line: bytes, marker: re.Match[bytes] | None
    ) -> FrameEvent | None:
        """Refuse the current command because of `line` (already taken off the buffer)."""
        if marker is None or not marker.group(2):
            # No literal follows, or a synchronizing one that the client will not
            # send without our "+": answer now.
            return self._finish_error(kind, line)
        self._pending = FrameError(kind, self._tag_for(line))
        return self._start_discard_literal(marker.group(1), line)

    def _finish_error(self, kind: FrameErrorKind, line: bytes) -> FrameError:
        error = FrameError(kind, self._tag_for(line))
        self._reset_command()
        self._state = _State.LINE
        return error

    def _fatal(
        self, kind: FrameErrorKind, line: bytes, pending: FrameError | None = None
    ) -> FrameError:
        tag = pending.tag if pending is not None else self._tag_for(line)
        self._dead = True
        self._buf.clear()
        self._reset_command()
        return FrameError(kind, tag, fatal=True)

    def _reset_command(self) -> None:
        self._lines = []
        self._literals = []
        self._size = 0
        self._remaining = 0
        self._discarded = 0
        self._pending = None
        self._discard_raw = False
        self._discard_cut = False
