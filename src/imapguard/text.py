"""Client text made safe to show: in a log line, a terminal, a mail.

Whatever a client chose (an account name, an IMAP ID, a reason quoted from an
upstream) may carry characters that forge a new log line or reorder what a
reader sees (the bidi overrides of "Trojan Source", CVE-2021-42574). Two ways
to show it, neither of which raises:

- `clean` replaces each such character with `?` and bounds the length: for the
  audit log and notification mails, where a reader wants a name, not bytes;
- `escape` writes each as `\\xNN` or `\\uNNNN`: for the scanner's evidence and
  reports, where the exact bytes a server sent are the finding.
"""

from __future__ import annotations

import unicodedata

__all__ = ["clean", "escape", "first_unsafe", "safe", "unsafe_kind"]

DEFAULT_LIMIT = 256


def safe(char: str) -> bool:
    """Whether `char` may be shown as it is: `str.isprintable`, which refuses the
    C0 and C1 controls, DEL, the format characters (the bidi overrides and
    isolates, zero-width characters, U+FEFF), the line and paragraph separators,
    spaces other than U+0020, and unassigned or private code points."""
    return char.isprintable()


def first_unsafe(text: str) -> str | None:
    """The first character of `text` that is not `safe`, or None."""
    if text.isprintable():
        return None
    return next(char for char in text if not char.isprintable())


def unsafe_kind(char: str) -> str:
    """ "control" or "format" (anything else not `safe`): how a refusal names it."""
    return "control" if unicodedata.category(char) == "Cc" else "format"


def clean(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """Each character that is not `safe` as "?", at most `limit` characters (then "...")."""
    if not text.isprintable():
        text = "".join(char if char.isprintable() else "?" for char in text)
    return text if len(text) <= limit else text[:limit] + "..."


def escape(text: str, *, limit: int | None = None, keep: str = "") -> str:
    """`text` with each character that is not `safe` (and not in `keep`) as an
    escape; at most `limit` characters (then "...")."""
    out = []
    for char in text:
        if char.isprintable() or char in keep:
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    escaped = "".join(out)
    if limit is None or len(escaped) <= limit:
        return escaped
    return escaped[: max(limit - 3, 0)] + "..."
