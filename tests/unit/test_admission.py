"""Handshake admission: familiar sources first, unfamiliar ones share an adaptive limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from imapguard.defense.counters import MemoryCounterStore
from imapguard.defense.engine import Defense
from imapguard.defense.fingerprints import Fingerprinter
from imapguard.defense.settings import DefenseSettings
from imapguard.gateway.admission import (
    DECREASE,
    FAMILIAR_TTL,
    MIN_LIMIT,
    TARGET_LAG,
    Admission,
    AdmissionShed,
    AimdLimit,
)
from imapguard.secret import Secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_aimd_shrinks_to_a_share_of_what_is_in_flight() -> None:
    limit = AimdLimit(100_000)
    assert limit.value == 100_000
    assert not limit.saturated
    # Lag with 40 handshakes in flight: the limit drops below 40, not to 75,000.
    assert limit.sample(TARGET_LAG * 2, active=40, waiting=0) == int(40 * DECREASE)
    assert limit.saturated
    for _ in range(50):
        limit.sample(1.0, active=limit.value, waiting=100)
    assert limit.value == MIN_LIMIT  # never below the floor


def test_aimd_probes_up_by_one_while_connections_wait() -> None:
    limit = AimdLimit(1000)
    limit.sample(1.0, active=8, waiting=50)
    assert limit.value == MIN_LIMIT
    assert limit.sample(0.0, active=MIN_LIMIT, waiting=50) == MIN_LIMIT + 1
    assert limit.sample(0.0, active=MIN_LIMIT + 1, waiting=50) == MIN_LIMIT + 2


def test_aimd_lifts_the_limit_fast_when_nobody_waits() -> None:
    limit = AimdLimit(1000)
    limit.sample(1.0, active=8, waiting=0)
    values = [limit.sample(0.0, active=0, waiting=0) for _ in range(8)]
    assert values == [16, 32, 64, 128, 256, 512, 1000, 1000]
    assert not limit.saturated


def test_one_late_wakeup_on_an_idle_gateway_changes_little() -> None:
    limit = AimdLimit(2000)
    limit.sample(1.0, active=0, waiting=0)
    assert limit.value == MIN_LIMIT
    for _ in range(8):
        limit.sample(0.0, active=0, waiting=0)
    assert limit.value == 2000


def test_ceiling_below_floor_is_raised_to_floor() -> None:
    assert AimdLimit(2).value == MIN_LIMIT


def test_max_handshakes_below_the_floor_is_a_hard_cap() -> None:
    """limits.max_handshakes under MIN_LIMIT: lag cannot push the limit below it,
    and nothing lifts it above it."""
    adm = Admission(ceiling=2)
    assert adm.limit.value == 2
    adm.limit.sample(1.0, active=2, waiting=5)
    assert adm.limit.value == 2
    adm.limit.sample(0.0, active=0, waiting=0)
    assert adm.limit.value == 2
    adm.configure(20, lambda ip: False)
    assert (adm.limit.floor, adm.limit.ceiling) == (MIN_LIMIT, 20)
    adm.configure(3, lambda ip: False)
    assert (adm.limit.floor, adm.limit.ceiling, adm.limit.value) == (3, 3, 3)


def test_familiar_by_recent_success_expires() -> None:
    clock = Clock()
    adm = Admission(ceiling=100, clock=clock)
    assert not adm.familiar("198.51.100.7")
    adm.note_success("198.51.100.7")
    assert adm.familiar("198.51.100.7")
    assert not adm.familiar("198.51.100.8")
    clock.now += FAMILIAR_TTL + 1
    assert not adm.familiar("198.51.100.7")


def _trusted(*networks: str) -> Callable[[str], bool]:
    """The gateway's own predicate: the defense's trusted networks."""
    settings = DefenseSettings(trusted_networks=networks)
    root = Secret(b"k" * 32)
    defense = Defense(settings, MemoryCounterStore(), fingerprints=Fingerprinter(root))
    return defense.in_trusted_network


def test_familiar_by_trusted_network() -> None:
    adm = Admission(ceiling=100, trusted=_trusted("10.0.0.0/8", "2001:db8::/32"))
    assert adm.familiar("10.1.2.3")
    assert adm.familiar("2001:db8::1")
    assert not adm.familiar("192.0.2.1")
    assert not adm.familiar("not an address")
    adm.configure(100, _trusted())
    assert not adm.familiar("10.1.2.3")


def test_recent_successes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imapguard.gateway.admission.FAMILIAR_MAX", 3)
    adm = Admission(ceiling=100)
    for i in range(5):
        adm.note_success(f"192.0.2.{i}")
    assert [adm.familiar(f"192.0.2.{i}") for i in range(5)] == [False, False, True, True, True]


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail("condition never became true")


def _saturate(adm: Admission) -> None:
    for _ in range(100):
        adm.limit.sample(1.0, active=0, waiting=0)
    assert adm.limit.value == MIN_LIMIT


@pytest.mark.asyncio
async def test_unfamiliar_wait_in_order_familiar_never_waits() -> None:
    adm = Admission(ceiling=1000)
    _saturate(adm)
    adm.note_success("127.0.0.1")
    holders = [asyncio.Event() for _ in range(MIN_LIMIT)]
    order: list[str] = []

    async def hold(ip: str, release: asyncio.Event) -> None:
        async with adm.turn(ip, 10.0):
            order.append(ip)
            await release.wait()

    async with asyncio.TaskGroup() as tg:
        for i, ev in enumerate(holders):
            tg.create_task(hold(f"203.0.113.{i}", ev))
        await asyncio.sleep(0)
        assert adm.active == MIN_LIMIT
        late = [asyncio.Event() for _ in range(3)]
        for i, ev in enumerate(late):
            tg.create_task(hold(f"198.51.100.{i}", ev))
        await asyncio.sleep(0)
        assert adm.waiting == 3
        # The familiar source walks past the queue.
        async with adm.turn("127.0.0.1", 10.0):
            assert adm.waiting == 3
        # One turn freed: the first waiter gets it, not the others.
        holders[0].set()
        await _until(lambda: len(order) == MIN_LIMIT + 1)
        assert order[-1] == "198.51.100.0"
        assert adm.waiting == 2
        for ev in holders[1:] + late:
            ev.set()
    assert adm.active == 0
    assert adm.waiting == 0
    assert order[MIN_LIMIT:] == ["198.51.100.0", "198.51.100.1", "198.51.100.2"]


@pytest.mark.asyncio
async def test_waiting_longer_than_patience_is_shed_and_leaves_no_slot() -> None:
    adm = Admission(ceiling=1000)
    _saturate(adm)
    release = asyncio.Event()

    async def hold(i: int) -> None:
        async with adm.turn(f"203.0.113.{i}", 10.0):
            await release.wait()

    async with asyncio.TaskGroup() as tg:
        for i in range(MIN_LIMIT):
            tg.create_task(hold(i))
        await asyncio.sleep(0)
        with pytest.raises(AdmissionShed):
            async with adm.turn("198.51.100.1", 0.01):
                pytest.fail("admitted beyond the limit")
        assert adm.shed == 1
        assert adm.waiting == 0
        release.set()
    assert adm.active == 0


@pytest.mark.asyncio
async def test_cancelled_waiter_gives_nothing_back_it_did_not_take() -> None:
    adm = Admission(ceiling=1000)
    _saturate(adm)
    release = asyncio.Event()

    async def hold(i: int) -> None:
        async with adm.turn(f"203.0.113.{i}", 10.0):
            await release.wait()

    async def wait_forever() -> None:
        async with adm.turn("198.51.100.1", 10.0):
            pytest.fail("must not be admitted")

    async with asyncio.TaskGroup() as tg:
        for i in range(MIN_LIMIT):
            tg.create_task(hold(i))
        await asyncio.sleep(0)
        waiter = tg.create_task(wait_forever())
        await asyncio.sleep(0)
        assert adm.waiting == 1
        waiter.cancel()
        await _until(waiter.done)
        assert adm.waiting == 0
        assert adm.active == MIN_LIMIT
        release.set()
    assert adm.active == 0


@pytest.mark.asyncio
async def test_idle_gateway_never_queues() -> None:
    adm = Admission(ceiling=50)
    entered = 0
    release = asyncio.Event()

    async def hold(i: int) -> None:
        nonlocal entered
        async with adm.turn(f"203.0.113.{i}", 10.0):
            entered += 1
            await release.wait()

    async with asyncio.TaskGroup() as tg:
        for i in range(50):
            tg.create_task(hold(i))
        await asyncio.sleep(0)
        assert entered == 50
        assert adm.waiting == 0
        release.set()
    assert adm.waited == 0
