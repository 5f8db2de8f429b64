"""scanner/net.py, the scanner's only way onto the network: real loopback sockets
for connecting, refusals and throttling; the clock and the sleeps are faked where
pacing is checked, so nothing here depends on timing luck."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import pytest_asyncio

from imapguard.scanner import net
from imapguard.scanner.net import Network, NetworkSettings, Throttled, by_address

FAST = NetworkSettings(concurrency=8, per_host=2, rate=0.0, timeout=5.0, backoff=0.0)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"* OK hello\r\n" + await reader.readline())
    await writer.drain()
    writer.close()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[asyncio.Server]:
    """A loopback server that greets, echoes one line and closes."""
    srv = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield srv
    finally:
        srv.close()
        await srv.wait_closed()


def _port(srv: asyncio.Server) -> int:
    port: int = srv.sockets[0].getsockname()[1]
    return port


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _blocked(entered: asyncio.Event) -> bool:
    """Whether a task waiting for `entered` is still blocked after the loop has
    run everything that was ready (no timer involved)."""
    for _ in range(20):
        await asyncio.sleep(0)
    return not entered.is_set()


@pytest.mark.asyncio
async def test_connect_opens_a_tcp_connection_and_counts_it(server: asyncio.Server) -> None:
    network = Network(FAST)
    async with network.slot("127.0.0.1"):
        reader, writer = await network.connect("127.0.0.1", _port(server))
        writer.write(b"ping\r\n")
        assert await reader.readline() == b"* OK hello\r\n"
        assert await reader.readline() == b"ping\r\n"
        writer.close()
        await writer.wait_closed()
    assert network.connections == 1
    assert network.throttled("127.0.0.1") is None


@pytest.mark.asyncio
async def test_a_closed_port_is_refused_not_throttling() -> None:
    network = Network(FAST)
    with pytest.raises(ConnectionRefusedError):
        await network.connect("127.0.0.1", _closed_port())
    assert network.throttled("127.0.0.1") is None
    assert network.throttled_addresses == {}


@pytest.mark.asyncio
async def test_refused_after_the_port_answered_is_throttling() -> None:
    """A server that starts refusing us once it has answered is rate-limiting the
    scan: the address is marked and the error says so."""
    srv = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = _port(srv)
    network = Network(FAST)
    _, writer = await network.connect("127.0.0.1", port)
    writer.close()
    await writer.wait_closed()
    srv.close()
    await srv.wait_closed()
    with pytest.raises(Throttled) as caught:
        await network.connect("127.0.0.1", port)
    assert (caught.value.address, caught.value.port) == ("127.0.0.1", port)
    assert caught.value.reason == "connection refused"
    reason = "connection refused after the port had answered"
    assert network.throttled("127.0.0.1") == reason
    assert network.throttled_addresses == {"127.0.0.1": reason}


@pytest.mark.asyncio
async def test_connect_is_bounded_by_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port that never completes the handshake (a filtering firewall) ends in
    TimeoutError after `timeout`, not in a hang."""

    async def never(*args: object, **kwargs: object) -> tuple[object, object]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(asyncio, "open_connection", never)
    network = Network(NetworkSettings(rate=0.0, timeout=0.05))
    with pytest.raises(TimeoutError):
        await network.connect("192.0.2.1", 143)


def test_the_first_throttling_reason_is_kept() -> None:
    network = Network(FAST)
    network.mark_throttled("192.0.2.1", "421 too many connections")
    network.mark_throttled("192.0.2.1", "connection refused")
    assert network.throttled("192.0.2.1") == "421 too many connections"
    assert network.throttled("192.0.2.2") is None


async def _enter(
    network: Network, address: str, entered: asyncio.Event, release: asyncio.Event
) -> None:
    async with network.slot(address):
        entered.set()
        await release.wait()


def _holder(
    network: Network, address: str
) -> tuple[asyncio.Event, asyncio.Event, Callable[[], Coroutine[Any, Any, None]]]:
    entered, release = asyncio.Event(), asyncio.Event()
    return entered, release, lambda: _enter(network, address, entered, release)


@pytest.mark.asyncio
async def test_per_host_limit_holds_and_other_hosts_pass() -> None:
    network = Network(FAST)  # per_host=2
    holders = [_holder(network, "192.0.2.1") for _ in range(3)]
    other = _holder(network, "192.0.2.2")
    async with asyncio.TaskGroup() as group:
        for _, _, run in [*holders, other]:
            group.create_task(run())
        assert await _blocked(holders[2][0])
        assert holders[0][0].is_set()
        assert holders[1][0].is_set()
        assert other[0].is_set()
        holders[0][1].set()
        await holders[2][0].wait()  # a freed slot lets the third one in
        for _, release, _ in [*holders, other]:
            release.set()


@pytest.mark.asyncio
async def test_overall_concurrency_limit_spans_hosts() -> None:
    network = Network(NetworkSettings(concurrency=1, per_host=4, rate=0.0, backoff=0.0))
    first = _holder(network, "192.0.2.1")
    second = _holder(network, "192.0.2.2")
    async with asyncio.TaskGroup() as group:
        group.create_task(first[2]())
        await first[0].wait()
        group.create_task(second[2]())
        assert await _blocked(second[0])
        first[1].set()
        await second[0].wait()
        second[1].set()


@pytest.mark.asyncio
async def test_a_throttled_address_gets_one_connection_at_a_time() -> None:
    network = Network(FAST)  # per_host=2 until throttled
    network.mark_throttled("192.0.2.1", "421")
    first = _holder(network, "192.0.2.1")
    second = _holder(network, "192.0.2.1")
    async with asyncio.TaskGroup() as group:
        group.create_task(first[2]())
        await first[0].wait()
        group.create_task(second[2]())
        assert await _blocked(second[0])
        first[1].set()
        await second[0].wait()
        second[1].set()


class _Clock:
    """A fake monotonic clock; the faked sleeps advance it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(net, "time", fake)
    monkeypatch.setattr(asyncio, "sleep", fake.sleep)
    return fake


@pytest.mark.asyncio
async def test_new_connections_are_paced_by_a_token_bucket(clock: _Clock) -> None:
    """A bucket of `concurrency` tokens refilled at `rate` per second: a burst of
    that many goes at once, the next waits for its token."""
    network = Network(NetworkSettings(concurrency=2, rate=10.0))
    await network._take_token()
    await network._take_token()
    assert clock.slept == []
    await network._take_token()
    assert clock.slept == [pytest.approx(0.1)]
    clock.now += 0.2  # two tokens' worth of time passes
    await network._take_token()
    await network._take_token()
    assert clock.slept == [pytest.approx(0.1)]


@pytest.mark.asyncio
async def test_no_pacing_when_the_rate_is_zero(clock: _Clock) -> None:
    network = Network(NetworkSettings(concurrency=1, rate=0.0))
    for _ in range(5):
        await network._take_token()
    assert clock.slept == []


@pytest.mark.asyncio
async def test_a_throttled_address_rests_before_each_connection(clock: _Clock) -> None:
    network = Network(NetworkSettings(rate=0.0, backoff=2.5))
    async with network.slot("192.0.2.1"):
        pass
    assert clock.slept == []
    network.mark_throttled("192.0.2.1", "421")
    async with network.slot("192.0.2.1"):
        pass
    assert clock.slept == [2.5]


def test_by_address_groups_ports_in_order() -> None:
    pairs = [("192.0.2.2", 993), ("192.0.2.1", 143), ("192.0.2.2", 25), ("192.0.2.1", 110)]
    assert by_address(pairs) == {"192.0.2.2": [25, 993], "192.0.2.1": [110, 143]}
