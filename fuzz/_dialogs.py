"""What the scanner's three response-parser targets share (fuzz_scanner_*.py).

The contract of src/imapguard/scanner/dialogs.py, checked for every input:
* `feed()` raises nothing but a `DialogError` (`ResponseTooLong` or
  `MalformedResponse`); once it has raised, every later `feed()` raises the same
  error, and the responses completed before it can still be taken;
* bounded memory: after the responses are taken, `buffered` is at most
  max(MAX_LINE, MAX_LITERAL) + 1 + MAX_RESPONSE_BYTES;
* the responses and the error (class, reason, excerpt up to MAX_LINE bytes) are
  the same fed whole, byte by byte or split anywhere.

Half of the inputs run with the limits scaled down (MAX_LINE 128, MAX_LITERAL 64,
MAX_RESPONSE_BYTES 512, MAX_RESPONSE_LINES 16), so that short inputs reach every
limit; the parsers read them from the module at call time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _harness

with _harness.instrumented():
    from imapguard.scanner import dialogs

REAL = {
    name: getattr(dialogs, name)
    for name in ("MAX_LINE", "MAX_LITERAL", "MAX_RESPONSE_BYTES", "MAX_RESPONSE_LINES")
}
SMALL = {"MAX_LINE": 128, "MAX_LITERAL": 64, "MAX_RESPONSE_BYTES": 512, "MAX_RESPONSE_LINES": 16}


def set_limits(data: bytes) -> None:
    for name, value in (SMALL if _harness.pick(data, 2, salt=0x11) else REAL).items():
        setattr(dialogs, name, value)


def feed_all(
    make: Callable[[], dialogs.ResponseParser[Any]],
    reads: list[bytes],
    check: Callable[[Any], object],
) -> tuple[list[object], tuple[str, str, bytes] | None]:
    """The responses (as `check` sees them) and the error, if any."""
    parser = make()
    out: list[object] = []
    error: dialogs.DialogError | None = None
    bound = max(dialogs.MAX_LINE, dialogs.MAX_LITERAL) + 1 + dialogs.MAX_RESPONSE_BYTES
    for data in reads:
        try:
            parser.feed(data)
        except dialogs.DialogError as exc:
            assert isinstance(exc, dialogs.ResponseTooLong | dialogs.MalformedResponse), exc
            error = exc
        while (response := parser.next()) is not None:
            out.append(check(response))
        if error is not None:
            break
        assert parser.buffered <= bound, (parser.buffered, bound)
    if error is None:
        return out, None
    for again in (b"", b"x\r\n"):
        try:
            parser.feed(again)
        except dialogs.DialogError as exc:
            assert exc is error, (exc, error)
        else:
            raise AssertionError("a broken parser took more bytes")
    assert parser.next() is None
    # An over-long line's excerpt is what was buffered when the limit was passed:
    # with the scaled-down MAX_LINE under the excerpt's 200 bytes that depends on
    # the reads; with the real 64 KiB every excerpt is the line's first 200 bytes.
    return out, (type(error).__name__, error.reason, error.excerpt[: dialogs.MAX_LINE])


def compare(
    data: bytes,
    make: Callable[[], dialogs.ResponseParser[Any]],
    check: Callable[[Any], object],
) -> None:
    set_limits(data)
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    dialogs.sniff_greeting(first)
    dialogs.parse_sieve_line(first)
    expected = feed_all(make, [data], check)
    for reads in _harness.splittings(data):
        got = feed_all(make, reads, check)
        assert got == expected, f"fed in {len(reads)} reads:\n{got}\nwhole:\n{expected}"
