"""Read an IMAP server's responses: bytes in, parsed responses out (sans-IO).

This is the client side of IMAP, for wherever imapguard talks to a server: the
scanner reading whatever a server says, and the gateway logging in upstream.

Theory of operation:

* A response is a line ended by LF (an optional CR before it is dropped; servers
  send CRLF, a bare LF is tolerated). When a line ends with a literal marker
  `{n}`, exactly n bytes of literal data follow and then the response goes on
  (RFC 9051 §4.3). Literal bytes are never searched for line ends, so a literal
  can never be read as a response. A continuation request (`+ ...`) carries no
  literal: its text is base64 or human text, whatever it ends with.
* The grammar of RFC 9051 §7, as far as a client acts on it: a continuation
  `+ text`; a status response `* OK|NO|BAD|PREAUTH|BYE [CODE args] text`; untagged
  data `* NAME data` or `* n NAME`; a tagged status `tag OK|NO|BAD [CODE args]
  text`. Anything else is a `ResponseSyntaxError`.
* Every limit is named in `ResponseLimits` and enforced while the bytes arrive:
  an over-long line, literal or response raises `ResponseLimitExceeded` before more of
  it is kept. Both errors are a `ResponseError` with the reason and an excerpt.
* A reader that has raised stays broken: every later `feed()` raises the same
  error, while the responses completed before it can still be taken with `next()`.
* The responses and the error are the same whatever way the bytes were split
  into reads. `take_unparsed()` hands over the bytes received after the last
  complete response (after a login, they belong to whoever relays the session;
  before a TLS handshake, they are an injection).

The reader is sans-IO: `feed()` bytes in, `next()` responses out.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import re
from typing import Generic, TypeVar

__all__ = [
    "Response",
    "ResponseError",
    "ResponseKind",
    "ResponseLimitExceeded",
    "ResponseLimits",
    "ResponseReader",
    "ResponseSyntaxError",
    "canonical_capabilities",
    "is_tag",
]


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseLimits:
    """The bounds of one reader. The defaults fit any server before login and
    during it: the longest lines are CAPABILITY lists of well under 1 KiB, and
    the only literal a server sends then is a value in an ID response, which
    RFC 2971 §3.3 limits to 1024 octets."""

    #: Longest line, CR included (64 KiB is asyncio's StreamReader limit).
    max_line: int = 64 * 1024
    #: Largest literal inside a response.
    max_literal: int = 64 * 1024
    #: Largest response as a whole: its lines and literals together.
    max_response: int = 256 * 1024


class ResponseKind(enum.StrEnum):
    UNTAGGED = "untagged"  # "* ..."
    TAGGED = "tagged"  # "<tag> OK|NO|BAD ..."
    CONTINUATION = "continuation"  # "+ ..."


class ResponseError(Exception):
    """The server's bytes are not a response we accept."""

    def __init__(self, reason: str, excerpt: bytes = b"") -> None:
        self.reason = reason
        self.excerpt = bytes(excerpt)
        super().__init__(reason)


class ResponseLimitExceeded(ResponseError):
    """A line, a literal or a whole response went past its limit."""


class ResponseSyntaxError(ResponseError):
    """Bytes that are not an IMAP response."""


#: Status words of an untagged status response and of a tagged one (RFC 9051 §7.1).
_STATUS = frozenset({"OK", "NO", "BAD", "PREAUTH", "BYE"})
_TAGGED_STATUS = frozenset({"OK", "NO", "BAD"})
_LITERAL_END = re.compile(rb"\{([0-9]{1,10})\}\Z")
#: tag = 1*<any ASTRING-CHAR except "+"> (RFC 9051 §9): printable ASCII without
#: atom-specials ( ) { SP % * " \ and without "+".
_TAG = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){%*"\\+]+')


def is_tag(text: str) -> bool:
    """Whether `text` may be an IMAP tag (RFC 9051 §9)."""
    return _TAG.fullmatch(text) is not None


def canonical_capabilities(text: str) -> tuple[str, ...]:
    """Capability names, upper case (they are case-insensitive, RFC 9051 §7.2.2),
    in the order sent, without repeats."""
    seen: dict[str, None] = {}
    for atom in text.split():
        seen.setdefault(atom.upper(), None)
    return tuple(seen)


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """One IMAP response (RFC 9051 §7): literals included, the final CRLF stripped."""

    kind: ResponseKind
    tag: str  # "*", "+" or the command's tag
    status: str  # OK / NO / BAD / PREAUTH / BYE, or "" for data and continuations
    name: str  # untagged data name (CAPABILITY, ID, EXISTS ...), else ""
    code: str  # response code atom, upper case (PRIVACYREQUIRED ...), else ""
    code_text: str  # what follows the code atom inside the brackets
    text: str  # the human text, or the data of an untagged data response
    line: bytes  # the whole response as received (a CRLF before each literal)

    def capability_atoms(self) -> tuple[str, ...] | None:
        """The capabilities this response lists as the server spelled them
        (`* CAPABILITY ...` or a `[CAPABILITY ...]` response code); None if none."""
        if self.kind is ResponseKind.UNTAGGED and self.name == "CAPABILITY":
            return tuple(self.text.split())
        if self.code == "CAPABILITY":
            return tuple(self.code_text.split())
        return None

    def capabilities(self) -> tuple[str, ...] | None:
        """The capabilities this response lists, upper case and without repeats
        (`canonical_capabilities`); None if it lists none."""
        atoms = self.capability_atoms()
        return None if atoms is None else canonical_capabilities(" ".join(atoms))


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _split_code(rest: bytes) -> tuple[str, str, str]:
    """(code atom, code text, human text) of `[CODE text] human text`."""
    if not rest.startswith(b"["):
        return "", "", _text(rest)
    end = rest.find(b"]")
    if end < 0:  # an unterminated code: keep it all as text rather than guess
        return "", "", _text(rest)
    atom, _, code_text = rest[1:end].partition(b" ")
    return _text(atom).upper(), _text(code_text), _text(rest[end + 1 :].lstrip(b" "))


_R = TypeVar("_R", bound=Response)


def _parse(line: bytes, make: type[_R]) -> _R:
    """One complete response (its literals inside `line`)."""
    head, _, rest = line.partition(b" ")
    if head == b"+":  # "+ text" or a bare "+"
        return make(ResponseKind.CONTINUATION, "+", "", "", "", "", _text(rest), line)
    tag = _text(head)
    word, _, after = rest.partition(b" ")
    upper = _text(word).upper()
    if head == b"*":
        if upper in _STATUS:
            code, code_text, text = _split_code(after)
            return make(ResponseKind.UNTAGGED, "*", upper, "", code, code_text, text, line)
        if upper.isdigit():  # "* 3 EXISTS": the number is data, the name follows
            name = after.partition(b" ")[0]
            return make(ResponseKind.UNTAGGED, "*", "", _text(name).upper(), "", "", upper, line)
        if not upper:
            raise ResponseSyntaxError("untagged response without content", line)
        return make(ResponseKind.UNTAGGED, "*", "", upper, "", "", _text(after), line)
    if not _TAG.fullmatch(tag) or upper not in _TAGGED_STATUS:
        raise ResponseSyntaxError("not an IMAP response", line)
    code, code_text, text = _split_code(after)
    return make(ResponseKind.TAGGED, tag, upper, "", code, code_text, text, line)


class ResponseReader(Generic[_R]):
    """Complete IMAP responses from a byte stream; `make` is the response class
    (`Response`, or a subclass that adds how its user shows one)."""

    def __init__(self, make: type[_R], limits: ResponseLimits | None = None) -> None:
        self._make = make
        self._limits = limits or ResponseLimits()
        self._buf = bytearray()
        self._partial = bytearray()  # the lines and literals of the response under way
        self._literal: int | None = None  # bytes of literal still to come
        self._out: collections.deque[_R] = collections.deque()
        # The bytes as received: of each response in `_out`, and of the one under way.
        self._out_raw: collections.deque[bytes] = collections.deque()
        self._raw = bytearray()
        self.completed = 0  # responses read whole so far (taken or not)
        self._error: ResponseError | None = None

    def feed(self, data: bytes) -> None:
        """Add the bytes of one read; raises `ResponseError` on bytes we do not accept."""
        if self._error is not None:
            raise self._error
        self._buf += data
        try:
            self._parse()
        except ResponseError as exc:
            self._error = exc
            raise

    def next(self) -> _R | None:
        """The next complete response, or None until more bytes arrive."""
        if not self._out:
            return None
        self._out_raw.popleft()
        return self._out.popleft()

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet part of a complete response."""
        return len(self._buf) + len(self._partial)

    def take_unparsed(self) -> bytes:
        """The bytes after the last complete response (a response under way
        included), which the reader forgets."""
        data = bytes(self._partial) + bytes(self._buf)
        self._partial.clear()
        self._raw.clear()
        self._buf.clear()
        self._literal = None
        return data

    def take_rest(self) -> bytes:
        """Every byte received that `next()` has not handed out, as received (the
        complete responses not yet taken included), which the reader forgets:
        after a login they belong to whoever relays the session, and after a
        STARTTLS answer any of them is an injection."""
        data = b"".join(self._out_raw) + bytes(self._raw) + bytes(self._buf)
        self._out.clear()
        self._out_raw.clear()
        self._partial.clear()
        self._raw.clear()
        self._buf.clear()
        self._literal = None
        return data

    def _take_line(self) -> bytes | None:
        """The next line without its line end, or None while it is incomplete."""
        max_line = self._limits.max_line
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > max_line:
                raise ResponseLimitExceeded(f"line longer than {max_line} bytes", bytes(self._buf))
            return None
        if end > max_line:
            raise ResponseLimitExceeded(
                f"line longer than {max_line} bytes", bytes(self._buf[:end])
            )
        line = bytes(self._buf[:end])
        self._raw += self._buf[: end + 1]
        del self._buf[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def _parse(self) -> None:
        max_response = self._limits.max_response
        while True:
            if self._literal is not None:
                if len(self._buf) < self._literal:
                    return
                self._partial += self._buf[: self._literal]
                self._raw += self._buf[: self._literal]
                del self._buf[: self._literal]
                self._literal = None
                continue
            line = self._take_line()
            if line is None:
                return
            self._partial += line
            if len(self._partial) > max_response:
                raise ResponseLimitExceeded(f"response longer than {max_response} bytes", line)
            marker = _LITERAL_END.search(line)
            if marker is not None and not line.startswith(b"+"):
                size = int(marker.group(1))
                if size > self._limits.max_literal:
                    raise ResponseLimitExceeded(f"literal of {size} bytes", line)
                if len(self._partial) + size > max_response:
                    raise ResponseLimitExceeded(f"response longer than {max_response} bytes", line)
                self._partial += b"\r\n"
                self._literal = size
                continue
            whole = bytes(self._partial)
            self._partial.clear()
            self._out.append(_parse(whole, self._make))
            self._out_raw.append(bytes(self._raw))
            self._raw.clear()
            self.completed += 1
