"""The upstream's login latency and health in the metrics: each real login over
TCP to a small IMAP server on loopback (or to nothing at all) is timed by its
result, and sets `imapguard_upstream_up` from what happened, with the failure's
kind from a fixed set; the start-up check sets the health too."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from functools import partial

import pytest
import pytest_asyncio

from imapguard.auth.model import ClientAddress
from imapguard.compose.observing import observed_check, upstream_observer
from imapguard.errors import UpstreamRefused, UpstreamUnavailable
from imapguard.gateway.upstream import UpstreamLogin, UpstreamSettings, check_upstream
from imapguard.metrics import Metrics
from imapguard.metrics.registry import UPSTREAM_FAILURES
from imapguard.metrics.upstream import UpstreamMetrics
from imapguard.secret import Secret

CLIENT = ClientAddress("192.0.2.7", 40000, "127.0.0.1", 993, "s1")
GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n"

# What the server does once a client connects: it gets the reader and writer.
Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _answering(answer: bytes) -> Behaviour:
    """Greets, then answers the login command with `answer` (its tag put in)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        line = await reader.readline()
        tag = line.split(b" ", 1)[0]
        writer.write(tag + b" " + answer + b"\r\n")
        await writer.drain()
        await reader.read()  # until the client goes

    return serve


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


async def _hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def _not_imap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    await writer.drain()
    await reader.read()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Callable[[Behaviour], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(behaviour: Behaviour) -> int:
        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                await behaviour(reader, writer)
            writer.close()

        s = await asyncio.start_server(guarded, "127.0.0.1", 0)
        servers.append(s)
        port: int = s.sockets[0].getsockname()[1]
        return port

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there now


def _settings(port: int, *, master: bool = False, timeout: float = 5.0) -> UpstreamSettings:
    return UpstreamSettings(
        host="127.0.0.1",
        port=port,
        tls="none",
        ssl_context=None,
        server_name="127.0.0.1",
        master_user="gateway" if master else None,
        master_password=Secret(b"master") if master else None,
        forward_client_ip="none",
        connect_timeout=timeout,
        login_timeout=timeout,
    )


def test_the_new_metrics_have_bounded_labels_and_add_up_across_workers() -> None:
    m = Metrics()
    feed = UpstreamMetrics(m)
    feed.checked("a client's text, never a label")
    assert _value(m, "imapguard_upstream_failures_total", kind="other") == 1
    assert m.upstream_up._multiprocess_mode == "mostrecent"  # the last attempt, any worker
    assert set(UPSTREAM_FAILURES) >= {"connect", "tls", "timeout", "master-refused"}


@pytest.mark.asyncio
async def test_a_login_is_timed_as_ok_and_says_the_upstream_is_up(
    server: Callable[[Behaviour], Awaitable[int]],
) -> None:
    m = Metrics()
    port = await server(_answering(b"OK [CAPABILITY IMAP4rev1 IDLE] Logged in"))
    login = UpstreamLogin(_settings(port), upstream_observer(m))
    session = await login.login("alice", Secret(b"pw"), CLIENT)
    await session.discard()
    assert _value(m, "imapguard_upstream_login_duration_seconds_count", result="ok") == 1
    assert _value(m, "imapguard_upstream_login_duration_seconds_sum", result="ok") > 0
    assert _value(m, "imapguard_upstream_up") == 1


@pytest.mark.asyncio
async def test_a_users_wrong_password_is_an_answer_not_an_upstream_failure(
    server: Callable[[Behaviour], Awaitable[int]],
) -> None:
    m = Metrics()
    port = await server(_answering(b"NO [AUTHENTICATIONFAILED] Authentication failed."))
    login = UpstreamLogin(_settings(port), upstream_observer(m))
    with pytest.raises(UpstreamRefused):
        await login.login("alice", Secret(b"wrong"), CLIENT)
    assert _value(m, "imapguard_upstream_login_duration_seconds_count", result="refused") == 1
    assert _value(m, "imapguard_upstream_up") == 1
    assert not any(
        _value(m, "imapguard_upstream_failures_total", kind=k) for k in UPSTREAM_FAILURES
    )


@pytest.mark.asyncio
async def test_a_refused_master_user_takes_the_upstream_down(
    server: Callable[[Behaviour], Awaitable[int]],
) -> None:
    """No user can log in while the master password is wrong: down, and why."""
    m = Metrics()
    port = await server(_answering(b"NO [AUTHENTICATIONFAILED] Authentication failed."))
    login = UpstreamLogin(_settings(port, master=True), upstream_observer(m))
    with pytest.raises(UpstreamRefused):
        await login.login("alice", None, CLIENT)
    assert _value(m, "imapguard_upstream_up") == 0
    assert _value(m, "imapguard_upstream_failures_total", kind="master-refused") == 1
    # Only the account refused (RFC 5530): the master user was fine.
    port = await server(_answering(b"NO [AUTHORIZATIONFAILED] Authorization failed"))
    login = UpstreamLogin(_settings(port, master=True), upstream_observer(m))
    with pytest.raises(UpstreamRefused):
        await login.login("nobody", None, CLIENT)
    assert _value(m, "imapguard_upstream_up") == 1
    assert _value(m, "imapguard_upstream_failures_total", kind="master-refused") == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        (None, "connect"),
        (_silent, "timeout"),
        (_hangs_up, "closed"),
        (_not_imap, "protocol"),
    ],
)
async def test_an_unreachable_upstream_is_down_with_what_failed(
    server: Callable[[Behaviour], Awaitable[int]], behaviour: Behaviour | None, kind: str
) -> None:
    m = Metrics()
    feed = UpstreamMetrics(m)
    feed.checked(None)  # it was up
    port = _closed_port() if behaviour is None else await server(behaviour)
    login = UpstreamLogin(_settings(port, timeout=0.3), feed)
    with pytest.raises(UpstreamUnavailable):
        await login.login("alice", Secret(b"pw"), CLIENT)
    assert _value(m, "imapguard_upstream_up") == 0
    assert _value(m, "imapguard_upstream_failures_total", kind=kind) == 1
    count = "imapguard_upstream_login_duration_seconds_count"
    assert _value(m, count, result="unavailable") == 1
    assert _value(m, count, result="ok") == 0


@pytest.mark.asyncio
async def test_a_tls_failure_is_counted_as_tls(
    server: Callable[[Behaviour], Awaitable[int]],
) -> None:
    """Implicit TLS configured, plain IMAP answering: the handshake fails."""
    m = Metrics()
    port = await server(_answering(b"OK Logged in"))
    tls = replace(
        _settings(port, timeout=2.0), tls="implicit", ssl_context=ssl.create_default_context()
    )
    with pytest.raises(UpstreamUnavailable):
        await UpstreamLogin(tls, upstream_observer(m)).login("alice", Secret(b"pw"), CLIENT)
    assert _value(m, "imapguard_upstream_failures_total", kind="tls") == 1


@pytest.mark.asyncio
async def test_the_start_up_check_sets_the_upstream_health(
    server: Callable[[Behaviour], Awaitable[int]],
) -> None:
    m = Metrics()
    check = observed_check(partial(check_upstream, _settings(_closed_port()), master=False), m)
    found = await check()
    assert not found.ok
    assert found.failure == "connect"
    assert _value(m, "imapguard_upstream_up") == 0
    assert _value(m, "imapguard_upstream_failures_total", kind="connect") == 1
    closing = await server(_hangs_up)
    check = observed_check(partial(check_upstream, _settings(closing), master=False), m)
    assert (await check()).failure == "closed"
    assert _value(m, "imapguard_upstream_failures_total", kind="closed") == 1
    port = await server(_answering(b"OK"))
    check = observed_check(partial(check_upstream, _settings(port), master=False), m)
    assert (await check()).ok
    assert _value(m, "imapguard_upstream_up") == 1
    # Without [metrics] the check is the check itself.
    plain = partial(check_upstream, _settings(port), master=False)
    assert observed_check(plain, None) is plain
