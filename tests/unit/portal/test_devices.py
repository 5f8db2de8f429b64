"""Devices in the portal: a pending device approved ("yes, that was me") is
trusted at its address for the approved-device period, behind a fresh second
factor; rejected, it is removed and its address blocked (for the account, for
everyone only when nobody else logged in from there; not the owner's own);
a trusted one revoked is removed and published; another account's device id
changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.defense.counters import Target, TargetKind
from imapguard.state.accounts import DeviceKey, DeviceRecord
from tests.unit.portal.support import Portal, csrf_of, portal

pytestmark = pytest.mark.asyncio

PHONE = "198.51.100.23"


def pending(p: Portal, user: str = "alice", address: str = PHONE) -> DeviceRecord:
    key = DeviceKey(user, "198.51.100.0/24", "iOS Mail", "17.1")
    return p.store.add_pending_device(key, p.clock.now - 60, address)


def trusted(p: Portal, user: str = "alice") -> DeviceRecord:
    key = DeviceKey(user, "203.0.113.0/24", "Thunderbird", "128")
    return p.store.trust_device(key, p.clock.now, p.clock.now + 86400 * 30, "203.0.113.5", b"s")


def blocked(p: Portal) -> set[str]:
    defense = p.deps.services.defense if p.deps.services else None
    assert defense is not None
    return {str(b.target) for b in defense.blocks()}


async def act(p: Portal, action: str, device_id: str) -> str:
    page = await p.client.get("/devices")
    done = await p.post(f"/devices/{action}", {"csrf": csrf_of(page), "id": device_id})
    assert done.status_code == 303, done.text
    return done.headers["location"]


async def test_pending_and_trusted_devices_are_listed_with_their_anchor(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        waiting, known = pending(p), trusted(p)
        await p.sign_in()
        page = await p.client.get("/devices")
        assert f'id="device-{waiting.id}"' in page.text  # the new-device mail links here
        assert f'id="device-{known.id}"' in page.text
        for text in ("iOS Mail 17.1", PHONE, "Thunderbird 128", "trusted until", "Was this you?"):
            assert text in page.text


async def test_approving_trusts_the_device_at_its_address_for_the_approved_period(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        device = pending(p)
        await p.sign_in()
        assert await act(p, "approve", device.id) == "/devices?done=approved"
        stored = p.store.get_device("alice", device.id)
        assert stored is not None
        assert stored.trusted_at(p.clock.now)
        assert stored.bound_address == PHONE
        trust = p.deps.services.approved_device_trust if p.deps.services else 0.0
        assert stored.trusted_until == p.clock.now + trust
        assert p.events()[-1]["action"] == "device_approve"
        assert p.events()[-1]["result"] == "ok"


async def test_approving_needs_a_fresh_second_factor(tmp_path: Path) -> None:
    # A stolen session cookie must not let the thief's own device in.
    async with portal(tmp_path) as p:
        device = pending(p)
        await p.sign_in()
        page = await p.client.get("/devices")
        p.clock.now += p.settings.fresh_factor + 1
        stale = await p.post("/devices/approve", {"csrf": csrf_of(page), "id": device.id})
        assert stale.headers["location"] == "/confirm?next=/devices/approve"
        # Back from the confirm page (a GET) lands on the list, changing nothing.
        back = await p.client.get("/devices/approve")
        assert back.headers["location"] == "/devices"
        stored = p.store.get_device("alice", device.id)
        assert stored is not None
        assert stored.status == "pending"


async def test_idor_another_accounts_device_id_changes_nothing(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        carols_pending, carols_trusted = pending(p, "carol"), trusted(p, "carol")
        await p.sign_in("alice")
        page = await p.client.get("/devices")
        assert carols_pending.id not in page.text
        assert await act(p, "approve", carols_pending.id) == "/devices?done=nothing"
        assert await act(p, "reject", carols_pending.id) == "/devices?done=nothing"
        assert await act(p, "revoke", carols_trusted.id) == "/devices?done=nothing"
        assert p.store.list_devices("carol") == [carols_pending, carols_trusted]
        assert p.store.revocations_after(0, 10) == []
        assert blocked(p) == set()
        assert [e["result"] for e in p.events()[-3:]] == ["not_found"] * 3


async def test_a_trusted_device_cannot_be_approved_again_or_rejected(tmp_path: Path) -> None:
    # Approval rebinds trust to the last address: only a pending device gets it.
    async with portal(tmp_path) as p:
        device = trusted(p)
        await p.sign_in()
        assert await act(p, "approve", device.id) == "/devices?done=nothing"
        assert await act(p, "reject", device.id) == "/devices?done=nothing"
        assert p.store.get_device("alice", device.id) == device


async def test_rejecting_removes_the_device_and_blocks_its_address(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        device = pending(p)
        await p.sign_in()
        assert await act(p, "reject", device.id) == "/devices?done=rejected"
        assert p.store.get_device("alice", device.id) is None
        # Nobody else logged in from there: for everyone, not only alice.
        source = Target(TargetKind.SOURCE, PHONE)
        pair = Target(TargetKind.ACCOUNT_SOURCE, f"{PHONE}|alice")
        assert blocked(p) == {str(source), str(pair)}
        (revocation,) = p.store.revocations_after(0, 10)
        assert revocation.credential == f"device:{device.id}"
        assert p.events()[-1]["reason"] == f"{device.id} blocked {pair} {source}"
        placed = {e["target"] for e in p.events("defense_block")}
        assert placed == {str(source), str(pair)}


async def test_rejecting_a_device_at_the_owners_own_address_blocks_nobody(
    tmp_path: Path,
) -> None:
    async with portal(tmp_path) as p:
        device = pending(p, address="192.0.2.10")  # the browser's own address
        await p.sign_in()
        assert await act(p, "reject", device.id) == "/devices?done=rejected"
        assert p.store.get_device("alice", device.id) is None
        assert blocked(p) == set()


async def test_revoking_a_trusted_device_removes_and_publishes_it(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        device = trusted(p)
        await p.sign_in()
        assert await act(p, "revoke", device.id) == "/devices?done=revoked"
        assert p.store.list_devices("alice") == []
        (revocation,) = p.store.revocations_after(0, 10)
        assert (revocation.user, revocation.credential) == ("alice", f"device:{device.id}")
        assert blocked(p) == set()  # the owner's own device: no block


async def test_device_actions_need_the_csrf_token(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        device = pending(p)
        await p.sign_in()
        refused = await p.post("/devices/approve", {"id": device.id})
        assert refused.status_code == 403
        stored = p.store.get_device("alice", device.id)
        assert stored is not None
        assert stored.status == "pending"
