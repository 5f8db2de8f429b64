"""Regression tests for what the fuzz targets (fuzz/, docs/fuzzing.md) found: each
input that crashed a parser or broke its contract, named after its effect.

The upstream reader is fed through a real `Link` (its asyncio protocol methods are
what the transport calls) and, for the login dialogue, by a real server on
127.0.0.1 that floods the gateway; the targets go through `resolve` as the CLI
calls it.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from imapguard.errors import UpstreamUnavailable
from imapguard.gateway import upstream
from imapguard.imap.framing import NEED_DATA, FrameError, FrameErrorKind, FrameLimits, Framer
from imapguard.imap.login import (
    Action,
    Failed,
    LoggedIn,
    LoginDialogue,
    NeedResponse,
    Send,
    plain_response,
)
from imapguard.scanner.targets import TargetError, parse_ports, resolve
from imapguard.secret import Secret

# -- upstream responses ------------------------------------------------------------------


def login_after(*reads: bytes) -> Action:
    """The upstream login's outcome when, after a greeting with SASL-IR, the
    server sends `reads` (one read each) and then closes."""
    machine = LoginDialogue(plain_response("alice", "gateway", Secret(b"master")))
    pending = [b"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n", *reads, b""]
    while True:
        action = machine.next_action()
        if isinstance(action, NeedResponse):
            machine.receive_data(pending.pop(0))
        elif not isinstance(action, Send):
            return action


def test_upstream_line_over_the_limit_in_one_read_is_refused_as_in_two() -> None:
    """Fuzz (upstream): a response line longer than the limit was refused when it
    arrived over several reads, and taken whole when one read brought it with its
    line end."""
    line = b"* OK " + b"x" * upstream.MAX_RESPONSE_LINE + b"\r\n"
    half = len(line) // 2
    for reads in ([line], [line[:half], line[half:]]):
        assert login_after(*reads) == Failed("response line too long")
    # A long line within the limit is read (the login then goes on to its answer).
    ok = b"g2 OK [CAPABILITY IMAP4rev1] in\r\n"
    assert login_after(b"* OK " + b"x" * 1000 + b"\r\n" + ok) == LoggedIn(["IMAP4rev1"], b"")


def test_upstream_response_of_chained_literals_is_cut_off_at_the_limit() -> None:
    """Fuzz (upstream): every literal and every line was bounded, the response
    they make up together was not: literal after literal, it grew without end."""
    chunk = 40_000
    response = b"* ID (" + b'"x" {%d}\r\n' % chunk + b"v" * chunk
    response += b' "y" {%d}\r\n' % chunk + b"w" * chunk + b")\r\n"
    assert login_after(response) == Failed("response too long")
    small = b'* ID ("name" {7}\r\nDovecot)\r\n'
    ok = b"g2 OK [CAPABILITY IMAP4rev1] in\r\n"
    assert login_after(small + ok) == LoggedIn(["IMAP4rev1"], b"")


@asynccontextmanager
async def hostile_upstream(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[upstream.UpstreamSettings]:
    # Every connection's handler is awaited and its socket closed before the test
    # ends: one left to the loop's shutdown is a ResourceWarning in a later test.
    handlers: set[asyncio.Task[object] | None] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())
        try:
            await answer(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield upstream.UpstreamSettings(
            host="127.0.0.1",
            port=port,
            tls="none",
            ssl_context=None,
            server_name="localhost",
            master_user="gateway",
            master_password=Secret(b"master"),
            forward_client_ip="none",
            connect_timeout=5.0,
            login_timeout=30.0,
        )
    finally:
        server.close()
        running = {task for task in handlers if task is not None}
        if running:
            await asyncio.wait(running, timeout=5)
        await server.wait_closed()


@pytest.mark.asyncio
async def test_upstream_flooding_untagged_responses_during_login_is_cut_off() -> None:
    """Fuzz (upstream): the untagged responses before the tagged answer to the
    login were all kept, however many the server sent."""
    received: list[bytes] = []

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n")
        received.append(await reader.readline())
        # 128 KiB of untagged responses, then the tagged OK the login waits for.
        for _ in range(2048):
            writer.write(b"* OK [ALERT] " + b"x" * 50 + b"\r\n")
        writer.write(b"g2 OK [CAPABILITY IMAP4rev1] Logged in\r\n")
        try:
            await writer.drain()
            await reader.read()
        except ConnectionError:
            pass  # the gateway hung up on us: what the test wants
        writer.close()

    client = upstream.ClientAddress("192.0.2.7", 50000, "127.0.0.1", 993, "s1")
    async with hostile_upstream(flood) as settings:
        with pytest.raises(UpstreamUnavailable, match="too many untagged responses"):
            await upstream.open_session(settings, "alice", None, client)
    # The master login went out (SASL-IR), and the flood came in answer to it.
    assert received == [
        b"g2 AUTHENTICATE PLAIN " + base64.b64encode(b"alice\0gateway\0master") + b"\r\n"
    ]


# -- scanner targets ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_target_file_that_is_not_utf8_is_a_target_error(tmp_path: Path) -> None:
    """Fuzz (targets): an @file with a byte that is not UTF-8 raised
    UnicodeDecodeError out of resolve(), a traceback instead of a usage line."""
    path = tmp_path / "targets.txt"
    path.write_bytes(b"192.0.2.1\n\xff192.0.2.2\n")
    with pytest.raises(TargetError, match=r"targets\.txt: not UTF-8 text \(byte 10 of the file\)"):
        await resolve([f"@{path}"], (143,))


@pytest.mark.asyncio
async def test_network_times_many_ports_is_refused_before_the_endpoints_are_built() -> None:
    """Fuzz (targets): addresses were bounded, endpoints were not: a /16 with
    --ports 1-65535 made four billion of them before the first probe. A /20 on 100
    ports is just over the limit."""
    with pytest.raises(TargetError, match=r"more than 393216 endpoints"):
        await resolve(["10.0.0.0/20"], parse_ports("1-100"))
    endpoints = await resolve(["10.0.0.0/24"], parse_ports("1-100"))
    assert len(endpoints) == 254 * 100


@pytest.mark.parametrize(
    "text", ["1_43", "+25,+5", "++25", "١٤٣", "143, 9_93", "140-1_50", " +143"]
)
def test_ports_written_other_than_in_ascii_digits_are_refused(text: str) -> None:
    """Fuzz (targets): int() took "1_43", "+5", "++" and digits of other scripts
    as ports the user never wrote."""
    with pytest.raises(TargetError, match="--ports: "):
        parse_ports(text)


@pytest.mark.parametrize("target", ["mail.example.org:1_43", "mail.example.org:+143", "h:١٤٣"])
@pytest.mark.asyncio
async def test_target_port_written_other_than_in_ascii_digits_is_refused(target: str) -> None:
    with pytest.raises(TargetError, match="is not a port"):
        await resolve([target], (143,))


def test_every_port_parses_in_one_pass() -> None:
    """Fuzz (targets, a timeout): `--ports 1-65535` checked each port against a list
    of those before it, 2 * 10^9 comparisons."""
    ports = parse_ports("1-65535,143,993")
    assert ports == tuple(range(1, 65536))
    assert parse_ports("+25,143,140-142") == (143, 993, 110, 995, 587, 465, 25, 140, 141, 142)


# -- the pre-auth framer -----------------------------------------------------------------


def frame_errors(limits: FrameLimits, reads: list[bytes]) -> list[object]:
    framer = Framer(limits)
    out: list[object] = []
    for data in reads:
        framer.feed(data)
        while (event := framer.next_event()) is not NEED_DATA:
            out.append(event)
    return out


def test_tag_of_an_over_long_line_does_not_depend_on_the_reads() -> None:
    """Fuzz (sasl): with max_tag close to max_line, a line one byte too long kept
    its tag when it came byte by byte and lost it when its CRLF came in the same
    read (the CR and LF were taken as part of the tag)."""
    limits = FrameLimits(max_line=64, max_literal=32, max_command=128, max_discard=256)
    line = b"t" * 64 + b"\r\n"
    expected = [FrameError(FrameErrorKind.LINE_TOO_LONG, b"t" * 64)]
    assert frame_errors(limits, [line]) == expected
    assert frame_errors(limits, [line[i : i + 1] for i in range(len(line))]) == expected
