"""Garbage before authentication: random bytes, NULs, over-long lines, invalid tags,
commands that do not exist or are not allowed yet. Every answer is a well-formed
BAD/NO (tagged when the tag is valid), the connection ends with a BYE after
`max_bad_commands` (3), and the gateway neither crashes nor logs a traceback."""

from __future__ import annotations

import random
import re

import pytest

from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import RawClient

pytestmark = pytest.mark.dovecot

TOO_MANY_BAD = b"* BYE Too many invalid commands."
# Every line the gateway may send before authentication.
_WELL_FORMED = re.compile(
    rb"\A(\* (OK|NO|BAD|BYE|CAPABILITY|ID)( .*)?|\+( .*)?|[\x21-\x7e]{1,64} (OK|NO|BAD)( .*)?)\Z"
)


def _client(gw: GatewayProcess, n: int, tls: bool) -> RawClient:
    if tls:
        c = RawClient(gw.implicit_port, source_address(n), tls=gw.client_ssl())
    else:
        c = RawClient(gw.starttls_port, source_address(n))
    assert c.line().startswith(b"* OK ")
    return c


def _assert_three_strikes(c: RawClient, commands: list[bytes], tagged: bool) -> None:
    """Three bad commands: each gets a BAD (tagged with its tag when valid), the
    third also a BYE, and the connection is closed."""
    assert len(commands) == 3
    for i, command in enumerate(commands):
        c.send(command + b"\r\n")
        line = c.line()
        if tagged:
            tag = command.split(b" ", 1)[0]
            assert line.startswith(tag + b" BAD "), (command, line)
        else:
            assert line.startswith(b"* BAD "), (command, line)
        if i < 2:
            assert c.command(b"ok", b"NOOP") == [b"ok OK NOOP completed."]
    assert c.line() == TOO_MANY_BAD
    assert c.rest_until_closed() == b""


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_unknown_and_not_yet_allowed_commands(gw: GatewayProcess, tls: bool) -> None:
    with _client(gw, 65 + tls, tls) as c:
        _assert_three_strikes(c, [b"a1 SELECT INBOX", b"a2 FETCH 1 BODY[]", b"a3 XYZZY"], True)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_malformed_arguments(gw: GatewayProcess, tls: bool) -> None:
    commands = [b"b1 NOOP extra", b"b2 ID (", b"b3 CAPABILITY now"]
    if tls:
        commands = [b"b1 LOGIN", b"b2 LOGIN a b c", b'b3 LOGIN "unterminated']
    with _client(gw, 67 + tls, tls) as c:
        _assert_three_strikes(c, commands, True)


def test_invalid_tags(gw: GatewayProcess) -> None:
    with _client(gw, 69, True) as c:
        _assert_three_strikes(c, [b"* NOOP", b"+ NOOP", b"a{b NOOP"], False)
    with _client(gw, 69, False) as c:
        _assert_three_strikes(c, [b'a"b NOOP', b"a%b NOOP", b"(x) NOOP"], False)
    with _client(gw, 69, True) as c:
        _assert_three_strikes(c, [b"t" * 65 + b" NOOP", b" NOOP", b"a\\b NOOP"], False)


def test_nul_bytes(gw: GatewayProcess) -> None:
    with _client(gw, 70, True) as c:
        _assert_three_strikes(c, [b"\x00\x00\x00\x00", b"a\x00 NOOP", b"\x00 NOOP"], False)
    with _client(gw, 70, False) as c:
        _assert_three_strikes(c, [b"n1 NOOP\x00", b"n2 NO\x00OP", b"n3 LOGOUT \x00"], True)


def test_overlong_lines(gw: GatewayProcess) -> None:
    with _client(gw, 71, True) as c:
        c.send(b"t1 LOGIN " + b"A" * 100_000 + b"\r\n")
        assert c.line() == b"t1 BAD [TOOBIG] Command line too long."
        assert c.command(b"ok", b"NOOP") == [b"ok OK NOOP completed."]
        c.send(b"B" * 100_000 + b"\r\n")  # no valid tag within the line's start
        assert c.line() == b"* BAD [TOOBIG] Command line too long."
        assert c.command(b"ok", b"NOOP") == [b"ok OK NOOP completed."]
        c.send(b"t3 " + b"C" * 1_000_000 + b"\r\n")
        assert c.line() == b"t3 BAD [TOOBIG] Command line too long."
        assert c.line() == TOO_MANY_BAD
        assert c.rest_until_closed() == b""


def test_sasl_garbage(gw: GatewayProcess) -> None:
    with _client(gw, 72, True) as c:
        c.send(b"s1 AUTHENTICATE PLAIN\r\n")
        assert c.line().startswith(b"+")
        c.send(b"!!!not base64!!!\r\n")
        assert c.line().startswith(b"s1 BAD ")
        assert c.command(b"s2", b"AUTHENTICATE CRAM-MD5")[-1].startswith(b"s2 NO ")
        c.send(b"s3 AUTHENTICATE PLAIN\r\n")
        assert c.line().startswith(b"+")
        c.send(b"*\r\n")
        assert c.line().startswith(b"s3 BAD ")  # cancelled: not counted as a strike
        lines = c.command(b"s4", b"AUTHENTICATE PLAIN AAAA")  # decodes, not PLAIN-shaped
        assert lines[-1].startswith(b"s4 BAD ")
        c.send(b"s5 AUTHENTICATE PLAIN\r\n")
        assert c.line().startswith(b"+")
        c.send(b"QUFB" * 10_000 + b"\r\n")  # a response line far over max_line
        assert c.line().startswith(b"s5 BAD [TOOBIG]")
        assert c.line() == TOO_MANY_BAD
        assert c.rest_until_closed() == b""


def test_random_garbage(gw: GatewayProcess) -> None:
    rng = random.Random(20261125)  # fixed: a failure is reproducible
    for i in range(24):
        tls = i % 2 == 0
        with _client(gw, 73 + i % 4, tls) as c:
            chunks = []
            for _ in range(rng.randint(1, 8)):
                chunks.append(rng.randbytes(rng.randint(1, 3000)))
                chunks.append(rng.choice([b"\r\n", b"\n", b"", b"\r\n\r\n"]))
            try:
                c.send(b"".join(chunks))
            except OSError:
                continue  # closed on us mid-send: fine
            got = c.quiet(0.3)
        lines = got.split(b"\r\n")
        assert lines[-1] == b"", got[-200:]
        for line in lines[:-1]:
            assert _WELL_FORMED.match(line), line


_IMAPISH = [
    b"a1",
    b"*",
    b"+",
    b"LOGIN",
    b"AUTHENTICATE",
    b"PLAIN",
    b"XOAUTH2",
    b"CAPABILITY",
    b"STARTTLS",
    b"NOOP",
    b"ID",
    b"NIL",
    b"(",
    b")",
    b'"',
    b"\\",
    b'"alice"',
    b"{0}",
    b"{5}",
    b"{3+}",
    b"{99999999999+}",
    b"{18446744073709551616}",
    b"=",
    b"AGFsaWNlAHB3",
    b" ",
    b" ",
    b"\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b"\xff",
]


def test_random_imap_shaped_garbage(gw: GatewayProcess) -> None:
    """Garbage made of IMAP tokens reaches deeper: literals, SASL, ID lists."""
    rng = random.Random(4711)
    for i in range(40):
        with _client(gw, 73 + i % 4, True) as c:
            data = b"".join(rng.choice(_IMAPISH) for _ in range(rng.randint(5, 60)))
            try:
                c.send(data + b"\r\n")
            except OSError:
                continue
            got = c.quiet(0.2)
        lines = got.split(b"\r\n")
        assert lines[-1] == b"", (data, got[-200:])
        for line in lines[:-1]:
            assert _WELL_FORMED.match(line), (data, line)


def test_gateway_survives_the_garbage(gw: GatewayProcess, alice_password: str) -> None:
    """Runs last in this file: after all of the above a normal login still works,
    and nothing went wrong inside the gateway."""
    with _client(gw, 77, True) as c:
        lines = c.command(b"l", f'LOGIN alice "{alice_password}"'.encode())
        assert lines[-1].startswith(b"l OK "), lines
        assert c.command(b"n", b"NOOP")[-1].startswith(b"n OK")
    assert gw.proc is not None
    assert gw.proc.poll() is None
    assert "Traceback" not in gw.log_text()
    assert "connection task failed" not in gw.log_text()
