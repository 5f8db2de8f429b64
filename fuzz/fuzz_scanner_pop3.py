#!/usr/bin/env python3
"""Fuzz target: the scanner's POP3 response parser (Pop3Parser in
src/imapguard/scanner/dialogs.py) and what the checks read from its responses.

The input is what a POP3 server sends. The parser is told to expect a multi-line
body for every +OK after the greeting whose number of the input's CRC says so (as
the scanner does for CAPA), the same for every way of splitting the input. Besides
the shared contract of the response parsers (fuzz/_dialogs.py): a body is at most
MAX_RESPONSE_LINES long, and a CAPA body parses with `parse_capa`, its SASL line
with `sasl_mechanisms`.
"""

from __future__ import annotations

import _dialogs
import _harness

with _harness.instrumented():
    from imapguard.scanner import dialogs
    from imapguard.scanner.model import Protocol


def check(response: dialogs.Pop3Response) -> object:
    assert isinstance(response, dialogs.Pop3Response), response
    assert len(response.lines) <= dialogs.MAX_RESPONSE_LINES, response
    assert response.code == response.code.upper(), response
    capa = dialogs.parse_capa(response.lines)
    sasl = dialogs.sasl_mechanisms(Protocol.POP3, response.lines)
    shown = response.shown()
    assert shown.isprintable() and len(shown) <= 200, shown
    return response, capa, sasl


def test_one_input(data: bytes) -> None:
    expect = _harness.rng(data, 0x9093)
    pattern = [expect.random() < 0.5 for _ in range(16)]

    def make() -> dialogs.Pop3Parser:
        parser = dialogs.Pop3Parser()
        parser.expect(False)  # the greeting
        for multiline in pattern:
            parser.expect(multiline)
        return parser

    _dialogs.compare(data, make, check)


if __name__ == "__main__":
    _harness.main(test_one_input)
