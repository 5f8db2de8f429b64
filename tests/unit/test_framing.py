"""The framer: bytes in, lines and literals out, every limit enforced as bytes arrive."""

from __future__ import annotations

import pytest

from imapguard.imap.framing import (
    NEED_DATA,
    ContinuationRequest,
    Frame,
    FrameError,
    FrameErrorKind,
    FrameEvent,
    FrameLimits,
    Framer,
    RawLine,
    extract_tag,
)

# Small limits keep the transcripts readable; the defaults are tested where it matters.
SMALL = FrameLimits(max_line=64, max_literal=32, max_command=128, max_discard=256)
TOOBIG_LINE = FrameErrorKind.LINE_TOO_LONG
TOOBIG_LITERAL = FrameErrorKind.LITERAL_TOO_LARGE
TOOBIG_COMMAND = FrameErrorKind.COMMAND_TOO_LARGE


def events(framer: Framer, data: bytes = b"", *, raw_line: bool = False) -> list[FrameEvent]:
    """Feed `data`, then collect events until the framer needs more input."""
    framer.feed(data)
    out: list[FrameEvent] = []
    while (event := framer.next_event(raw_line=raw_line)) is not NEED_DATA:
        out.append(event)
    return out


def bytewise(framer: Framer, data: bytes) -> list[FrameEvent]:
    out: list[FrameEvent] = []
    for i in range(len(data)):
        out += events(framer, data[i : i + 1])
    return out


def line(text: bytes) -> Frame:
    return Frame((text,), ())


# -- lines ---------------------------------------------------------------------


def test_crlf_line() -> None:
    assert events(Framer(), b"a NOOP\r\n") == [line(b"a NOOP")]


def test_bare_lf_line() -> None:
    assert events(Framer(), b"a NOOP\n") == [line(b"a NOOP")]


def test_only_one_cr_is_dropped() -> None:
    assert events(Framer(), b"a NOOP\r\r\n") == [line(b"a NOOP\r")]


def test_pipelined_lines_in_one_feed() -> None:
    assert events(Framer(), b"a NOOP\r\nb CAPABILITY\nc LOGOUT\r\n") == [
        line(b"a NOOP"),
        line(b"b CAPABILITY"),
        line(b"c LOGOUT"),
    ]


def test_partial_line_waits() -> None:
    framer = Framer()
    assert events(framer, b"a NO") == []
    assert framer.buffered == 4
    assert events(framer, b"OP\r") == []
    assert events(framer, b"\n") == [line(b"a NOOP")]
    assert framer.buffered == 0


def test_empty_line_is_a_frame() -> None:
    assert events(Framer(), b"\r\n") == [line(b"")]


# -- literals ------------------------------------------------------------------


def test_sync_literal_asks_for_continuation_then_reads_literal() -> None:
    framer = Framer()
    assert events(framer, b"a LOGIN {5}\r\n") == [ContinuationRequest(5, b"a LOGIN {5}")]
    assert events(framer, b"alice {6}\r\n") == [ContinuationRequest(6, b"a LOGIN {5}")]
    assert events(framer, b"secret\r\n") == [
        Frame((b"a LOGIN {5}", b" {6}", b""), (b"alice", b"secret"))
    ]


def test_sync_literal_continuation_even_when_data_came_early() -> None:
    # An illegal client sends the literal without waiting for "+": the event
    # sequence is the same as for a well-behaved one.
    assert events(Framer(), b"a LOGIN {5}\r\nalice pw\r\n") == [
        ContinuationRequest(5, b"a LOGIN {5}"),
        Frame((b"a LOGIN {5}", b" pw"), (b"alice",)),
    ]


def test_non_sync_literal_needs_no_continuation() -> None:
    assert events(Framer(), b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n") == [
        Frame((b"a LOGIN {5+}", b" {6+}", b""), (b"alice", b"secret"))
    ]


def test_empty_literal() -> None:
    assert events(Framer(), b"a LOGIN {0}\r\n {0+}\r\n\r\n") == [
        ContinuationRequest(0, b"a LOGIN {0}"),
        Frame((b"a LOGIN {0}", b" {0+}", b""), (b"", b"")),
    ]


def test_literal_bytes_are_never_read_as_a_command() -> None:
    smuggled = b"\r\n a LOGIN x y\r\n"
    data = b"a LOGIN {%d+}\r\n" % len(smuggled) + smuggled + b" pw\r\nb NOOP\r\n"
    assert events(Framer(), data) == [
        Frame((b"a LOGIN {%d+}" % len(smuggled), b" pw"), (smuggled,)),
        line(b"b NOOP"),
    ]


def test_literal_that_ends_like_a_marker_is_data() -> None:
    assert events(Framer(), b"a LOGIN {5+}\r\n{9}\r\n pw\r\n") == [
        Frame((b"a LOGIN {5+}", b" pw"), (b"{9}\r\n",))
    ]


def test_literal_split_across_feeds() -> None:
    framer = Framer()
    assert events(framer, b"a LOGIN {11+}\r\nhel") == []
    assert events(framer, b"lo ") == []
    assert events(framer, b"worl") == []
    assert events(framer, b"d pw\r") == []
    assert events(framer, b"\n") == [Frame((b"a LOGIN {11+}", b" pw"), (b"hello world",))]


def test_user_and_password_literals_byte_by_byte() -> None:
    data = b"a LOGIN {5}\r\nalice {6}\r\nsecret\r\n"
    assert bytewise(Framer(), data) == events(Framer(), data)
    assert bytewise(Framer(), data)[-1] == Frame(
        (b"a LOGIN {5}", b" {6}", b""), (b"alice", b"secret")
    )


def test_marker_not_at_line_end_is_no_literal() -> None:
    assert events(Framer(), b"a LOGIN {5} x\r\n") == [line(b"a LOGIN {5} x")]


def test_refuse_literal_forgets_the_command() -> None:
    framer = Framer()
    assert events(framer, b"a LOGIN {5}\r\n") == [ContinuationRequest(5, b"a LOGIN {5}")]
    framer.refuse_literal()
    assert events(framer, b"b NOOP\r\n") == [line(b"b NOOP")]


def test_refuse_literal_without_pending_literal_is_a_bug() -> None:
    framer = Framer()
    assert events(framer, b"a NOOP\r\n") == [line(b"a NOOP")]
    with pytest.raises(RuntimeError):
        framer.refuse_literal()


# -- raw lines (SASL responses) --------------------------------------------------


def test_raw_line_has_no_literals() -> None:
    assert events(Framer(), b"AGFsaWNl {5}\r\n", raw_line=True) == [RawLine(b"AGFsaWNl {5}")]


def test_raw_line_mode_applies_only_between_commands() -> None:
    framer = Framer()
    assert events(framer, b"a LOGIN {3+}\r\n") == []
    # Mid-command the next line continues the command, raw or not.
    assert events(framer, b"abc pw\r\n", raw_line=True) == [
        Frame((b"a LOGIN {3+}", b" pw"), (b"abc",))
    ]


def test_overlong_raw_line_is_discarded_whatever_it_ends_with() -> None:
    framer = Framer(SMALL)
    data = b"a " + b"A" * 100 + b" {10+}\r\n"
    assert events(framer, data, raw_line=True) == [FrameError(TOOBIG_LINE, None)]
    # Not taken for a literal: the next line is read at once.
    assert events(framer, b"b NOOP\r\n") == [line(b"b NOOP")]


# -- limits: lines ---------------------------------------------------------------


def test_line_over_max_line_then_next_command_works() -> None:
    framer = Framer(SMALL)
    data = b"a LOGIN " + b"x" * 100 + b"\r\nb NOOP\r\n"
    assert events(framer, data) == [FrameError(TOOBIG_LINE, b"a"), line(b"b NOOP")]


def test_line_over_max_line_byte_by_byte() -> None:
    data = b"a LOGIN " + b"x" * 100 + b"\r\nb NOOP\r\n"
    assert bytewise(Framer(SMALL), data) == [FrameError(TOOBIG_LINE, b"a"), line(b"b NOOP")]


def test_line_exactly_at_max_line_is_accepted() -> None:
    text = b"a " + b"x" * (SMALL.max_line - 2)
    assert events(Framer(SMALL), text + b"\n") == [line(text)]
    assert events(Framer(SMALL), text + b"x\n") == [FrameError(TOOBIG_LINE, b"a")]


def test_discarding_is_bounded_in_memory() -> None:
    framer = Framer()
    assert events(framer, b"a ") == []
    chunk = b"\x00garbage" * (65536 // 8)
    highest = 0
    for _ in range(10 * 1024 * 1024 // len(chunk)):
        assert events(framer, chunk) == []
        highest = max(highest, framer.buffered)
    assert highest <= framer.limits.max_line + 64
    assert events(framer, b"\r\nb NOOP\r\n") == [FrameError(TOOBIG_LINE, b"a"), line(b"b NOOP")]


def test_overlong_line_ending_in_non_sync_literal_discards_the_literal() -> None:
    framer = Framer(SMALL)
    smuggled = b"\r\nc NOOP\r\n"
    data = b"a LOGIN " + b"x" * 100 + b" {10+}\r\n" + smuggled + b" pw\r\nb NOOP\r\n"
    assert events(framer, data) == [FrameError(TOOBIG_LINE, b"a"), line(b"b NOOP")]


def test_overlong_line_ending_in_sync_literal_waits_for_nothing() -> None:
    # The client waits for "+", which never comes: answer at once.
    framer = Framer(SMALL)
    assert events(framer, b"a LOGIN " + b"x" * 100 + b" {10}\r\n") == [
        FrameError(TOOBIG_LINE, b"a")
    ]
    assert events(framer, b"b NOOP\r\n") == [line(b"b NOOP")]


def test_overlong_line_with_marker_cut_off_by_digit_count_is_fatal() -> None:
    # The kept tail holds only digits: a marker with more digits than any literal.
    framer = Framer(SMALL)
    data = b"a LOGIN " + b"x" * 100 + b" {" + b"9" * 40 + b"+}\r\n"
    assert events(framer, data) == [FrameError(TOOBIG_LITERAL, b"a", fatal=True)]


def test_invalid_tag_is_not_kept() -> None:
    assert events(Framer(SMALL), b"+bad " + b"x" * 100 + b"\r\n") == [FrameError(TOOBIG_LINE, None)]


# -- limits: literals --------------------------------------------------------------


def test_sync_literal_bomb_is_refused_at_once() -> None:
    framer = Framer()
    assert events(framer, b"a LOGIN {99999999999}\r\n") == [FrameError(TOOBIG_LITERAL, b"a")]
    assert framer.buffered == 0
    assert events(framer, b"b NOOP\r\n") == [line(b"b NOOP")]


def test_sync_literal_with_too_many_digits_is_refused() -> None:
    framer = Framer()
    assert events(framer, b"a LOGIN {1234567890123456}\r\n") == [FrameError(TOOBIG_LITERAL, b"a")]
    assert events(framer, b"b NOOP\r\n") == [line(b"b NOOP")]


def test_non_sync_literal_with_too_many_digits_is_fatal() -> None:
    framer = Framer()
    assert events(framer, b"a LOGIN {1234567890123456+}\r\nb NOOP\r\n") == [
        FrameError(TOOBIG_LITERAL, b"a", fatal=True)
    ]
    assert framer.buffered == 0
    assert events(framer, b"c NOOP\r\n") == []
    assert framer.buffered == 0


def test_non_sync_literal_over_max_literal_is_discarded_and_stream_stays_in_sync() -> None:
    framer = Framer(SMALL)
    # The discarded literal holds something that looks like a command.
    literal = b"\r\nc LOGOUT\r\n".ljust(100, b"z")
    data = b"a LOGIN {100+}\r\n" + literal + b" pw\r\nb NOOP\r\n"
    assert events(framer, data) == [FrameError(TOOBIG_LITERAL, b"a"), line(b"b NOOP")]
    assert bytewise(Framer(SMALL), data) == [FrameError(TOOBIG_LITERAL, b"a"), line(b"b NOOP")]


def test_discarded_literal_followed_by_another_non_sync_literal() -> None:
    framer = Framer(SMALL)
    data = b"a LOGIN {100+}\r\n" + b"u" * 100 + b" {3+}\r\n\r\n\n pw\r\nb NOOP\r\n"
    assert events(framer, data) == [FrameError(TOOBIG_LITERAL, b"a"), line(b"b NOOP")]


def test_digits_after_discarded_literal_are_no_marker() -> None:
    # "5+}" without a brace that was never cut off is just the end of a command.
    framer = Framer(SMALL)
    data = b"a LOGIN x {100+}\r\n" + b"x" * 100 + b"5+}\r\nb NOOP\r\n"
    assert events(framer, data) == [FrameError(TOOBIG_LITERAL, b"a"), line(b"b NOOP")]


def test_non_sync_literal_over_max_discard_is_fatal() -> None:
    framer = Framer(SMALL)
    assert events(framer, b"a LOGIN {257+}\r\n" + b"x" * 300) == [
        FrameError(TOOBIG_LITERAL, b"a", fatal=True)
    ]
    assert framer.buffered == 0


def test_chained_discarded_literals_count_against_max_discard() -> None:
    # Each literal is under max_discard, together they are not: one command may
    # not make us read more than max_discard bytes for nothing.
    framer = Framer(SMALL)
    data = b"a LOGIN {200+}\r\n" + b"x" * 200 + b" {200+}\r\n" + b"y" * 200 + b"\r\n"
    assert events(framer, data) == [FrameError(TOOBIG_LITERAL, b"a", fatal=True)]


def test_discard_limit_is_per_command() -> None:
    framer = Framer(SMALL)
    one = b"a LOGIN {200+}\r\n" + b"x" * 200 + b" pw\r\n"
    assert events(framer, one + one.replace(b"a", b"b", 1)) == [
        FrameError(TOOBIG_LITERAL, b"a"),
        FrameError(TOOBIG_LITERAL, b"b"),
    ]


def test_discarding_a_literal_is_bounded_in_memory() -> None:
    framer = Framer(FrameLimits(max_discard=1 << 20))
    assert events(framer, b"a LOGIN {1000000+}\r\n") == []
    for _ in range(1000000 // 10000):
        assert events(framer, b"x" * 10000) == []
        assert framer.buffered == 0
    assert events(framer, b" pw\r\nb NOOP\r\n") == [
        FrameError(TOOBIG_LITERAL, b"a"),
        line(b"b NOOP"),
    ]


def test_command_over_max_command_sync_literal() -> None:
    framer = Framer(SMALL)
    sent = b"a ID {30}\r\n" + (b"u" * 30 + b" {30}\r\n") * 2 + b"p" * 30
    assert events(framer, sent) == [ContinuationRequest(30, b"a ID {30}")] * 3
    # 9 + 30 + 5 + 30 + 5 + 30 = 109 bytes so far; 5 + 30 more go over 128.
    assert events(framer, b" {30}\r\n") == [FrameError(TOOBIG_COMMAND, b"a")]
    assert events(framer, b"b NOOP\r\n") == [line(b"b NOOP")]


def test_command_over_max_command_by_lines() -> None:
    framer = Framer(SMALL)
    body = b"x" * 50
    data = b"a ID {0+}\r\n" + body + b" {0+}\r\n" + body + b" {0+}\r\n" + body + b"\r\n"
    assert events(framer, data + b"b NOOP\r\n") == [
        FrameError(TOOBIG_COMMAND, b"a"),
        line(b"b NOOP"),
    ]


def test_command_over_max_command_with_non_sync_literal_is_discarded() -> None:
    framer = Framer(SMALL)
    data = b"a ID {30+}\r\n" + (b"u" * 30 + b" {30+}\r\n") * 3 + b"p" * 30 + b"\r\nb NOOP\r\n"
    assert events(framer, data) == [FrameError(TOOBIG_COMMAND, b"a"), line(b"b NOOP")]


# -- tags ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "tag"),
    [
        (b"a NOOP", b"a"),
        (b"A001 NOOP", b"A001"),
        (b"a]b NOOP", b"a]b"),
        (b"tag", b"tag"),
        (b"tag\r", b"tag"),
        (b"+a NOOP", None),
        (b"a+b NOOP", None),
        (b"a*b NOOP", None),
        (b'"a" NOOP', None),
        (b"a{ NOOP", None),
        (b" NOOP", None),
        (b"", None),
        (b"\xc3\xa9 NOOP", None),
        (b"x" * 64 + b" NOOP", b"x" * 64),
        (b"x" * 65 + b" NOOP", None),
        (b"x" * 100000, None),
    ],
)
def test_extract_tag(data: bytes, tag: bytes | None) -> None:
    assert extract_tag(data, 64) == tag


def test_buffer_helpers() -> None:
    framer = Framer()
    assert events(framer, b"a NOOP\r\nb LOG") == [line(b"a NOOP")]
    assert framer.take_buffered() == b"b LOG"
    assert framer.buffered == 0
    assert events(framer, b"a LOGIN {5}\r\nali") == [ContinuationRequest(5, b"a LOGIN {5}")]
    assert framer.discard_buffered() == 3
    # The half-read command is forgotten too.
    assert events(framer, b"b NOOP\r\n") == [line(b"b NOOP")]
