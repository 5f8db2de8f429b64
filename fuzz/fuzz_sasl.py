#!/usr/bin/env python3
"""Fuzz target: the SASL payloads as the pre-auth state machine reads them
(PreAuth in src/imapguard/imap/preauth.py: AUTHENTICATE with an initial response
or a continuation line, for PLAIN, EXTERNAL, OAUTHBEARER and XOAUTH2).

The input is what a client sends inside TLS. The shell is played from the actions
alone: PLAIN (or LOGIN) with the password "secret" logs in, every other login fails, and a
failed OAUTHBEARER/XOAUTH2 exchange whose payload parses gets the RFC 7628 error
challenge first. Contract checked:
* `next_action()` returns only Send, AuthRequest, Relay or Close and raises
  nothing; every Send is whole CRLF-ended lines;
* an AuthRequest carries what the mechanism says: PLAIN's three fields without NUL,
  EXTERNAL's authorization identity as its user name and no secret, OAUTHBEARER's and
  XOAUTH2's whole payload as the secret (which `parse_oauthbearer`/`parse_xoauth2`
  accept or refuse with `SaslMalformed` only);
* bounded memory: the framer holds at most max(max_line, max_literal) + 1 bytes;
* the wire, the actions and the bytes relayed after login are the same fed whole,
  byte by byte or split anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import _harness

with _harness.instrumented():
    from imapguard.auth.oauth import SaslMalformed, parse_oauthbearer, parse_xoauth2
    from imapguard.imap.framing import NEED_DATA, FrameLimits
    from imapguard.imap.preauth import (
        AuthOutcome,
        AuthRequest,
        Close,
        Phase,
        PreAuth,
        PreAuthSettings,
        Relay,
        Send,
    )

MECHANISMS = ("PLAIN", "EXTERNAL", "OAUTHBEARER", "XOAUTH2")
SETTINGS = (
    PreAuthSettings(tls=True, starttls=False, mechanisms=MECHANISMS),
    PreAuthSettings(
        tls=True,
        starttls=False,
        mechanisms=MECHANISMS,
        frame_limits=FrameLimits(max_line=64, max_literal=32, max_command=128, max_discard=256),
        max_bad_commands=10,
        max_auth_failures=1,
    ),
)
CHALLENGE = b'{"status":"invalid_token","scope":"email"}'


@dataclass
class Transcript:
    wire: bytes = b""
    actions: list[object] = field(default_factory=list)
    relayed: bytes | None = None


def credentials(request: AuthRequest) -> tuple[AuthOutcome, bytes | None]:
    """Check the request; the outcome the shell answers and its error challenge."""
    creds = request.credentials
    assert creds.mechanism in (*MECHANISMS, "LOGIN"), creds
    secret = creds.secret.reveal()
    if creds.mechanism in ("PLAIN", "LOGIN"):
        assert b"\0" not in creds.username + creds.authzid + secret, creds
        return (AuthOutcome.OK if secret == b"secret" else AuthOutcome.FAILED), None
    if creds.mechanism == "EXTERNAL":
        assert creds.username == creds.authzid and not secret, creds
        return AuthOutcome.FAILED, None
    assert creds.username == b"", creds
    parse = parse_oauthbearer if creds.mechanism == "OAUTHBEARER" else parse_xoauth2
    try:
        parse(secret)
    except SaslMalformed:
        return AuthOutcome.FAILED, None
    return AuthOutcome.FAILED, CHALLENGE


def run(settings: PreAuthSettings, reads: list[bytes]) -> Transcript:
    machine = PreAuth(settings)
    out = Transcript(wire=machine.greeting())
    limits = settings.frame_limits
    for data in reads:
        if out.relayed is not None:
            out.relayed += data
            continue
        machine.receive_data(data)
        while (action := machine.next_action()) is not NEED_DATA:
            if isinstance(action, Send):
                assert action.data.endswith(b"\r\n") and b"\n" not in action.data[:-1], action
                out.wire += action.data
                continue
            # Which bytes come as Relay.trailing depends on the reads; what is
            # relayed in all (Transcript.relayed) does not.
            out.actions.append("Relay" if isinstance(action, Relay) else action)
            if isinstance(action, AuthRequest):
                outcome, challenge = credentials(action)
                machine.auth_finished(outcome, ["IMAP4rev1", "IDLE"], challenge=challenge)
            elif isinstance(action, Relay):
                assert machine.phase is Phase.AUTHENTICATED
                out.relayed = action.trailing
            elif isinstance(action, Close):
                assert machine.phase is Phase.LOGOUT
                return out
            else:
                raise AssertionError(f"unexpected action {action!r}")
        assert machine.framer.buffered <= max(limits.max_line, limits.max_literal) + 1
    return out


def test_one_input(data: bytes) -> None:
    settings = SETTINGS[_harness.pick(data, len(SETTINGS))]
    expected = run(settings, [data])
    for reads in _harness.splittings(data):
        got = run(settings, reads)
        assert got.wire == expected.wire, f"{len(reads)} reads:\n{got.wire!r}\n{expected.wire!r}"
        assert got == expected, f"fed in {len(reads)} reads"


if __name__ == "__main__":
    _harness.main(test_one_input)
