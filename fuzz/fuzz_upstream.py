#!/usr/bin/env python3
"""Fuzz target: the gateway's login to the upstream (LoginDialogue in
src/imapguard/imap/login.py, over the IMAP response reader it shares with the
scanner).

The input is what the upstream IMAP server sends; the gateway's side is the real
dialogue, driven as gateway/upstream.py drives it. Contract checked:
* every login ends in `LoggedIn` or `Failed` (when the input runs out, the
  server closed: `Failed`), never an exception;
* bounded memory: the reader never holds more than a response under way (up to
  the limit, and the line that passed it) plus the largest read, and a flood of
  untagged responses ends the login;
* the outcome, the bytes the gateway sent and the bytes left over for the client
  are the same however the server's bytes were split into reads.

As in the gateway, bytes that arrived but were not read yet when the server's
STARTTLS OK was read are an injection, and at the end they are the client's: so
the whole input counts as arrived from the start, and each split only decides
what one read hands over. STARTTLS itself cannot complete here (no transport):
a clean STARTTLS answer ends in the "no TLS context" failure, as it does in the
gateway without a TLS context. Half of the inputs run with the response limit
at 256 bytes (a real Dovecot login line is 400: those refuse it) and the
untagged limit at 512, so that short inputs reach the limits.
"""

from __future__ import annotations

from typing import Any

import _harness

with _harness.instrumented():
    from imapguard.imap.login import (
        MAX_RESPONSE,
        MAX_UNTAGGED,
        Failed,
        LoggedIn,
        LoginDialogue,
        LoginSettings,
        NeedResponse,
        Send,
        StartTls,
        plain_response,
    )
    from imapguard.secret import Secret


def settings(variant: int) -> LoginSettings:
    small = variant & 8
    return LoginSettings(
        starttls=bool(variant & 1),
        id_fields=(("x-originating-ip", "192.0.2.7"), ("x-session-ext-id", "s1"))
        if variant & 2
        else None,
        max_response=256 if small else MAX_RESPONSE,
        max_untagged=512 if small else MAX_UNTAGGED,
    )


def login(variant: int, reads: list[bytes]) -> tuple[Any, ...]:
    password = Secret(b"user-secret")
    plain = (
        plain_response("", "alice", password)
        if variant & 4
        else plain_response("alice", "gateway", Secret(b"master-secret"))
    )
    limits = settings(variant)
    machine = LoginDialogue(plain, limits)
    pending = list(reads)
    written: list[bytes] = []
    biggest = 0
    while True:
        action = machine.next_action()
        if isinstance(action, NeedResponse):
            data = pending.pop(0) if pending else b""
            biggest = max(biggest, len(data))
            machine.receive_data(data)
            held = machine._reader.buffered
            bound = 2 * limits.max_response + biggest
            assert held <= bound, f"the reader holds {held} bytes (bound {bound})"
        elif isinstance(action, Send):
            written.append(action.data)
        elif isinstance(action, StartTls):
            if any(pending):
                return "Failed", "data injected after STARTTLS response", False, written
            return "Failed", "no TLS context for STARTTLS", False, written
        elif isinstance(action, LoggedIn):
            return "LoggedIn", action.capabilities, action.leftover + b"".join(pending), written
        else:
            assert isinstance(action, Failed)
            return "Failed", action.detail, action.refused, written


def test_one_input(data: bytes) -> None:
    variant = _harness.pick(data, 16)
    expected = login(variant, [data])
    for reads in _harness.splittings(data):
        got = login(variant, reads)
        assert got == expected, f"fed in {len(reads)} reads:\n{got}\nwhole:\n{expected}"


if __name__ == "__main__":
    _harness.main(test_one_input)
