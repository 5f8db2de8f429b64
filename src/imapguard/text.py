"""Client text made safe to show: in a log line, a terminal, a mail.

Whatever a client chose (an account name, an IMAP ID, a reason quoted from an
upstream) may carry characters that forge a new log line or reorder what a
reader sees (the bidi overrides of "Trojan Source", CVE-2021-42574). `clean`
replaces each with `?` and bounds the length; it never raises.
"""

from __future__ import annotations

import re

__all__ = ["UNSAFE", "clean"]

# C0 and C1 controls, DEL, the bidi and other format characters that reorder or hide
# text on a terminal (U+061C, U+200B-U+200F, U+202A-U+202E, U+2060-U+206F, U+FEFF),
# and the line and paragraph separators: a reader must see what was sent.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")

DEFAULT_LIMIT = 256


def clean(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """Printable and at most `limit` characters (then "...")."""
    cleaned = UNSAFE.sub("?", text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."
