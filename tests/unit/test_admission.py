"""Admission: pre-auth slots per source (IPv4 address, IPv6 /64) with a reserve for
familiar sources; handshake turns, familiar sources first, unfamiliar ones share an
adaptive limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from imapguard.config import Config, validate_config
from imapguard.defense import DefenseSettings
from imapguard.defense.counters import MemoryCounterStore
from imapguard.defense.engine import Defense
from imapguard.defense.fingerprints import Fingerprinter
from imapguard.errors import ConfigError
from imapguard.gateway.admission import (
    DECREASE,
    FAMILIAR_TTL,
    MIN_LIMIT,
    OTHER_SOURCES,
    PER_SOURCE,
    TARGET_LAG,
    TOTAL,
    UNFAMILIAR,
    Admission,
    AdmissionShed,
    AimdLimit,
    PreauthSlots,
    Refusals,
    source_key,
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


# -- pre-auth slots ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not an address", "not an address"),
    ],
)
def test_source_key_is_the_ipv4_address_or_the_ipv6_64(ip: str, key: str) -> None:
    assert source_key(ip) == key


def _slots(familiar: set[str] | None = None, **limits: int) -> PreauthSlots:
    known = familiar or set()
    settings = {"per_source": 3, "total": 10, "reserve": 2} | limits
    return PreauthSlots(**settings, familiar=known.__contains__)


def test_one_source_gets_per_source_slots_and_no_more() -> None:
    slots = _slots()
    assert [slots.take("2001:db8::1")[1] for _ in range(3)] == [None, None, None]
    # Another address of the same /64 is the same source.
    assert slots.take("2001:db8::ffff:1") == ("2001:db8::/64", PER_SOURCE)
    assert slots.take("2001:db8:0:1::1") == ("2001:db8:0:1::/64", None)
    assert slots.in_use == 4
    # A refused connection took nothing; a closed one gives its slot back.
    slots.give_back("2001:db8::/64")
    assert slots.held("2001:db8::/64") == 2
    assert slots.take("2001:db8::2") == ("2001:db8::/64", None)


def test_unfamiliar_sources_cannot_take_the_familiar_reserve() -> None:
    slots = _slots({"192.0.2.1"}, per_source=3, total=10, reserve=2)
    taken = [slots.take(f"203.0.113.{i // 3}") for i in range(8)]
    assert all(reason is None for _, reason in taken)
    assert slots.take("203.0.113.9") == ("203.0.113.9", UNFAMILIAR)
    # The familiar source gets the reserve, then nobody gets anything.
    assert slots.take("192.0.2.1") == ("192.0.2.1", None)
    assert slots.take("192.0.2.1") == ("192.0.2.1", None)
    assert slots.take("192.0.2.1") == ("192.0.2.1", TOTAL)
    assert slots.in_use == 10
    slots.give_back("203.0.113.0")
    assert slots.take("203.0.113.9") == ("203.0.113.9", UNFAMILIAR)
    slots.give_back("203.0.113.1")
    slots.give_back("203.0.113.1")
    assert slots.take("203.0.113.9") == ("203.0.113.9", None)


def test_familiar_is_asked_only_near_the_limit() -> None:
    asked: list[str] = []

    def familiar(ip: str) -> bool:
        asked.append(ip)
        return False

    slots = PreauthSlots(per_source=5, total=4, reserve=1, familiar=familiar)
    for i in range(3):
        assert slots.take(f"192.0.2.{i}")[1] is None
    assert asked == []
    assert slots.take("192.0.2.9")[1] == UNFAMILIAR
    assert asked == ["192.0.2.9"]


def test_reloaded_limits_apply_to_new_connections_only() -> None:
    slots = _slots(per_source=3)
    for _ in range(3):
        slots.take("192.0.2.1")
    slots.configure(per_source=1, total=10, reserve=0)
    assert slots.take("192.0.2.1")[1] == PER_SOURCE
    for _ in range(3):
        slots.give_back("192.0.2.1")
    assert slots.in_use == 0
    assert slots.take("192.0.2.1")[1] is None


def _limits(**limits: int) -> Config:
    return Config.model_validate(
        {
            "listen": [{"address": "127.0.0.1:993", "tls": "implicit"}],
            "tls": {"certificate": "c", "private_key": "k"},
            "upstream": {
                "address": "127.0.0.1:143",
                "master_user": "m",
                "master_password_file": "p",
            },
            "limits": limits,
        }
    )


def test_limit_defaults_and_the_reserve_below_the_total() -> None:
    config = _limits()
    assert (config.limits.reserve, config.limits.handshakes) == (200, 2000)
    config = _limits(max_preauth_total=50, familiar_reserve=5, max_handshakes=4)
    assert (config.limits.reserve, config.limits.handshakes) == (5, 4)
    assert not [p for p in validate_config(config, check_files=False) if "limits" in p[0]]
    with pytest.raises(ConfigError) as caught:
        Config.checked(
            _limits().model_dump(), limits={"max_preauth_total": 50, "familiar_reserve": 50}
        )
    assert ("limits.familiar_reserve", "must be below limits.max_preauth_total") in (
        caught.value.problems
    )


def test_refusals_first_at_once_then_one_count_per_interval() -> None:
    refusals = Refusals()
    assert refusals.note("192.0.2.1", PER_SOURCE)
    assert not refusals.note("192.0.2.1", PER_SOURCE)
    assert not refusals.note("192.0.2.1", PER_SOURCE)
    assert refusals.note("192.0.2.1", TOTAL)
    assert refusals.note("2001:db8::/64", PER_SOURCE)
    assert refusals.drain() == [("192.0.2.1", PER_SOURCE, 2)]
    assert refusals.drain() == []
    assert refusals.note("192.0.2.1", PER_SOURCE)  # a new interval


def test_refusals_of_too_many_sources_are_summed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imapguard.gateway.admission.REFUSALS_MAX", 2)
    refusals = Refusals()
    assert refusals.note("192.0.2.1", TOTAL)
    assert refusals.note("192.0.2.2", TOTAL)
    assert refusals.note("192.0.2.3", TOTAL)  # the first of the "other sources"
    for i in range(4, 10):
        assert not refusals.note(f"192.0.2.{i}", TOTAL)
    assert not refusals.note("192.0.2.1", TOTAL)
    assert sorted(refusals.drain()) == [(OTHER_SOURCES, TOTAL, 6), ("192.0.2.1", TOTAL, 1)]


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
