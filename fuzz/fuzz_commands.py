#!/usr/bin/env python3
"""Fuzz target: the pre-auth command grammar (src/imapguard/imap/commands.py).

The input is a client's byte stream; the framer (with production limits) cuts it
into the frames the grammar really gets. Contract checked on every frame:
* `parse_command` returns a command or a `ParseError`, and raises nothing;
* the tag is the one `extract_tag` finds on the first line, and the command is the
  one `peek_name` names (the state machine decides on that name before parsing);
* what is parsed is what was sent: a LOGIN, an ID or an AUTHENTICATE written back
  in another legal form (every string a literal, the name in lower case) parses to
  the same command; the RFC 2971 bounds on ID hold; an initial response is "=" or
  strict base64;
* the commands are the same fed whole, byte by byte or split anywhere.
"""

from __future__ import annotations

import binascii

import _harness

with _harness.instrumented():
    from imapguard.imap.commands import (
        MAX_ID_FIELD,
        MAX_ID_PAIRS,
        MAX_ID_VALUE,
        Authenticate,
        Capability,
        Command,
        Id,
        Login,
        Logout,
        Noop,
        ParseError,
        StartTls,
        Unknown,
        parse_command,
        peek_name,
    )
    from imapguard.imap.framing import NEED_DATA, Frame, FrameLimits, Framer, extract_tag

LIMITS = FrameLimits()
NAMES: dict[type[object], str] = {
    Capability: "CAPABILITY",
    Noop: "NOOP",
    Logout: "LOGOUT",
    StartTls: "STARTTLS",
    Id: "ID",
    Login: "LOGIN",
    Authenticate: "AUTHENTICATE",
}


def as_literals(tag: bytes, head: bytes, items: list[bytes | None], tail: bytes) -> Frame:
    """`tag head` then every item as a literal (None as NIL), space-separated, then
    `tail`: the spelling of strings that no quoting rule can get wrong."""
    lines = [tag + b" " + head]
    strings: list[bytes] = []
    for i, item in enumerate(items):
        lines[-1] += b" " if i else b""
        if item is None:
            lines[-1] += b"NIL"
            continue
        lines[-1] += b"{%d}" % len(item)
        strings.append(item)
        lines.append(b"")
    lines[-1] += tail
    return Frame(tuple(lines), tuple(strings))


def rewritten(command: Command) -> Frame | None:
    """The same command in another legal spelling, or None for the argument-less ones."""
    match command:
        case Login(tag=tag, username=user, password=password):
            return as_literals(tag, b"login ", [user, password.reveal()], b"")
        case Id(tag=tag, params=None):
            return Frame((tag + b" id nil",), ())
        case Id(tag=tag, params=tuple() as params):
            items: list[bytes | None] = []
            for field, value in params:
                items += [field.encode(), None if value is None else value.encode()]
            return as_literals(tag, b"id (", items, b")")
        case Authenticate(tag=tag, mechanism=mechanism, initial_response=initial):
            tail = b"" if initial is None else b" " + initial.reveal()
            return Frame((tag + b" authenticate " + mechanism.lower().encode() + tail,), ())
    return None


def check(frame: Frame) -> object:
    result = parse_command(frame, LIMITS.max_tag)
    tag = extract_tag(frame.lines[0], LIMITS.max_tag)
    if isinstance(result, ParseError):
        assert result.tag == tag, (frame, result)
        assert result.text.endswith("."), result
        return result
    assert result.tag == tag, (frame, result)
    head = peek_name(frame.lines[0], LIMITS.max_tag)
    assert head is not None, (frame, result)
    name = result.name if isinstance(result, Unknown) else NAMES[type(result)]
    assert head == (tag, name), (frame, head, result)
    if isinstance(result, Authenticate):
        initial = result.initial_response
        if initial is not None and initial.reveal() != b"=":
            binascii.a2b_base64(initial.reveal(), strict_mode=True)
        assert result.mechanism == result.mechanism.upper(), result
    if isinstance(result, Id) and result.params is not None:
        assert len(result.params) <= MAX_ID_PAIRS, result
        for field, value in result.params:
            assert len(field.encode()) <= MAX_ID_FIELD, result
            assert value is None or len(value.encode()) <= MAX_ID_VALUE, result
    again = rewritten(result)
    if again is not None:
        assert parse_command(again, LIMITS.max_tag) == result, (frame, again, result)
    return result


def commands(reads: list[bytes]) -> list[object]:
    framer = Framer(LIMITS)
    out: list[object] = []
    for data in reads:
        framer.feed(data)
        while (event := framer.next_event()) is not NEED_DATA:
            out.append(check(event) if isinstance(event, Frame) else event)
    return out


def test_one_input(data: bytes) -> None:
    expected = commands([data])
    for reads in _harness.splittings(data):
        assert commands(reads) == expected, f"fed in {len(reads)} reads"


if __name__ == "__main__":
    _harness.main(test_one_input)
