#!/usr/bin/env python3
"""Fuzz target: the scanner's SMTP reply parser (SmtpParser in
src/imapguard/scanner/dialogs.py) and what the checks read from its replies.

The input is what an SMTP server sends. Besides the shared contract of the
response parsers (fuzz/_dialogs.py): a reply has one code on all its lines and at
most MAX_RESPONSE_LINES of them, its enhanced status code agrees with the code's
class, an EHLO reply parses with `parse_ehlo` (AUTH mechanisms upper case) and
`sasl_mechanisms`, and a 334 challenge goes to `parse_ntlm_challenge` (a
challenge or `MalformedResponse`).
"""

from __future__ import annotations

import _dialogs
import _harness

with _harness.instrumented():
    from imapguard.scanner import dialogs
    from imapguard.scanner.model import Protocol


def check(reply: dialogs.SmtpReply) -> object:
    assert isinstance(reply, dialogs.SmtpReply), reply
    assert 100 <= reply.code <= 599 and len(reply.raw) <= dialogs.MAX_RESPONSE_LINES, reply
    assert all(line[:3] == reply.raw[0][:3] for line in reply.raw), reply
    assert not reply.enhanced or reply.enhanced[0] == str(reply.code)[0], reply
    ehlo = dialogs.parse_ehlo(reply)
    assert all(m == m.upper() for m in ehlo.auth), ehlo
    sasl = dialogs.sasl_mechanisms(Protocol.SMTP, ehlo.lines)
    shown = reply.shown()
    assert shown.isprintable(), shown
    extra: object = None
    if reply.code == 334:
        try:
            extra = dialogs.parse_ntlm_challenge(reply.text)
        except dialogs.MalformedResponse as exc:
            extra = exc.reason
    return reply, reply.text, reply.positive, ehlo, sasl, extra


def test_one_input(data: bytes) -> None:
    _dialogs.compare(data, dialogs.SmtpParser, check)


if __name__ == "__main__":
    _harness.main(test_one_input)
