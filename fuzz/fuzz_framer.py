#!/usr/bin/env python3
"""Fuzz target: the pre-auth framer (src/imapguard/imap/framing.py).

Contract checked on every input (a client's byte stream):
* `next_event()` never raises; every event is a Frame, RawLine, ContinuationRequest
  or FrameError, and after a fatal FrameError there is none but NEED_DATA;
* a Frame is what its docstring says: one more line than literals, every line but
  the last ends with the marker announcing the literal of the same index and size,
  no line holds an LF, and the named limits (line, literal, command, tag) hold;
* bounded memory: after the events are drained, at most max(max_line, max_literal)
  + 1 bytes stay buffered, whatever the input;
* the events are the same fed whole, byte by byte or split anywhere.

The consumer acts like the state machine, from the events alone: it refuses every
synchronizing literal of odd size (as a LOGIN in clear) and reads a raw line after
an AUTHENTICATE without initial response and after every fifth frame.
"""

from __future__ import annotations

import re

import _harness

with _harness.instrumented():
    from imapguard.imap.commands import Authenticate, parse_command
    from imapguard.imap.framing import (
        NEED_DATA,
        ContinuationRequest,
        Frame,
        FrameError,
        FrameLimits,
        Framer,
        RawLine,
        extract_tag,
    )

# The limits of tests/unit/test_protocol_properties.py: small ones reach every limit
# path with short inputs, the defaults are what runs in production.
LIMITS = (
    FrameLimits(),
    FrameLimits(max_line=64, max_literal=32, max_command=128, max_discard=256, max_tag=16),
    FrameLimits(
        max_line=24, max_literal=8, max_command=40, max_discard=40, max_literal_digits=3, max_tag=4
    ),
)
_MARKER = re.compile(rb"\{([0-9]+)\+?\}\Z")


def check_frame(frame: Frame, limits: FrameLimits) -> None:
    assert len(frame.lines) == len(frame.literals) + 1, frame
    for line, literal in zip(frame.lines, frame.literals, strict=False):
        marker = _MARKER.search(line)
        assert marker is not None and int(marker.group(1)) == len(literal), frame
    for line in frame.lines:
        assert b"\n" not in line and len(line) <= limits.max_line, frame
    assert all(len(lit) <= limits.max_literal for lit in frame.literals), frame
    assert sum(map(len, frame.lines + frame.literals)) <= limits.max_command, frame


def events(limits: FrameLimits, reads: list[bytes]) -> list[object]:
    framer = Framer(limits)
    out: list[object] = []
    frames = 0
    raw = False
    dead = False
    for data in reads:
        framer.feed(data)
        while (event := framer.next_event(raw_line=raw)) is not NEED_DATA:
            assert not dead, f"event {event!r} after a fatal error"
            out.append(event)
            if isinstance(event, Frame):
                check_frame(event, limits)
                frames += 1
                command = parse_command(event, limits.max_tag)
                out.append(command)
                raw = frames % 5 == 0 or (
                    isinstance(command, Authenticate) and command.initial_response is None
                )
            elif isinstance(event, RawLine):
                assert raw and b"\n" not in event.data, event
                assert len(event.data) <= limits.max_line, event
                raw = False
            elif isinstance(event, ContinuationRequest):
                assert event.size <= limits.max_literal, event
                if event.size % 2:
                    framer.refuse_literal()
                    out.append("refused")
            elif isinstance(event, FrameError):
                if event.tag is not None:
                    assert extract_tag(event.tag, limits.max_tag) == event.tag, event
                dead = event.fatal
                raw = False
            else:
                raise AssertionError(f"unknown event {event!r}")
        assert framer.buffered <= max(limits.max_line, limits.max_literal) + 1, framer.buffered
    return out


def test_one_input(data: bytes) -> None:
    limits = LIMITS[_harness.pick(data, len(LIMITS))]
    expected = events(limits, [data])
    for reads in _harness.splittings(data):
        got = events(limits, reads)
        assert got == expected, f"fed in {len(reads)} reads:\n{got}\nwhole:\n{expected}"


if __name__ == "__main__":
    _harness.main(test_one_input)
