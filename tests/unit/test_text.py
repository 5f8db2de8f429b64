"""imapguard.text: one rule for what may be shown as it is, two ways to show the rest."""

from __future__ import annotations

import pytest

from imapguard.text import clean, escape, first_unsafe, safe, unsafe_kind

# Characters that forge a log line or reorder what a reader sees (CVE-2021-42574).
HOSTILE = [
    "\x00",
    "\n",
    "\r",
    "\t",
    "\x1b",
    "\x7f",
    "\x85",
    "\x9b",
    "\u061c",
    "\u200b",
    "\u200e",
    "\u2028",
    "\u2029",
    "\u202e",
    "\u2066",
    "\u2069",
    "\ufeff",
    "\u00a0",
    "\U000e0001",
]


@pytest.mark.parametrize("char", HOSTILE)
def test_a_hostile_character_is_never_shown_as_it_is(char: str) -> None:
    assert not safe(char)
    assert first_unsafe(f"ab{char}c") == char
    assert clean(f"ab{char}c") == "ab?c"
    shown = escape(f"ab{char}c")
    assert char not in shown
    assert shown.startswith("ab\\")
    assert shown.endswith("c")


def test_escape_names_the_code_point_so_a_reader_can_tell_which() -> None:
    assert escape("a\x1b[31mb") == "a\\x1b[31mb"
    assert escape("user\u202eexe") == "user\\u202eexe"
    assert escape("\U000e0001") == "\\U000e0001"


def test_escape_keeps_what_it_is_told_to_keep() -> None:
    assert escape("a\tb\nc", keep="\t") == "a\tb\\x0ac"
    assert escape("a\tb\nc", keep="\t\n") == "a\tb\nc"


def test_text_in_any_script_passes_unchanged() -> None:
    for text in ("jörg ünïcode", "Ελένη", "山田太郎", "عائشة", "a b"):
        assert safe(text[0])
        assert first_unsafe(text) is None
        assert clean(text) == text
        assert escape(text) == text


def test_both_bound_the_length() -> None:
    assert clean("x" * 300) == "x" * 256 + "..."
    assert clean("x" * 20, limit=5) == "xxxxx..."
    assert escape("\x00" * 100, limit=10) == "\\x00\\x0..."
    assert len(escape("\x00" * 100, limit=10)) == 10
    assert escape("short", limit=10) == "short"


def test_refusals_name_the_kind() -> None:
    assert unsafe_kind("\x01") == "control"
    assert unsafe_kind("\u202e") == "format"
