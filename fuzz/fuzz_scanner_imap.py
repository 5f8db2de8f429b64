#!/usr/bin/env python3
"""Fuzz target: the IMAP response reader (src/imapguard/imap/responses.py, which the
gateway's upstream login shares) as the scanner uses it (ImapParser in
src/imapguard/scanner/dialogs.py), and what the checks read from its responses.

The input is what an IMAP server sends. Besides the shared contract of the
response parsers (fuzz/_dialogs.py), every response's capability list, its
evidence line, the ID data (`parse_imap_id`: a dict, None or `MalformedResponse`)
and a continuation's NTLM challenge (`parse_ntlm_challenge`: a challenge or
`MalformedResponse`) are read as the mail checks (scanner/mail/) read them. An
input that is itself an NTLM message goes to `parse_ntlm_challenge` as binary.
"""

from __future__ import annotations

import contextlib

import _dialogs
import _harness

with _harness.instrumented():
    from imapguard.scanner import dialogs


def check(response: dialogs.ImapResponse) -> object:
    assert isinstance(response, dialogs.ImapResponse), response
    caps = response.capabilities()
    assert caps is None or all(c == c.upper() and c.split() == [c] for c in caps), caps
    shown = response.shown()
    assert shown.isprintable() and len(shown) <= 200, shown
    extra: object = None
    try:
        if response.name == "ID":
            extra = dialogs.parse_imap_id(response.text)
        elif response.kind is dialogs.ImapKind.CONTINUATION and response.text.strip():
            extra = dialogs.parse_ntlm_challenge(response.text)
    except dialogs.MalformedResponse as exc:
        extra = exc.reason
    if isinstance(extra, dialogs.NtlmChallenge):
        assert all(s.isprintable() for s in extra.disclosed()), extra
    return response, caps, extra


def test_one_input(data: bytes) -> None:
    if data.startswith(b"NTLMSSP\0"):
        with contextlib.suppress(dialogs.MalformedResponse):
            dialogs.parse_ntlm_challenge(data)
    _dialogs.compare(data, dialogs.ImapParser, check)


if __name__ == "__main__":
    _harness.main(test_one_input)
