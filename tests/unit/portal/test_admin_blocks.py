"""Blocks, spraying alerts and lockouts on the admin pages: listed with reason
and expiry, lifted only by an admin's POST with the CSRF token, each lift one
audit line naming the admin and the target."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.audit import events
from imapguard.defense import Defense
from imapguard.defense.counters import Target, TargetKind
from imapguard.portal.admin_charts import LOCK_MARKER
from tests.unit.portal.support import Portal, csrf_of, portal

pytestmark = pytest.mark.asyncio

SOURCE = Target(TargetKind.SOURCE, "198.51.100.7")


def _defense(p: Portal) -> Defense:
    services = p.deps.services
    assert services is not None
    assert services.defense is not None
    return services.defense


def _blocked(p: Portal) -> list[str]:
    return [str(b.target) for b in _defense(p).blocks()]


async def test_blocks_page_lists_reason_and_expiry_and_unblocks(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        _defense(p).block(SOURCE, "tried a sprayed password <b>x</b>")
        await p.sign_in("carol")
        page = await p.client.get("/admin/blocks")
        assert "198.51.100.7" in page.text
        assert "tried a sprayed password &lt;b&gt;x&lt;/b&gt;" in page.text
        assert "UTC" in page.text
        response = await p.post(
            "/admin/blocks/clear", {"csrf": csrf_of(page), "target": str(SOURCE)}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/admin/blocks?done=lifted"
        assert _blocked(p) == []
        lines = [e for e in p.events() if e["action"] == "admin_unblock"]
        assert lines == [
            {
                **lines[0],
                "user": "carol",
                "result": "ok",
                "target": "source:198.51.100.7",
                "src": "192.0.2.10",
            }
        ]


async def test_unblock_without_csrf_leaves_the_block(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        _defense(p).block(SOURCE, "spray")
        await p.sign_in("carol")
        refused = await p.post("/admin/blocks/clear", {"target": str(SOURCE)})
        assert refused.status_code == 403
        assert _blocked(p) == [str(SOURCE)]


async def test_unblock_by_a_non_admin_with_a_valid_token_leaves_the_block(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        _defense(p).block(SOURCE, "spray")
        await p.sign_in("alice")
        token = csrf_of(await p.client.get("/"))
        refused = await p.post("/admin/blocks/clear", {"csrf": token, "target": str(SOURCE)})
        assert refused.status_code == 404
        assert _blocked(p) == [str(SOURCE)]


async def test_forged_block_target_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        _defense(p).block(SOURCE, "spray")
        await p.sign_in("carol")
        token = csrf_of(await p.client.get("/admin/blocks"))
        for target in ("198.51.100.7", "nonsense:1", "", "source:" + "9" * 700):
            response = await p.post("/admin/blocks/clear", {"csrf": token, "target": target})
            assert response.status_code == 400, target
        assert _blocked(p) == [str(SOURCE)]
        gone = await p.post("/admin/blocks/clear", {"csrf": token, "target": "source:203.0.113.9"})
        assert gone.headers["location"] == "/admin/blocks?done=gone"
        results = [e["result"] for e in p.events() if e["action"] == "admin_unblock"]
        assert results == ["not_found"]


async def test_spraying_alerts_and_fingerprint_blocks_are_shown(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        _defense(p).block(Target(TargetKind.FINGERPRINT, "fp123"), "one password on 9 accounts")
        p.deps.audit.emit(
            events.SprayAlert(
                by="fingerprint",
                key="fp123",
                accounts=9,
                sources=["198.51.100.7"],
                enforced=True,
            )
        )
        await p.sign_in("carol")
        page = await p.client.get("/admin/blocks")
        assert "fingerprint:fp123" in page.text
        alerts = page.text.split("Spraying alerts")[1].split("Current blocks")[0]
        assert "fp123" in alerts
        assert "198.51.100.7" in alerts
        assert ">9<" in alerts
        overview = await p.client.get("/admin")
        assert "1 recent spraying alerts" in overview.text
        assert "1 fingerprint" in overview.text


async def test_posture_is_shown(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        page = await p.client.get("/admin")
        assert "posture is <strong>normal</strong>" in page.text


async def test_lockouts_listed_and_unlocked(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        defense, store, now = _defense(p), p.store, p.clock()
        defense.block(Target(TargetKind.ACCOUNT_UNFAMILIAR, "bob"), "12 wrong passwords")
        defense.block(Target(TargetKind.ACCOUNT_SOURCE, "198.51.100.8|bob"), "5 wrong passwords")
        store.set_totp("alice", b"sealed", now)
        assert store.record_totp_failure("alice", now, 900.0, 1, 900.0)
        p.deps.audit.emit(
            events.Auth(
                src="198.51.100.9",
                listener="portal",
                mechanism="PORTAL-TOTP",
                user="alice",
                result="invalid",
                reason=f"wrong one-time code; {LOCK_MARKER}",
            )
        )
        await p.sign_in("carol")
        page = await p.client.get("/admin/lockouts")
        assert "locked for unfamiliar sources" in page.text
        assert "blocked from 198.51.100.8" in page.text
        assert "one-time codes locked until" in page.text
        token = csrf_of(page)
        for user in ("bob", "alice"):
            done = await p.post("/admin/lockouts/unlock", {"csrf": token, "user": user})
            assert done.headers["location"] == "/admin/lockouts?done=unlocked"
        assert _blocked(p) == []
        record = store.get_totp("alice")
        assert record is not None
        assert record.locked_until is None
        page = await p.client.get("/admin/lockouts")
        assert "No account is locked out." in page.text
        lines = [(e["user"], e["target"]) for e in p.events() if e["action"] == "admin_unlock"]
        assert lines == [("carol", "bob"), ("carol", "alice")]


async def test_unlock_of_a_malformed_name_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        token = csrf_of(await p.client.get("/admin/lockouts"))
        for user in ("", 'a"b', "x" * 300, "bad\x00name"):
            response = await p.post("/admin/lockouts/unlock", {"csrf": token, "user": user})
            assert response.status_code == 400, user
