"""Properties of the pre-auth protocol on arbitrary input (after h11's fuzzing).

* Any byte stream yields only the framer's events and the grammar's results;
  nothing else is ever raised, and memory stays within the named limits.
* How the bytes were split into reads changes nothing: the same events, the same
  bytes on the wire, the same bytes handed to the relay.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imapguard.imap.commands import (
    Authenticate,
    Capability,
    Id,
    Login,
    Logout,
    Noop,
    ParseError,
    StartTls,
    Unknown,
    parse_command,
)
from imapguard.imap.framing import (
    NEED_DATA,
    ContinuationRequest,
    Frame,
    FrameError,
    FrameLimits,
    Framer,
    RawLine,
)
from imapguard.imap.preauth import (
    AuthOutcome,
    AuthRequest,
    Close,
    Phase,
    PreAuth,
    PreAuthSettings,
    Relay,
    Send,
    StartTlsNow,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SMALL = FrameLimits(max_line=64, max_literal=32, max_command=128, max_discard=256, max_tag=16)
TINY = FrameLimits(
    max_line=24, max_literal=8, max_command=40, max_discard=40, max_literal_digits=3, max_tag=4
)
limits_strategy = st.sampled_from([FrameLimits(), SMALL, SMALL, TINY])

# IMAP-ish input: mostly command-shaped, with literals of honest and lying sizes,
# over-long runs and random bytes mixed in, so that every limit path is reached.
tags = st.sampled_from([b"a", b"b1", b"A001", b"+", b"*", b"", b"t" * 20])
names = st.sampled_from([
    b"LOGIN", b"login", b"AUTHENTICATE PLAIN", b"AUTHENTICATE XOAUTH2", b"STARTTLS",
    b"CAPABILITY", b"NOOP", b"LOGOUT", b"ID", b"SELECT", b"X",
])  # fmt: skip
words = st.sampled_from([
    b" alice", b" secret", b' "x y"', b' "a\\"b"', b' "\\', b" NIL", b" (", b")", b' "name"',
    b" =", b" AGFsaWNlAHNlY3JldA==", b" QUJD!", b" {", b"}", b"\x00", b"\xff", b" ",
])  # fmt: skip


@st.composite
def literals(draw: st.DrawFn) -> bytes:
    data = draw(st.binary(max_size=24) | st.sampled_from([b"\r\nc LOGOUT\r\n", b"pw"]))
    size = draw(st.sampled_from([len(data), len(data), 40, 300, 99999999999, 10**20]))
    plus = draw(st.sampled_from([b"", b"+"]))
    return b" {%d%s}\r\n" % (size, plus) + data


runs = st.builds(
    lambda c, n: c * n, st.sampled_from([b"x", b"9", b" ", b"\r"]), st.integers(0, 120)
)
arguments = st.lists(words | literals() | runs | st.binary(max_size=6), max_size=5)
ends = st.sampled_from([b"\r\n", b"\r\n", b"\n", b"", b"\r"])
commands = st.builds(
    lambda tag, name, args, end: tag + b" " + name + b"".join(args) + end,
    tags, names, arguments, ends,
)  # fmt: skip
well_formed = st.sampled_from([
    b"a CAPABILITY\r\n", b"a NOOP\r\n", b"a LOGOUT\r\n", b"a STARTTLS\r\n", b"a ID NIL\r\n",
    b'a ID ("name" "x" "os" NIL)\r\n', b"a SELECT INBOX\r\n",
    b"a LOGIN alice secret\r\n", b'a LOGIN "alice" "wrong"\r\n', b'a LOGIN alice ""\r\n',
    b"a LOGIN {5}\r\nalice {5}\r\nwrong\r\n", b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n",
    b"a AUTHENTICATE PLAIN\r\n", b"a AUTHENTICATE PLAIN\r\n", b"a AUTHENTICATE PLAIN =\r\n",
    b"a AUTHENTICATE PLAIN AGFsaWNlAHdyb25n\r\n", b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
])  # fmt: skip
sasl_lines = st.sampled_from(
    [b"AGFsaWNlAHNlY3JldA==\r\n", b"AGFsaWNlAHdyb25n\r\n", b"*\r\n", b"=\r\n", b"QUJD\r\n"]
)
noise = st.binary(max_size=12) | runs
# one_of picks a branch uniformly: well-formed commands come up nearly half the time.
stream = st.lists(
    st.one_of(well_formed, well_formed, well_formed, commands, commands, sasl_lines, noise),
    max_size=10,
).map(b"".join)
# What a client session looks like: mostly commands that parse, some that do not.
session = st.lists(
    st.one_of(*[well_formed] * 6, *[sasl_lines] * 2, commands, noise), min_size=1, max_size=10
).map(b"".join)
# Segments sent between TLS handshakes; often the first one is a clean STARTTLS
# and the next one starts with a login, so that the states after TLS get a share.
segments = st.builds(
    lambda first, login, rest: [first, login + rest[0], *rest[1:]],
    st.sampled_from([b"", b"s STARTTLS\r\n"]),
    st.sampled_from([b"", b"t AUTHENTICATE PLAIN\r\n", b"t LOGIN alice secret\r\n"]),
    st.lists(session | stream, min_size=1, max_size=3),
)
cuts = st.lists(st.integers(min_value=0, max_value=4096), max_size=12)


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(positions: list[int]) -> Callable[[bytes], list[bytes]]:
    def split(data: bytes) -> list[bytes]:
        points = sorted({p % (len(data) + 1) for p in positions} | {0, len(data)})
        return [data[a:b] for a, b in itertools.pairwise(points)]

    return split


# -- framer and grammar -------------------------------------------------------------------


KNOWN_EVENTS = (Frame, RawLine, ContinuationRequest, FrameError)
KNOWN_RESULTS = (Capability, Noop, Logout, StartTls, Id, Login, Authenticate, Unknown, ParseError)


def frame_events(limits: FrameLimits, pieces: Iterator[bytes] | list[bytes]) -> list[object]:
    """Feed the pieces; read raw lines after every third frame (as after AUTHENTICATE),
    so that the mode switch is a function of the events, never of the reads."""
    framer = Framer(limits)
    out: list[object] = []
    frames = 0
    for piece in pieces:
        framer.feed(piece)
        while True:
            event = framer.next_event(raw_line=frames % 3 == 2)
            if event is NEED_DATA:
                break
            assert isinstance(event, KNOWN_EVENTS)
            out.append(event)
            if isinstance(event, Frame | RawLine):
                frames += 1
            if isinstance(event, Frame):
                assert len(event.lines) == len(event.literals) + 1
                assert all(len(lit) <= limits.max_literal for lit in event.literals)
                assert sum(map(len, event.lines + event.literals)) <= limits.max_command
                result = parse_command(event, limits.max_tag)
                assert isinstance(result, KNOWN_RESULTS)
                out.append(result)
            if isinstance(event, FrameError) and event.tag is not None:
                assert len(event.tag) <= limits.max_tag
        # Bounded memory between reads, whatever the input.
        assert framer.buffered <= max(limits.max_line, limits.max_literal) + 1
    return out


@FAST
@given(limits_strategy, stream | st.binary(max_size=400))
def test_framer_and_parser_never_raise(limits: FrameLimits, data: bytes) -> None:
    frame_events(limits, [data])


@FAST
@given(limits_strategy, stream, cuts)
def test_framer_events_do_not_depend_on_reads(
    limits: FrameLimits, data: bytes, positions: list[int]
) -> None:
    expected = frame_events(limits, whole(data))
    assert frame_events(limits, bytewise(data)) == expected
    assert frame_events(limits, split_at(positions)(data)) == expected


@FAST
@given(limits_strategy, st.lists(stream, max_size=6))
def test_framer_limits_hold_for_many_reads(limits: FrameLimits, reads: list[bytes]) -> None:
    frame_events(limits, reads)


# -- the state machine --------------------------------------------------------------------


@dataclass
class Transcript:
    wire: bytes = b""
    actions: list[str] = field(default_factory=list)
    relayed: bytes | None = None


def outcome(request: AuthRequest) -> AuthOutcome:
    password = request.credentials.secret.reveal()
    if password == b"secret":
        return AuthOutcome.OK
    return AuthOutcome.UNAVAILABLE if not password else AuthOutcome.FAILED


def run_machine(
    settings: PreAuthSettings, segments: list[bytes], split: Callable[[bytes], list[bytes]]
) -> Transcript:
    """Drive PreAuth like the gateway shell: STARTTLS completes at once, and the
    password "secret" logs in (an empty one finds the upstream down). Each segment is
    what the client sends between two TLS handshakes: bytes of a segment after
    STARTTLS were sent in clear and are never delivered inside TLS."""
    machine = PreAuth(settings)
    out = Transcript(wire=machine.greeting())
    for segment in segments:
        for piece in split(segment):
            if out.relayed is not None:
                out.relayed += piece
                continue
            machine.receive_data(piece)
            restarted = False
            while (action := machine.next_action()) is not NEED_DATA:
                assert isinstance(action, Send | StartTlsNow | AuthRequest | Relay | Close)
                out.actions.append(type(action).__name__)
                if isinstance(action, Send):
                    assert action.data.endswith(b"\r\n")
                    out.wire += action.data
                elif isinstance(action, StartTlsNow):
                    machine.tls_established()
                    restarted = True
                elif isinstance(action, AuthRequest):
                    assert machine.tls
                    machine.auth_finished(outcome(action), ["IMAP4rev1", "STARTTLS"])
                elif isinstance(action, Relay):
                    assert machine.phase is Phase.AUTHENTICATED
                    out.relayed = action.trailing
                else:
                    assert machine.phase is Phase.LOGOUT
                    return out
            limits = settings.frame_limits
            assert machine.framer.buffered <= max(limits.max_line, limits.max_literal) + 1
            if restarted:
                break
    return out


# (tls, starttls): a STARTTLS listener most often, since it has the most states.
listeners = st.sampled_from([(False, True), (False, True), (True, False), (False, False)])
machine_settings = st.builds(
    lambda listener, **kwargs: PreAuthSettings(*listener, **kwargs),
    listeners,
    frame_limits=limits_strategy,
    max_commands=st.sampled_from([30, 3]),
    max_bad_commands=st.sampled_from([10, 3]),
    max_auth_failures=st.sampled_from([3, 1]),
)


@FAST
@given(machine_settings, segments, cuts)
def test_preauth_wire_does_not_depend_on_reads(
    settings: PreAuthSettings, segments: list[bytes], positions: list[int]
) -> None:
    expected = run_machine(settings, segments, whole)
    assert run_machine(settings, segments, bytewise) == expected
    assert run_machine(settings, segments, split_at(positions)) == expected
