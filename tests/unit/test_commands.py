"""The pre-auth command grammar: one frame in, one typed command or ParseError out."""

from __future__ import annotations

import base64

import pytest

from imapguard.imap.commands import (
    MAX_ID_PAIRS,
    MAX_ID_VALUE,
    Authenticate,
    Capability,
    Command,
    Id,
    Login,
    Logout,
    Noop,
    ParseError,
    StartTls,
    Unknown,
    parse_command,
    peek_name,
)
from imapguard.imap.framing import NEED_DATA, ContinuationRequest, Frame, Framer
from imapguard.secret import Secret

MAX_TAG = 64


def parse(data: bytes) -> Command | ParseError:
    """Frame `data` (one command; "+" continuations are skipped) and parse it."""
    framer = Framer()
    framer.feed(data)
    frames = []
    while (event := framer.next_event()) is not NEED_DATA:
        if not isinstance(event, ContinuationRequest):
            frames.append(event)
    assert framer.buffered == 0
    assert len(frames) == 1
    assert isinstance(frames[0], Frame)
    return parse_command(frames[0], MAX_TAG)


def login(tag: bytes, user: bytes, password: bytes) -> Login:
    return Login(tag, user, Secret(password))


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# -- commands without arguments ---------------------------------------------------


@pytest.mark.parametrize(
    ("data", "command"),
    [
        (b"a CAPABILITY\r\n", Capability(b"a")),
        (b"a1 NOOP\r\n", Noop(b"a1")),
        (b"x LOGOUT\r\n", Logout(b"x")),
        (b"t STARTTLS\r\n", StartTls(b"t")),
        (b"a capability\r\n", Capability(b"a")),
        (b"a NoOp\n", Noop(b"a")),
        (b"a starttls\r\n", StartTls(b"a")),
    ],
)
def test_commands_without_arguments(data: bytes, command: Command) -> None:
    assert parse(data) == command


@pytest.mark.parametrize(
    "data",
    [b"a CAPABILITY x\r\n", b"a NOOP \r\n", b"a LOGOUT now\r\n", b"a STARTTLS {0+}\r\n\r\n"],
)
def test_trailing_data_is_a_parse_error_with_the_tag(data: bytes) -> None:
    assert parse(data) == ParseError(b"a", "Invalid arguments: unexpected data after the command.")


# -- LOGIN -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "user", "password"),
    [
        (b"a LOGIN alice secret\r\n", b"alice", b"secret"),
        (
            b"a login alice@example.org p4ss!#$&'+-./:;<=>?@[]^_`|}~\r\n",
            b"alice@example.org",
            b"p4ss!#$&'+-./:;<=>?@[]^_`|}~",
        ),
        (b'a LOGIN "alice" "se cret"\r\n', b"alice", b"se cret"),
        (b'a LOGIN "a\\"b" "c\\\\d"\r\n', b'a"b', b"c\\d"),
        (b'a LOGIN "" ""\r\n', b"", b""),
        (b'a LOGIN "\xc3\xa9" x\r\n', b"\xc3\xa9", b"x"),
        (b"a LOGIN NIL NIL\r\n", b"NIL", b"NIL"),
        (b"a LOGIN {5}\r\nalice {6}\r\nsecret\r\n", b"alice", b"secret"),
        (b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n", b"alice", b"secret"),
        (b"a LOGIN alice {8+}\r\n\r\nb NOOP\r\n", b"alice", b"\r\nb NOOP"),
        (b"a LOGIN {0}\r\n {0}\r\n\r\n", b"", b""),
        (b'a LOGIN {5+}\r\nalice "pw"\r\n', b"alice", b"pw"),
        (b"a LOGIN {2+}\r\n\xff\xfe x\r\n", b"\xff\xfe", b"x"),
    ],
)
def test_login(data: bytes, user: bytes, password: bytes) -> None:
    assert parse(data) == login(b"a", user, password)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"a LOGIN\r\n", "expected ' '"),
        (b"a LOGIN alice\r\n", "expected ' '"),
        (b"a LOGIN alice \r\n", "expected an astring"),
        (b"a LOGIN  alice pw\r\n", "expected an astring"),
        (b'a LOGIN "alice pw\r\n', "unterminated quoted string"),
        (b'a LOGIN "al\rice" pw\r\n', "control character in quoted string"),
        (b'a LOGIN "al\x00ice" pw\r\n', "control character in quoted string"),
        (b'a LOGIN "al\\ice" pw\r\n', "bad escape in quoted string"),
        (b"a LOGIN al(ice pw\r\n", "expected ' '"),
        (b"a LOGIN al%ice pw\r\n", "expected ' '"),
        (b"a LOGIN al*ice pw\r\n", "expected ' '"),
        (b"a LOGIN al\x7fice pw\r\n", "expected ' '"),
        (b"a LOGIN {5+}\r\nal\x00ce pw\r\n", "NUL in literal"),
        (b"a LOGIN alice {3+}\r\n\x00\x00\x00\r\n", "NUL in literal"),
        (b"a LOGIN {5\r\n", "expected an astring"),
    ],
)
def test_login_rejects(data: bytes, text: str) -> None:
    assert parse(data) == ParseError(b"a", f"Invalid arguments: {text}.")


def test_login_quoted_with_lf_is_rejected() -> None:
    # The framer splits at LF, so build the frame by hand: the grammar itself
    # must still refuse it.
    frame = Frame((b'a LOGIN "al\nice" pw',), ())
    assert parse_command(frame, MAX_TAG) == ParseError(
        b"a", "Invalid arguments: control character in quoted string."
    )


@pytest.mark.parametrize(
    "data",
    [
        b"a LOGIN alice pw extra\r\n",
        b"a LOGIN alice pw \r\n",
        b'a LOGIN alice "pw"x\r\n',
        b"a LOGIN alice {2+}\r\npw x\r\n",
        b"a LOGIN alice pw\r\r\n",
    ],
)
def test_login_trailing_data(data: bytes) -> None:
    assert parse(data) == ParseError(b"a", "Invalid arguments: unexpected data after the command.")


def test_login_password_is_a_secret() -> None:
    command = parse(b"a LOGIN alice hunter2\r\n")
    assert isinstance(command, Login)
    assert command.password.reveal() == b"hunter2"
    assert "hunter2" not in repr(command)


def test_malformed_literal_marker() -> None:
    frame = Frame((b"a LOGIN {x} {3}", b""), (b"abc",))
    assert parse_command(frame, MAX_TAG) == ParseError(
        b"a", "Invalid arguments: malformed literal."
    )


def test_unused_literal_is_trailing_data() -> None:
    frame = Frame((b"a NOOP {3}", b""), (b"abc",))
    assert parse_command(frame, MAX_TAG) == ParseError(
        b"a", "Invalid arguments: unexpected data after the command."
    )


# -- AUTHENTICATE ------------------------------------------------------------------


def test_authenticate_plain_with_initial_response() -> None:
    ir = b64(b"\0alice\0secret")
    assert parse(b"a AUTHENTICATE PLAIN " + ir + b"\r\n") == Authenticate(b"a", "PLAIN", Secret(ir))


def test_authenticate_plain_with_empty_initial_response() -> None:
    assert parse(b"a AUTHENTICATE PLAIN =\r\n") == Authenticate(b"a", "PLAIN", Secret(b"="))


def test_authenticate_without_initial_response() -> None:
    assert parse(b"a AUTHENTICATE PLAIN\r\n") == Authenticate(b"a", "PLAIN", None)


def test_authenticate_names_are_case_insensitive() -> None:
    assert parse(b"a authenticate plain\r\n") == Authenticate(b"a", "PLAIN", None)
    assert parse(b"a Authenticate xoauth2\r\n") == Authenticate(b"a", "XOAUTH2", None)


@pytest.mark.parametrize(
    ("ir", "text"),
    [
        (b"abc", "expected a base64 initial response"),
        (b"ab!d", "expected a base64 initial response"),
        (b"====", "expected a base64 initial response"),
        (b"AGFsaWNl=", "unexpected data after the command"),
        (b"AGFsaWNl AGFs", "unexpected data after the command"),
        (b"==", "expected a base64 initial response"),
        (b"", "expected a base64 initial response"),
        (b"{4+}\r\nAAAA", "expected a base64 initial response"),
    ],
)
def test_authenticate_invalid_initial_response(ir: bytes, text: str) -> None:
    assert parse(b"a AUTHENTICATE PLAIN " + ir + b"\r\n") == ParseError(
        b"a", f"Invalid arguments: {text}."
    )


@pytest.mark.parametrize(
    "data", [b"a AUTHENTICATE\r\n", b"a AUTHENTICATE \r\n", b'a AUTHENTICATE "PLAIN"\r\n']
)
def test_authenticate_needs_a_mechanism(data: bytes) -> None:
    command = parse(data)
    assert isinstance(command, ParseError)
    assert command.tag == b"a"


# -- ID ----------------------------------------------------------------------------


def test_id_nil() -> None:
    assert parse(b"a ID NIL\r\n") == Id(b"a", None)
    assert parse(b"a id nil\r\n") == Id(b"a", None)


def test_id_pairs() -> None:
    data = b'a ID ("name" "Thunderbird" "version" NIL "os" {5+}\r\nLinux)\r\n'
    assert parse(data) == Id(b"a", (("name", "Thunderbird"), ("version", None), ("os", "Linux")))


def test_id_utf8_value() -> None:
    assert parse('a ID ("name" "Málaga")\r\n'.encode()) == Id(b"a", (("name", "Málaga"),))


def _id_with(pairs: int, value: bytes = b"v") -> bytes:
    body = b" ".join(b'"f%d" "%s"' % (i, value) for i in range(pairs))
    return b"a ID (" + body + b")\r\n"


def test_id_limits() -> None:
    command = parse(_id_with(MAX_ID_PAIRS))
    assert isinstance(command, Id)
    assert command.params is not None
    assert len(command.params) == MAX_ID_PAIRS
    assert parse(_id_with(MAX_ID_PAIRS + 1)) == ParseError(
        b"a", "Invalid arguments: too many ID fields."
    )
    long_value = b"v" * MAX_ID_VALUE
    assert parse(b'a ID ("name" {1024+}\r\n' + long_value + b")\r\n") == Id(
        b"a", (("name", long_value.decode()),)
    )
    assert parse(b'a ID ("name" {1025+}\r\n' + long_value + b"v)\r\n") == ParseError(
        b"a", "Invalid arguments: ID field or value too long."
    )
    assert parse(b'a ID ("' + b"f" * 31 + b'" "v")\r\n') == ParseError(
        b"a", "Invalid arguments: ID field or value too long."
    )


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"a ID\r\n", "expected ' '"),
        (b'a ID "name" "x"\r\n', "expected '('"),
        (b'a ID ("name")\r\n', "expected ' '"),
        (b'a ID ("name" "x"\r\n', "expected ' '"),
        (b'a ID ("name"  "x")\r\n', "expected a string"),
        (b'a ID (name "x")\r\n', "expected a string"),
        (b'a ID (NIL "x")\r\n', "expected a string"),
        (b'a ID ("name" \xff)\r\n', "expected a string"),
        (b'a ID ("name" "\xff")\r\n', "ID strings must be UTF-8"),
        (b'a ID ("name" {2+}\r\n\x00x)\r\n', "NUL in literal"),
    ],
)
def test_id_rejects(data: bytes, text: str) -> None:
    assert parse(data) == ParseError(b"a", f"Invalid arguments: {text}.")


def test_id_trailing_data() -> None:
    assert parse(b'a ID ("a" "b") x\r\n') == ParseError(
        b"a", "Invalid arguments: unexpected data after the command."
    )
    assert parse(b"a ID NILX\r\n") == ParseError(
        b"a", "Invalid arguments: unexpected data after the command."
    )


# -- everything else ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"a SELECT INBOX\r\n", "SELECT"),
        (b"a select\r\n", "SELECT"),
        (b"a X-FOO (unparsed {3+}\r\nabc\r\n", "X-FOO"),
        (b"a ENABLE UTF8=ACCEPT\r\n", "ENABLE"),
    ],
)
def test_unknown_commands(data: bytes, name: str) -> None:
    assert parse(data) == Unknown(b"a", name)


@pytest.mark.parametrize(
    ("data", "tag"),
    [
        (b"\r\n", None),
        (b" NOOP\r\n", None),
        (b"+ NOOP\r\n", None),
        (b"a+ NOOP\r\n", None),
        (b"a\r\n", b"a"),
        (b"a \r\n", b"a"),
        (b"a  NOOP\r\n", b"a"),
        (b"a 1NOOP\r\n", b"a"),
        (b"a NOOP(\r\n", b"a"),
        (b"a LOGIN{5+}\r\nalice pw\r\n", b"a"),
        (b"a\tNOOP\r\n", None),
        (b"*tag NOOP\r\n", None),
    ],
)
def test_invalid_command_syntax(data: bytes, tag: bytes | None) -> None:
    assert parse(data) == ParseError(tag, "Invalid command syntax.")


def test_peek_name() -> None:
    assert peek_name(b"a1 login {5}", MAX_TAG) == (b"a1", "LOGIN")
    assert peek_name(b"a1 AUTHENTICATE PLAIN", MAX_TAG) == (b"a1", "AUTHENTICATE")
    assert peek_name(b"a1 LOGIN", MAX_TAG) == (b"a1", "LOGIN")
    assert peek_name(b"a1 LOGIN(", MAX_TAG) is None
    assert peek_name(b"+ LOGIN", MAX_TAG) is None
    assert peek_name(b"a1", MAX_TAG) is None
    assert peek_name(b"x" * 65 + b" LOGIN", MAX_TAG) is None
