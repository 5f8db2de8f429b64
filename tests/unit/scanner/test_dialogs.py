"""The scanner's sans-IO dialogs: server bytes in, complete responses out; client
commands out as exact bytes. Transcripts are spelled out as the RFCs show them."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imapguard.scanner import dialogs as d
from imapguard.scanner.model import Protocol
from imapguard.secret import Secret

# -- helpers ---------------------------------------------------------------------------


def drain(parser: d.ResponseParser[Any]) -> list[Any]:
    out = []
    while (item := parser.next()) is not None:
        out.append(item)
    return out


def run(
    make: Callable[[], d.ResponseParser[Any]], chunks: Sequence[bytes]
) -> tuple[list[Any], str | None]:
    """Responses from feeding `chunks` in order, and the error class raised (if any)."""
    parser = make()
    out: list[Any] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            out += drain(parser)
    except d.DialogError as exc:
        return out + drain(parser), type(exc).__name__
    return out, None


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


def one(make: Callable[[], d.ResponseParser[Any]], data: bytes) -> Any:
    parser = make()
    parser.feed(data)
    items = drain(parser)
    assert len(items) == 1, items
    return items[0]


# -- greeting sniffing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "protocol"),
    [
        (b"* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.", Protocol.IMAP),
        (b"* ok hello", Protocol.IMAP),
        (b"* PREAUTH Logged in as bob", Protocol.IMAP),
        (b"* BYE Too many connections", Protocol.IMAP),
        (b"+OK Dovecot ready. <1.2@host>", Protocol.POP3),
        (b"-ERR [SYS/TEMP] Too many connections", Protocol.POP3),
        (b"220 mail.example.org ESMTP Postfix", Protocol.SMTP),
        (b"220-mail.example.org ESMTP", Protocol.SMTP),
        (b"421 4.7.0 Too many connections", Protocol.SMTP),
        (b"554 No SMTP service here", Protocol.SMTP),
        (b'"IMPLEMENTATION" "Dovecot Pigeonhole"', Protocol.SIEVE),
        (b'"SIEVE" "fileinto reject"', Protocol.SIEVE),
        (b"HTTP/1.1 400 Bad Request", None),
        (b"SSH-2.0-OpenSSH_9.2", None),
        (b"* LIST () NIL INBOX", None),
        (b"150 Opening data connection", None),
        (b"", None),
    ],
)
def test_sniff_greeting(line: bytes, protocol: Protocol | None) -> None:
    assert d.sniff_greeting(line) is protocol


def test_sieve_capability_lines() -> None:
    assert d.parse_sieve_line(b'"IMPLEMENTATION" "Dovecot Pigeonhole"') == (
        "IMPLEMENTATION",
        "Dovecot Pigeonhole",
    )
    assert d.parse_sieve_line(b'"STARTTLS"') == ("STARTTLS", "")
    assert d.parse_sieve_line(b'OK "Ready."') is None


# -- IMAP -----------------------------------------------------------------------------


def test_imap_greeting_with_capability_code() -> None:
    greeting = one(
        d.ImapParser,
        b"* OK [CAPABILITY IMAP4rev1 starttls LoginDisabled AUTH=plain] Dovecot ready.\r\n",
    )
    assert greeting.kind is d.ImapKind.UNTAGGED
    assert (greeting.status, greeting.code, greeting.text) == ("OK", "CAPABILITY", "Dovecot ready.")
    # Capability names are case-insensitive: upper case, order kept.
    assert greeting.capabilities() == ("IMAP4REV1", "STARTTLS", "LOGINDISABLED", "AUTH=PLAIN")


def test_imap_transcript_capability_then_tagged() -> None:
    parser = d.ImapParser()
    parser.feed(
        b"* CAPABILITY IMAP4rev1 ID STARTTLS ID\r\n"
        b"s1 OK Pre-login capabilities listed, post-login capabilities have more.\r\n"
        b"* BAD [ALERT] Plaintext authentication not allowed without SSL/TLS\r\n"
        b"s2 NO [PRIVACYREQUIRED] Plaintext authentication disallowed.\r\n"
        b"+ \r\n"
        b"+\r\n"
        b"* 3 EXISTS\r\n"
    )
    caps, ok, alert, privacy, cont, bare, exists = drain(parser)
    assert caps.name == "CAPABILITY"
    assert caps.capabilities() == ("IMAP4REV1", "ID", "STARTTLS")
    assert (ok.kind, ok.tag, ok.status, ok.code) == (d.ImapKind.TAGGED, "s1", "OK", "")
    assert (alert.status, alert.code) == ("BAD", "ALERT")
    assert (privacy.tag, privacy.status, privacy.code) == ("s2", "NO", "PRIVACYREQUIRED")
    assert privacy.text == "Plaintext authentication disallowed."
    assert cont.kind is bare.kind is d.ImapKind.CONTINUATION
    assert (exists.name, exists.text) == ("EXISTS", "3")
    assert parser.buffered == 0


def test_imap_partial_response_is_held_back() -> None:
    parser = d.ImapParser()
    parser.feed(b"s1 OK [CAPABILITY IMAP4rev1")
    assert parser.next() is None
    assert parser.buffered > 0
    parser.feed(b" STARTTLS] done\r\ns2 O")
    response = parser.next()
    assert response is not None
    assert response.capabilities() == ("IMAP4REV1", "STARTTLS")
    assert parser.next() is None
    assert parser.buffered == len(b"s2 O")


def test_imap_literal_in_id_response() -> None:
    parser = d.ImapParser()
    data = b'* ID ("name" {7}\r\nDovecot "version" "2.3.19" "os" NIL)\r\ns1 OK ID done\r\n'
    items, error = run(d.ImapParser, [data])
    assert error is None
    response, tagged = items
    assert response.name == "ID"
    assert tagged.tag == "s1"
    assert d.parse_imap_id(response.line.split(b" ", 2)[2]) == {
        "name": "Dovecot",
        "version": "2.3.19",
        "os": None,
    }
    # A literal's bytes are never searched for line ends.
    parser.feed(b'* ID ("name" {11}\r\nab\r\ns1 OK\r\n)\r\n')
    (only,) = drain(parser)
    assert only.name == "ID"
    assert b"s1 OK" in only.line


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('("name" "Dovecot")', {"name": "Dovecot"}),
        ('("Name" "Cyrus" "Version" "3.2.6")', {"name": "Cyrus", "version": "3.2.6"}),
        ('("name" "a \\"quoted\\" \\\\ name")', {"name": 'a "quoted" \\ name'}),
        ("()", {}),
        ("NIL", None),
        ("nil", None),
    ],
)
def test_parse_imap_id(data: str, expected: dict[str, str | None] | None) -> None:
    assert d.parse_imap_id(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        '("name")',
        '("name" "x"',
        '"name" "x"',
        '("name" "x") junk',
        '(NIL "x")',
        '("a" {5}\r\nab)',
    ],
)
def test_parse_imap_id_refuses_garbage(data: str) -> None:
    with pytest.raises(d.MalformedResponse):
        d.parse_imap_id(data)


@pytest.mark.parametrize(
    "line",
    [b"s1 MAYBE done", b"s1", b"s(1 OK fine", b"* ", b"+foo OK bar"],
)
def test_imap_malformed_lines(line: bytes) -> None:
    parser = d.ImapParser()
    with pytest.raises(d.MalformedResponse):
        parser.feed(line + b"\r\n")


def test_imap_line_limit_is_enforced_and_sticky() -> None:
    parser = d.ImapParser()
    with pytest.raises(d.ResponseTooLong) as first:
        parser.feed(b"* OK " + b"x" * d.MAX_LINE)
    assert first.value.protocol == "imap"
    with pytest.raises(d.ResponseTooLong):
        parser.feed(b"\r\n")  # a broken parser stays broken


def test_imap_line_at_the_limit_is_accepted() -> None:
    line = b"* OK " + b"x" * (d.MAX_LINE - 6)  # with CR: exactly MAX_LINE
    assert one(d.ImapParser, line + b"\r\n").status == "OK"


def test_imap_literal_limit() -> None:
    parser = d.ImapParser()
    with pytest.raises(d.ResponseTooLong, match="literal"):
        parser.feed(b'* ID ("name" {%d}\r\n' % (d.MAX_LITERAL + 1))


def test_imap_response_limit_over_many_literals() -> None:
    chunk = b" {%d}\r\n" % d.MAX_LITERAL + b"x" * d.MAX_LITERAL
    data = b"* ID" + chunk * (d.MAX_RESPONSE_BYTES // d.MAX_LITERAL + 1)
    with pytest.raises(d.ResponseTooLong, match="response longer"):
        d.ImapParser().feed(data)


def test_imap_responses_before_an_error_are_kept() -> None:
    items, error = run(d.ImapParser, [b"* OK hi\r\nbroken line\r\n"])
    assert error == "MalformedResponse"
    assert [i.status for i in items] == ["OK"]


# -- POP3 -----------------------------------------------------------------------------


def test_pop3_transcript_capa_with_dot_unstuffing() -> None:
    parser = d.Pop3Parser()
    parser.feed(b"+OK Dovecot ready. <123.4@host>\r\n")
    greeting = parser.next()
    assert greeting is not None
    assert greeting.ok
    assert greeting.text.startswith("Dovecot ready.")
    parser.expect(True)  # CAPA
    parser.expect(False)  # STLS
    parser.feed(b"+OK\r\nTOP\r\nUSER\r\n..hidden\r\nSASL plain Login\r\nIMPLEMENTATION ")
    assert parser.next() is None
    parser.feed(b"Cyrus POP3 v3.2.6\r\n.\r\n+OK Begin TLS negotiation now.\r\n")
    capa, stls = drain(parser)
    assert capa.lines == (
        "TOP",
        "USER",
        ".hidden",
        "SASL plain Login",
        "IMPLEMENTATION Cyrus POP3 v3.2.6",
    )
    assert d.parse_capa(capa.lines) == {
        "TOP": (),
        "USER": (),
        ".HIDDEN": (),
        "SASL": ("PLAIN", "LOGIN"),
        "IMPLEMENTATION": ("Cyrus", "POP3", "v3.2.6"),
    }
    assert stls.ok
    assert stls.lines == ()


def test_pop3_err_and_continuation_are_single_lines() -> None:
    parser = d.Pop3Parser()
    parser.expect(True)
    parser.expect(True)
    parser.feed(b"-ERR [SYS/TEMP] try later\r\n+ TlRMTVNTUAAC\r\n")
    err, cont = drain(parser)
    assert (err.kind, err.code, err.text) == (d.Pop3Kind.ERR, "SYS/TEMP", "try later")
    assert (cont.kind, cont.text) == (d.Pop3Kind.CONTINUATION, "TlRMTVNTUAAC")


def test_pop3_unexpected_response_reads_as_one_line() -> None:
    parser = d.Pop3Parser()
    parser.feed(b"+OK\r\n")  # nobody asked: the greeting, or an unsolicited answer
    response = parser.next()
    assert response is not None
    assert response.ok
    assert response.lines == ()


@pytest.mark.parametrize("line", [b"OK hello", b"+OKAY", b"-ERROR x", b"250 ok"])
def test_pop3_malformed(line: bytes) -> None:
    with pytest.raises(d.MalformedResponse):
        d.Pop3Parser().feed(line + b"\r\n")


def test_pop3_body_line_limit() -> None:
    parser = d.Pop3Parser()
    parser.expect(True)
    with pytest.raises(d.ResponseTooLong, match="lines"):
        parser.feed(b"+OK\r\n" + b"X\r\n" * (d.MAX_RESPONSE_LINES + 1))


# -- SMTP -----------------------------------------------------------------------------


def test_smtp_multiline_ehlo() -> None:
    parser = d.SmtpParser()
    parser.feed(
        b"250-mail.example.org Hello client\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
        b"250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=CRAM-MD5\r\n250 8BITMIME\r\n"
    )
    reply = parser.next()
    assert reply is not None
    assert reply.code == 250
    assert len(reply.lines) == 7
    ehlo = d.parse_ehlo(reply)
    assert (ehlo.domain, ehlo.greet) == ("mail.example.org", "Hello client")
    assert ehlo.auth == ("PLAIN", "LOGIN", "CRAM-MD5")
    assert ehlo.keywords["SIZE"] == ("10240000",)
    assert "STARTTLS" in ehlo.keywords
    assert ehlo.lines[0] == "PIPELINING"


def test_smtp_enhanced_status_codes_and_bare_code() -> None:
    parser = d.SmtpParser()
    parser.feed(b"530 5.7.0 Must issue a STARTTLS command first\r\n250\r\n550 4.1.1 odd\r\n")
    must, bare, odd = drain(parser)
    assert (must.code, must.enhanced, must.text) == (
        530,
        "5.7.0",
        "Must issue a STARTTLS command first",
    )
    assert (bare.code, bare.lines, bare.enhanced) == (250, ("",), "")
    assert odd.enhanced == ""  # the class must match the reply's first digit


def test_smtp_reply_waits_for_its_last_line() -> None:
    parser = d.SmtpParser()
    parser.feed(b"220-mail.example.org ESMTP\r\n220-second line")
    assert parser.next() is None
    parser.feed(b"\r\n220 last\r\n")
    reply = parser.next()
    assert reply is not None
    assert reply.lines == ("mail.example.org ESMTP", "second line", "last")
    assert reply.shown() == "220-mail.example.org ESMTP (+2 lines)"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"250-first\r\n251 second\r\n", d.MalformedResponse),
        (b"hello\r\n", d.MalformedResponse),
        (b"25 short\r\n", d.MalformedResponse),
        (b"250-x\r\n" * (d.MAX_RESPONSE_LINES + 1), d.ResponseTooLong),
    ],
)
def test_smtp_refuses(data: bytes, error: type[d.DialogError]) -> None:
    with pytest.raises(error):
        d.SmtpParser().feed(data)


def test_sasl_mechanisms_per_protocol() -> None:
    assert d.sasl_mechanisms(Protocol.IMAP, ("IMAP4REV1", "AUTH=PLAIN", "AUTH=NTLM")) == (
        "PLAIN",
        "NTLM",
    )
    assert d.sasl_mechanisms(Protocol.POP3, ("USER", "SASL plain CRAM-MD5")) == (
        "PLAIN",
        "CRAM-MD5",
    )
    assert d.sasl_mechanisms(Protocol.SMTP, ("STARTTLS", "AUTH LOGIN")) == ("LOGIN",)
    assert d.sasl_mechanisms(Protocol.SMTP, ("AUTH=PLAIN",)) == ()


# -- client commands ----------------------------------------------------------------------


def test_commands_are_exact_bytes() -> None:
    tags = d.TagSequence("s")
    assert d.imap_command(tags.next(), "CAPABILITY").wire == b"s1 CAPABILITY\r\n"
    assert d.imap_command(tags.next(), "ID NIL").wire == b"s2 ID NIL\r\n"
    assert d.pop3_command("STLS").wire == b"STLS\r\n"
    assert d.pop3_user("probe").wire == b"USER probe\r\n"
    assert d.smtp_command("EHLO scan.invalid").wire == b"EHLO scan.invalid\r\n"
    both = d.imap_command("s3", "STARTTLS") + d.imap_command("s4", "NOOP")
    assert both.wire == b"s3 STARTTLS\r\ns4 NOOP\r\n"
    assert both.shown == "s3 STARTTLS + s4 NOOP"


def test_secrets_go_on_the_wire_but_never_into_shown() -> None:
    password = Secret('pa"ss\\word')
    login = d.imap_login("s1", "probe", password)
    assert login.wire == b's1 LOGIN "probe" "pa\\"ss\\\\word"\r\n'
    assert login.shown == "s1 LOGIN probe ***"
    plain = d.smtp_auth_plain("probe", Secret("hunter2"))
    assert plain.wire == b"AUTH PLAIN " + base64.b64encode(b"\0probe\0hunter2") + b"\r\n"
    assert "hunter2" not in plain.shown
    assert "AHByb2Jl" not in plain.shown
    response = d.sasl_plain_command("probe", Secret("hunter2"))
    assert "hunter2" not in response.shown


@pytest.mark.parametrize("bad", ["x\r\nLOGOUT", "x\n", "x\0"])
def test_commands_refuse_line_breaks(bad: str) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        d.smtp_command(f"VRFY {bad}")
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        d.imap_login("s1", bad, Secret("x"))


def test_a_bad_password_is_refused_without_echo() -> None:
    with pytest.raises(ValueError, match="password") as raised:
        d.imap_login("s1", "probe", Secret("secret\r\nDELETE"))
    assert "secret" not in str(raised.value)


def test_tag_sequence_refuses_plus() -> None:
    with pytest.raises(ValueError, match="tag prefix"):
        d.TagSequence("a+")


# -- NTLM ------------------------------------------------------------------------------


def _av(av_id: int, text: str) -> bytes:
    value = text.encode("utf-16-le")
    return struct.pack("<HH", av_id, len(value)) + value


def ntlm_challenge(
    target: str, pairs: Sequence[tuple[int, str]], version: tuple[int, int, int] | None
) -> bytes:
    """A CHALLENGE_MESSAGE packed by hand from MS-NLMP §2.2.1.2."""
    flags = 0x00000001 | 0x00800000 | (0x02000000 if version else 0)
    target_bytes = target.encode("utf-16-le")
    info = b"".join(_av(i, t) for i, t in pairs) + struct.pack("<HH", 0, 0)
    header = 56
    fields = struct.pack("<HHI", len(target_bytes), len(target_bytes), header)
    info_field = struct.pack("<HHI", len(info), len(info), header + len(target_bytes))
    version_bytes = struct.pack("<BBH3xB", *version, 15) if version else bytes(8)
    body = (
        b"NTLMSSP\0"
        + struct.pack("<I", 2)
        + fields
        + struct.pack("<I", flags)
        + b"\x01\x23\x45\x67\x89\xab\xcd\xef"
        + bytes(8)
        + info_field
        + version_bytes
    )
    assert len(body) == header
    return body + target_bytes + info


def test_ntlm_negotiate_message() -> None:
    blob = d.ntlm_negotiate()
    assert blob[:8] == b"NTLMSSP\0"
    assert struct.unpack_from("<I", blob, 8) == (1,)
    (flags,) = struct.unpack_from("<I", blob, 12)
    assert flags & 0x00800000  # asks for the target information
    assert struct.unpack_from("<HH", blob, 16) == (0, 0)  # no domain of ours
    assert struct.unpack_from("<HH", blob, 24) == (0, 0)  # no workstation of ours


def test_ntlm_challenge_discloses_names_and_version() -> None:
    blob = ntlm_challenge(
        "CORP",
        [(1, "MAIL01"), (2, "CORP"), (3, "mail01.corp.local"), (4, "corp.local"), (7, "x")],
        (10, 0, 17763),
    )
    challenge = d.parse_ntlm_challenge(base64.b64encode(blob).decode())
    assert challenge.target == "CORP"
    assert challenge.names == (
        ("NetBIOS computer", "MAIL01"),
        ("NetBIOS domain", "CORP"),
        ("DNS computer", "mail01.corp.local"),
        ("DNS domain", "corp.local"),
    )
    assert challenge.os_version == "10.0 build 17763"
    assert "OS version 10.0 build 17763" in challenge.disclosed()


def test_ntlm_challenge_without_names_discloses_nothing() -> None:
    challenge = d.parse_ntlm_challenge(ntlm_challenge("", [], None))
    assert challenge.disclosed() == ()


@pytest.mark.parametrize(
    "data",
    [
        "not base64!",
        base64.b64encode(b"NTLMSSP\0" + bytes(40)).decode(),  # type 0, too
        base64.b64encode(b"HELLO").decode(),
        base64.b64encode(d.ntlm_negotiate() + bytes(16)).decode(),  # a type-1 message
    ],
)
def test_ntlm_garbage_is_refused(data: str) -> None:
    with pytest.raises(d.MalformedResponse):
        d.parse_ntlm_challenge(data)


def test_ntlm_truncated_target_info() -> None:
    blob = bytearray(ntlm_challenge("", [(3, "host.example")], None))
    struct.pack_into("<HH", blob, 40, len(blob), len(blob))  # points past the end
    with pytest.raises(d.MalformedResponse):
        d.parse_ntlm_challenge(bytes(blob))


# -- properties: whole, byte by byte, or in any chunks, the same responses ----------------

_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='\\"{}[]'),
    max_size=30,
)
_IMAP_LINES = st.one_of(
    _TEXT.map(lambda t: f"* OK {t}"),
    _TEXT.map(lambda t: f"* CAPABILITY IMAP4rev1 {t}"),
    _TEXT.map(lambda t: f"a1 NO [AUTHENTICATIONFAILED] {t}"),
    _TEXT.map(lambda t: f"+ {t}"),
    _TEXT.map(lambda t: f'* ID ("name" {{{len(t)}}}\r\n{t})'),
)


def _parse_chunks(
    make: Callable[[], d.ResponseParser[Any]], data: bytes, cuts: Sequence[int]
) -> None:
    whole = run(make, [data])
    bytewise = run(make, [data[i : i + 1] for i in range(len(data))])
    chunked = run(make, split_at(data, cuts))
    assert whole == bytewise == chunked


@settings(max_examples=150, deadline=None)
@given(st.lists(_IMAP_LINES, max_size=6), st.lists(st.integers(min_value=0), max_size=6))
def test_imap_stream_splitting_does_not_matter(lines: list[str], cuts: list[int]) -> None:
    data = "".join(f"{line}\r\n" for line in lines).encode()
    items, error = run(d.ImapParser, [data])
    assert error is None
    assert len(items) == len(lines)
    _parse_chunks(d.ImapParser, data, cuts)


_SMTP_REPLIES = st.builds(
    lambda code, texts: "".join(
        f"{code}{'-' if i < len(texts) - 1 else ' '}{t}\r\n" for i, t in enumerate(texts)
    ),
    st.sampled_from([220, 250, 334, 421, 530, 535]),
    st.lists(_TEXT, min_size=1, max_size=5),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_SMTP_REPLIES, max_size=5), st.lists(st.integers(min_value=0), max_size=6))
def test_smtp_stream_splitting_does_not_matter(replies: list[str], cuts: list[int]) -> None:
    data = "".join(replies).encode()
    items, error = run(d.SmtpParser, [data])
    assert error is None
    assert len(items) == len(replies)
    _parse_chunks(d.SmtpParser, data, cuts)


def _pop3_parser(expectations: Sequence[bool]) -> Callable[[], d.ResponseParser[Any]]:
    def make() -> d.ResponseParser[Any]:
        parser = d.Pop3Parser()
        for multiline in expectations:
            parser.expect(multiline)
        return parser

    return make


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.lists(_TEXT, max_size=4)), max_size=5),
    st.lists(st.integers(min_value=0), max_size=6),
)
def test_pop3_stream_splitting_does_not_matter(
    responses: list[tuple[bool, list[str]]], cuts: list[int]
) -> None:
    data = b""
    for multiline, body in responses:
        data += b"+OK\r\n"
        if multiline:
            data += "".join(f"{'.' if t.startswith('.') else ''}{t}\r\n" for t in body).encode()
            data += b".\r\n"
    make = _pop3_parser([m for m, _ in responses])
    items, error = run(make, [data])
    assert error is None
    assert [i.lines for i in items] == [tuple(b) if m else () for m, b in responses]
    _parse_chunks(make, data, cuts)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=8))
def test_random_bytes_parse_or_raise_the_same_way(data: bytes, cuts: list[int]) -> None:
    for make in (d.ImapParser, d.SmtpParser, _pop3_parser([True, False, True]), d.LineParser):
        _parse_chunks(make, data, cuts)
