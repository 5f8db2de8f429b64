"""Differential test of the pre-auth grammar against imap-codec (a fuzzed Rust parser).

imap-codec is a test oracle only (see STYLE.md): for every pre-auth command both
parsers accept, they must agree on the tag, the command and every argument value.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imapguard.imap.commands import (
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
)
from imapguard.imap.framing import NEED_DATA, ContinuationRequest, Frame, FrameLimits, Framer

imap_codec = pytest.importorskip("imap_codec")

LIMITS = FrameLimits()
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A normalised command: (tag, name, arguments) with every string as bytes.
Normal = tuple[bytes, str, tuple[Any, ...]]

# -- the grammar, as a generator ------------------------------------------------------

# RFC 9051: tag = 1*<any ASTRING-CHAR except "+">; ASTRING-CHAR = ATOM-CHAR / "]".
TAG_CHARS = [c for c in range(0x21, 0x7F) if chr(c) not in '(){%*"\\+']
ASTRING_CHARS = [c for c in range(0x21, 0x7F) if chr(c) not in '(){%*"\\']
ATOM_CHARS = [c for c in ASTRING_CHARS if c != ord("]")]
# TEXT-CHAR: any 7-bit CHAR except CR and LF (imap-codec's quoted is 7-bit only).
QUOTED_CHARS = [c for c in range(0x01, 0x80) if c not in (0x0A, 0x0D)]


def chars(alphabet: list[int], min_size: int = 1, max_size: int = 12) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(alphabet), min_size=min_size, max_size=max_size).map(bytes)


def randomly_cased(word: str) -> st.SearchStrategy[bytes]:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda flips: bytes(
            ord(c.lower() if flip else c) for c, flip in zip(word, flips, strict=True)
        )
    )


def quoted(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(value: bytes, sync: bool) -> bytes:
    return b"{%d%s}\r\n" % (len(value), b"" if sync else b"+") + value


tags = chars(TAG_CHARS, max_size=10)
atoms = chars(ASTRING_CHARS)
quoted_values = chars(QUOTED_CHARS, min_size=0)
literal_values = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"\x01"))


@st.composite
def astrings(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(wire form, value)"""
    kind = draw(st.sampled_from(["atom", "quoted", "literal"]))
    if kind == "atom":
        value = draw(atoms)
        return value, value
    if kind == "quoted":
        value = draw(quoted_values)
        return quoted(value), value
    value = draw(literal_values)
    return literal(value, draw(st.booleans())), value


@st.composite
def strings(draw: st.DrawFn, max_size: int) -> tuple[bytes, str]:
    """An ID string, quoted or literal (our ID strings are UTF-8 text)."""
    if draw(st.booleans()):
        value = draw(chars([c for c in QUOTED_CHARS if c != 0x00], 0, max_size))
        return quoted(value), value.decode("ascii")
    text = draw(
        st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=max_size // 4)
    )
    return literal(text.encode(), draw(st.booleans())), text


@st.composite
def login(draw: st.DrawFn) -> tuple[bytes, Normal]:
    tag = draw(tags)
    user_wire, user = draw(astrings())
    password_wire, password = draw(astrings())
    wire = tag + b" " + draw(randomly_cased("LOGIN")) + b" " + user_wire + b" " + password_wire
    return wire + b"\r\n", (tag, "LOGIN", (user, password))


MECHANISMS = ["PLAIN", "XOAUTH2", "OAUTHBEARER", "EXTERNAL", "LOGIN", "X-FOO", "SCRAM-SHA-256"]


@st.composite
def authenticate(draw: st.DrawFn) -> tuple[bytes, Normal]:
    tag = draw(tags)
    mechanism = draw(st.sampled_from(MECHANISMS).flatmap(randomly_cased))
    wire = tag + b" " + draw(randomly_cased("AUTHENTICATE")) + b" " + mechanism
    response: bytes | None = draw(st.none() | st.binary(max_size=60))
    if response == b"":
        wire += b" ="
    elif response is not None:
        wire += b" " + base64.b64encode(response)
    return wire + b"\r\n", (tag, "AUTHENTICATE", (mechanism.decode().upper(), response))


@st.composite
def id_command(draw: st.DrawFn) -> tuple[bytes, Normal]:
    tag = draw(tags)
    wire = tag + b" " + draw(randomly_cased("ID")) + b" "
    if draw(st.booleans()):
        return wire + draw(randomly_cased("NIL")) + b"\r\n", (tag, "ID", (None,))
    pairs = []
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        field_wire, field = draw(strings(30))
        value_wire, value = draw(st.none() | strings(120)) or (b"NIL", None)
        parts.append(field_wire + b" " + value_wire)
        pairs.append((field, value))
    wire += b"(" + b" ".join(parts) + b")"
    return wire + b"\r\n", (tag, "ID", (tuple(pairs),))


@st.composite
def simple(draw: st.DrawFn) -> tuple[bytes, Normal]:
    tag = draw(tags)
    name = draw(st.sampled_from(["CAPABILITY", "NOOP", "LOGOUT", "STARTTLS"]))
    return tag + b" " + draw(randomly_cased(name)) + b"\r\n", (tag, name, ())


pre_auth_commands = st.one_of(simple(), login(), login(), authenticate(), id_command())


# -- both parsers, normalised ----------------------------------------------------------


def ours(wire: bytes) -> Command | ParseError | None:
    """Our framer and grammar; None when the bytes are not exactly one frame."""
    framer = Framer(LIMITS)
    framer.feed(wire)
    frames = []
    while (event := framer.next_event()) is not NEED_DATA:
        if not isinstance(event, ContinuationRequest):
            frames.append(event)
    if len(frames) != 1 or not isinstance(frames[0], Frame) or framer.buffered:
        return None
    return parse_command(frames[0], LIMITS.max_tag)


def normalise_ours(command: Command) -> Normal | None:
    match command:
        case Capability(tag=tag) | Noop(tag=tag) | Logout(tag=tag) | StartTls(tag=tag):
            return tag, type(command).__name__.upper(), ()
        case Login(tag=tag, username=username, password=password):
            return tag, "LOGIN", (username, password.reveal())
        case Authenticate(tag=tag, mechanism=mechanism, initial_response=initial):
            response = None
            if initial is not None:
                b64 = initial.reveal()
                response = b"" if b64 == b"=" else base64.b64decode(b64, validate=True)
            return tag, "AUTHENTICATE", (mechanism, response)
        case Id(tag=tag, params=params):
            return tag, "ID", (params,)
        case Unknown():
            return None
    raise AssertionError(command)


def _astring(value: dict[str, Any]) -> bytes:
    if "Atom" in value:
        return bytes(value["Atom"], "ascii")
    return _istring(value["String"])


def _istring(value: dict[str, Any]) -> bytes:
    if "Quoted" in value:
        return bytes(value["Quoted"], "ascii")
    return bytes(value["Literal"]["data"])


# imap-codec's names for the mechanisms it knows.
CODEC_MECHANISMS = {
    "Plain": "PLAIN", "Login": "LOGIN", "XOAuth2": "XOAUTH2", "OAuthBearer": "OAUTHBEARER",
    "ScramSha1": "SCRAM-SHA-1", "ScramSha1Plus": "SCRAM-SHA-1-PLUS",
    "ScramSha256": "SCRAM-SHA-256", "ScramSha256Plus": "SCRAM-SHA-256-PLUS",
}  # fmt: skip


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="surrogateescape")


def normalise_theirs(command: dict[str, Any]) -> Normal:
    tag = command["tag"].encode("ascii")
    body = command["body"]
    if isinstance(body, str):
        names = {"Capability": "CAPABILITY", "Noop": "NOOP", "Logout": "LOGOUT"}
        return tag, names.get(body, body.upper()), ()
    ((name, args),) = body.items()
    if name == "Login":
        return tag, "LOGIN", (_astring(args["username"]), _astring(args["password"]))
    if name == "Authenticate":
        mechanism = args["mechanism"]
        if isinstance(mechanism, dict):
            mechanism = mechanism["Other"].upper()
        else:
            mechanism = CODEC_MECHANISMS[mechanism]
        response = args["initial_response"]
        return (
            tag,
            "AUTHENTICATE",
            (
                mechanism,
                None if response is None else bytes(response),
            ),
        )
    if name == "Id":
        params = args["parameters"]
        if params is None:
            return tag, "ID", (None,)
        return tag, "ID", (tuple(
            (_text(_istring(field)), None if value is None else _text(_istring(value)))
            for field, value in params
        ),)  # fmt: skip
    raise AssertionError(command)


def theirs(wire: bytes) -> Normal | None:
    try:
        rest, command = imap_codec.CommandCodec.decode(wire)
    except imap_codec.DecodeError:
        return None
    if rest:
        return None
    return normalise_theirs(command.as_dict())


# -- the tests ---------------------------------------------------------------------------


@FAST
@given(pre_auth_commands)
def test_both_parsers_accept_and_agree(command: tuple[bytes, Normal]) -> None:
    wire, expected = command
    mine = ours(wire)
    assert mine is not None
    assert not isinstance(mine, ParseError), (wire, mine)
    assert normalise_ours(mine) == expected
    assert theirs(wire) == expected


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid command with a few bytes inserted, replaced or removed."""
    wire = bytearray(draw(pre_auth_commands)[0])
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(wire) - 1))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        byte = draw(st.sampled_from(b' "\\(){}+*%]\x00\r\nNIL09=') | st.integers(0, 255))
        if op == "insert":
            wire.insert(at, byte)
        elif op == "replace":
            wire[at] = byte
        else:
            del wire[at]
    return bytes(wire)


@FAST
@given(mutated())
def test_when_both_accept_they_agree(wire: bytes) -> None:
    mine = ours(wire)
    if mine is None or isinstance(mine, ParseError):
        return
    normal = normalise_ours(mine)
    their = theirs(wire)
    if normal is None or their is None:
        return
    assert normal == their, wire


@pytest.mark.parametrize(
    "wire",
    [
        b'a LOGIN "al\\ice" pw\r\n',
        b'a LOGIN "alice pw\r\n',
        b"a LOGIN alice\r\n",
        b"a LOGIN alice pw extra\r\n",
        b"a LOGIN {2}\r\n\x00a pw\r\n",
        b"a LOGIN al(ice pw\r\n",
        b"a AUTHENTICATE PLAIN QUJD!\r\n",
        b"a AUTHENTICATE PLAIN ===\r\n",
        b'a ID ("name")\r\n',
        b"a ID name\r\n",
        b"+ NOOP\r\n",
        b"a NOOP x\r\n",
    ],
)
def test_both_parsers_reject(wire: bytes) -> None:
    mine = ours(wire)
    assert mine is None or isinstance(mine, ParseError)
    assert theirs(wire) is None
