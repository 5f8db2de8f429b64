"""imap/responses.py, the IMAP response reader, as transcripts: the server's bytes
in, the responses (or the one error) out, whatever way the bytes are split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imapguard.imap.responses import (
    Response,
    ResponseError,
    ResponseKind,
    ResponseLimitExceeded,
    ResponseLimits,
    ResponseReader,
    ResponseSyntaxError,
    canonical_capabilities,
    is_tag,
)

SMALL = ResponseLimits(max_line=32, max_literal=16, max_response=64)


def read(data: bytes, limits: ResponseLimits | None = None) -> list[Response]:
    reader = ResponseReader(Response, limits)
    reader.feed(data)
    out = []
    while (response := reader.next()) is not None:
        out.append(response)
    return out


def read_split(
    chunks: list[bytes], limits: ResponseLimits | None = None
) -> tuple[list[Response], tuple[type[ResponseError], str] | None]:
    """The responses of `chunks` fed one after the other, and the error (class and
    reason; the excerpt of a line still without its end is what had arrived)."""
    reader = ResponseReader(Response, limits)
    out: list[Response] = []
    error = None
    for chunk in chunks:
        try:
            reader.feed(chunk)
        except ResponseError as exc:
            error = (type(exc), exc.reason)
        while (response := reader.next()) is not None:
            out.append(response)
        if error:
            break
    return out, error


def test_upstream_login_transcript() -> None:
    """What the gateway reads while it logs in: greeting with capabilities as a
    response code, the ID answer, the SASL continuation, the tagged OK."""
    greeting, id_data, id_ok, plus, login_ok = read(
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN] Dovecot ready.\r\n"
        b'* ID ("name" "Dovecot")\r\n'
        b"g1 OK ID completed.\r\n"
        b"+ \r\n"
        b"g2 OK [CAPABILITY IMAP4rev1 IDLE Move] Logged in\r\n"
    )
    assert (greeting.kind, greeting.status, greeting.code) == (
        ResponseKind.UNTAGGED,
        "OK",
        "CAPABILITY",
    )
    assert greeting.text == "Dovecot ready."
    assert greeting.capability_atoms() == ("IMAP4rev1", "SASL-IR", "ID", "AUTH=PLAIN")
    assert (id_data.name, id_data.text) == ("ID", '("name" "Dovecot")')
    assert (id_ok.kind, id_ok.tag, id_ok.status) == (ResponseKind.TAGGED, "g1", "OK")
    assert (plus.kind, plus.tag, plus.text) == (ResponseKind.CONTINUATION, "+", "")
    # The server's spelling is kept for whoever relays the list; decisions use
    # the canonical form (names are case-insensitive).
    assert login_ok.capability_atoms() == ("IMAP4rev1", "IDLE", "Move")
    assert login_ok.capabilities() == ("IMAP4REV1", "IDLE", "MOVE")
    assert login_ok.text == "Logged in"


@pytest.mark.parametrize(
    ("line", "status"),
    [(b"* OK ready", "OK"), (b"* PREAUTH as bob", "PREAUTH"), (b"* BYE too many", "BYE")],
)
def test_greeting_status(line: bytes, status: str) -> None:
    (greeting,) = read(line + b"\r\n")
    assert (greeting.kind, greeting.tag, greeting.status) == (ResponseKind.UNTAGGED, "*", status)
    assert greeting.capabilities() is None


def test_tagged_refusals_keep_their_response_code() -> None:
    no, bad, unavailable = read(
        b"g2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        b"g3 BAD Error in IMAP command\r\n"
        b"g4 no [unavailable] backend down\r\n"
    )
    assert (no.tag, no.status, no.code, no.text) == (
        "g2",
        "NO",
        "AUTHENTICATIONFAILED",
        "Authentication failed.",
    )
    assert (bad.status, bad.code, bad.text) == ("BAD", "", "Error in IMAP command")
    assert (unavailable.status, unavailable.code) == ("NO", "UNAVAILABLE")


def test_untagged_capability_and_numbered_data() -> None:
    caps, exists = read(b"* CAPABILITY IMAP4rev1 imap4rev1 STARTTLS\r\n* 3 EXISTS\r\n")
    assert caps.capabilities() == ("IMAP4REV1", "STARTTLS")
    assert caps.capability_atoms() == ("IMAP4rev1", "imap4rev1", "STARTTLS")
    assert (exists.name, exists.text) == ("EXISTS", "3")


def test_code_with_arguments_and_an_unterminated_code() -> None:
    ok, odd = read(b"a1 OK [APPENDUID 38505 3955] done\r\na2 OK [ALERT no end\r\n")
    assert (ok.code, ok.code_text, ok.text) == ("APPENDUID", "38505 3955", "done")
    assert (odd.code, odd.text) == ("", "[ALERT no end")


def test_literal_bytes_are_never_read_as_a_response() -> None:
    (only,) = read(b'* ID ("name" {11}\r\nab\r\ng1 OK\r\n)\r\ng2 OK')
    assert only.name == "ID"
    assert only.line == b'* ID ("name" {11}\r\nab\r\ng1 OK\r\n)'


def test_continuation_never_carries_a_literal() -> None:
    """A challenge whose text happens to end like a literal marker is one line."""
    plus, ok = read(b"+ aGk{5}\r\ng1 OK done\r\n")
    assert (plus.kind, plus.text) == (ResponseKind.CONTINUATION, "aGk{5}")
    assert ok.status == "OK"


def test_bare_lf_is_tolerated() -> None:
    (ok,) = read(b"g1 OK fine\n")
    assert (ok.status, ok.line) == ("OK", b"g1 OK fine")


def test_bytes_after_the_answer_are_handed_over() -> None:
    """After `g0 OK` to STARTTLS, anything more is an injection: the caller sees it."""
    reader = ResponseReader(Response)
    reader.feed(b"g0 OK Begin TLS\r\n* OK injected\r\ng1 O")
    assert reader.next() is not None
    assert reader.next() is not None
    assert reader.buffered == len(b"g1 O")
    assert reader.take_unparsed() == b"g1 O"
    assert reader.buffered == 0
    assert reader.next() is None


def test_a_response_under_way_is_part_of_the_unparsed_bytes() -> None:
    reader = ResponseReader(Response)
    reader.feed(b'* ID ("name" {5}\r\nab')
    assert reader.next() is None
    assert reader.take_unparsed() == b'* ID ("name" {5}\r\nab'


@pytest.mark.parametrize(
    "line", [b"s1 MAYBE done", b"s1", b"s(1 OK fine", b"* ", b"+foo OK bar", b"g1 PREAUTH x"]
)
def test_malformed_responses(line: bytes) -> None:
    with pytest.raises(ResponseSyntaxError) as caught:
        read(line + b"\r\n")
    assert caught.value.excerpt == line


def test_line_limit_counts_the_cr_and_is_sticky() -> None:
    at_limit = b"* OK " + b"x" * (SMALL.max_line - 6)  # with its CR: exactly max_line
    assert read(at_limit + b"\r\n", SMALL)[0].status == "OK"
    reader = ResponseReader(Response, SMALL)
    with pytest.raises(ResponseLimitExceeded, match="line longer than 32 bytes"):
        reader.feed(at_limit + b"xx")  # no line end yet, and already too long
    with pytest.raises(ResponseLimitExceeded):
        reader.feed(b"\r\n")  # a broken reader stays broken


def test_literal_limit() -> None:
    with pytest.raises(ResponseLimitExceeded, match="literal of 17 bytes"):
        read(b'* ID ("a" {17}\r\n', SMALL)
    assert read(b'* ID ("a" {16}\r\n' + b"y" * 16 + b")\r\n", SMALL)[0].name == "ID"


def test_response_limit_over_many_literals() -> None:
    chunk = b" {16}\r\n" + b"z" * 16
    with pytest.raises(ResponseLimitExceeded, match="response longer than 64 bytes"):
        read(b"* ID" + chunk * 3, SMALL)


def test_a_reader_that_refused_bytes_stays_broken() -> None:
    """After a malformed response nothing more is parsed, even valid bytes: the
    stream is out of step and whatever follows cannot be trusted."""
    reader = ResponseReader(Response)
    with pytest.raises(ResponseSyntaxError) as first:
        reader.feed(b"junk\r\n")
    with pytest.raises(ResponseSyntaxError) as again:
        reader.feed(b"* OK fine\r\n")
    assert again.value is first.value
    assert reader.next() is None


def test_responses_before_an_error_are_kept() -> None:
    out, error = read_split([b"* OK hi\r\nbroken line\r\n"])
    assert [r.status for r in out] == ["OK"]
    assert error is not None
    assert error[0] is ResponseSyntaxError


def test_tags() -> None:
    assert is_tag("g1")
    assert is_tag("A0001.x")
    assert not any(is_tag(t) for t in ("", "a b", "a+", "*", "{1}", "é"))
    assert canonical_capabilities("a B a") == ("A", "B")


_PIECES = st.sampled_from(
    [
        b"* OK [CAPABILITY IMAP4rev1 X] hi\r\n",
        b'* ID ("name" {5}\r\nab\r\nc)\r\n',
        b"+ Zm9v\r\n",
        b"g1 NO [UNAVAILABLE] later\r\n",
        b"* 1 EXISTS\n",
        b"x" * 40,
        b"{20}\r\n",
        b"junk here\r\n",
        b"\r\n",
    ]
)


@given(st.lists(_PIECES, max_size=6), st.lists(st.integers(0, 400), max_size=8))
def test_splitting_the_reads_changes_nothing(pieces: list[bytes], cuts: list[int]) -> None:
    data = b"".join(pieces)
    whole = read_split([data], SMALL)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert read_split(chunks, SMALL) == whole
    assert read_split([data[i : i + 1] for i in range(len(data))], SMALL) == whole


def test_take_rest_hands_over_every_byte_not_taken_as_received() -> None:
    """After a login, what the server sent past its last answer belongs to the
    client, complete responses included, byte for byte (a bare LF stays one)."""
    reader: ResponseReader[Response] = ResponseReader(Response)
    reader.feed(b"a OK done\r\n* 3 EXISTS\n* 1 RECENT\r\n* pa")
    first = reader.next()
    assert first is not None
    assert first.tag == "a"
    assert reader.completed == 3
    assert reader.take_rest() == b"* 3 EXISTS\n* 1 RECENT\r\n* pa"
    assert reader.next() is None
    assert reader.take_rest() == b""
