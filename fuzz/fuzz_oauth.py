#!/usr/bin/env python3
"""Fuzz target: the OAUTHBEARER and XOAUTH2 payload parsers (parse_oauthbearer,
parse_xoauth2 in src/imapguard/auth/oauth/sasl.py).

The input is a decoded SASL payload, given to both parsers. Contract checked:
* each returns `BearerCredentials` or raises `SaslMalformed` (with a reason that
  never quotes the token), nothing else;
* what it returns obeys the docstrings: the authorization identity is b"" or at
  most MAX_USER_BYTES of UTF-8 without control characters (and XOAUTH2 always has
  one); the token is an RFC 6750 b64token of at most MAX_TOKEN_BYTES, or empty for an
  OAUTHBEARER discovery request; the payload was at most MAX_RESPONSE_BYTES;
* what is parsed is what was sent: the credentials written back in the canonical
  form (`n,a=<escaped authzid>,^Aauth=Bearer <token>^A^A`, `user=..^Aauth=..^A^A`)
  parse to the same credentials.

The parsers are functions of one whole buffer; that the pre-auth machine hands them
the same payload however the client's reads were split is the sasl target's check.
"""

from __future__ import annotations

import re

import _harness

with _harness.instrumented():
    from imapguard.auth.oauth import (
        MAX_RESPONSE_BYTES,
        MAX_TOKEN_BYTES,
        BearerCredentials,
        SaslMalformed,
        parse_oauthbearer,
        parse_xoauth2,
    )
    from imapguard.names import MAX_USER_BYTES

_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")


def check_user(authzid: bytes) -> None:
    assert len(authzid) <= MAX_USER_BYTES, authzid
    text = authzid.decode("utf-8")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text), authzid


def canonical_oauthbearer(creds: BearerCredentials) -> bytes:
    authz = creds.authzid.replace(b"=", b"=3D").replace(b",", b"=2C")
    header = b"n," + (b"a=" + authz if authz else b"") + b","
    auth = b"Bearer " + creds.token.reveal() if creds.token else b""
    return header + b"\x01auth=" + auth + b"\x01\x01"


def canonical_xoauth2(creds: BearerCredentials) -> bytes:
    return b"user=" + creds.authzid + b"\x01auth=Bearer " + creds.token.reveal() + b"\x01\x01"


def parse(data: bytes, xoauth2: bool) -> BearerCredentials | None:
    try:
        creds = parse_xoauth2(data) if xoauth2 else parse_oauthbearer(data)
    except SaslMalformed as exc:
        assert exc.reason, exc
        # The reason goes to the audit log: it must not carry the credential. Its
        # fixed wording names the syntax in backticks (`Bearer <token>`), which a short
        # fuzzed token such as "earer " may match by chance: that is not a leak.
        said = re.sub(r"`[^`]*`", "", exc.reason)
        for token in re.findall(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([^\x01]{6,})", data):
            assert token.decode("latin-1") not in said, exc.reason
        return None
    assert len(data) <= MAX_RESPONSE_BYTES
    token = creds.token.reveal()
    assert len(token) <= MAX_TOKEN_BYTES
    if xoauth2:
        assert creds.authzid and token, creds
    if token:
        assert _B64TOKEN.fullmatch(token), token
    if creds.authzid:
        check_user(creds.authzid)
    assert creds.discovery == (not token)
    again = canonical_xoauth2(creds) if xoauth2 else canonical_oauthbearer(creds)
    reparsed = parse_xoauth2(again) if xoauth2 else parse_oauthbearer(again)
    assert reparsed == creds, (again, creds, reparsed)
    return creds


def test_one_input(data: bytes) -> None:
    parse(data, xoauth2=False)
    parse(data, xoauth2=True)


if __name__ == "__main__":
    _harness.main(test_one_input)
