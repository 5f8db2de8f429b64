"""The errors of the scanner's dialogs (a server's bytes we cannot accept), and
`printable`, how evidence and errors show bytes a server chose: one short line,
characters that are not safe to show escaped (`imapguard.text.escape`) so the
reader sees exactly what was sent."""

from __future__ import annotations

from imapguard.text import escape

__all__ = ["DialogError", "MalformedResponse", "ResponseTooLong", "printable"]

#: Longest excerpt of a line kept in errors and evidence.
_EXCERPT = 200


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
    return escape(text, limit=limit)
