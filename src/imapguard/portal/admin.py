"""The admin pages: the overview and posture, the live authentication events,
the blocks and spraying alerts, the lockouts, the charts (`admin_users`: a
user's page and the policy explainer).

Rules (beyond those of `kit`):

* Every route, the event stream and every POST included, starts with
  `kit.admin(request)`: a full session (both factors) of a member of
  `portal.admin_group`; anyone else signed in gets 404, a password-only
  session is sent to the code step.
* What an admin changes (unblock, unlock, revoke) is a POST with the CSRF
  token, names its target in a form field that is parsed strictly, and writes
  one `portal` audit line: `user` the acting admin, `target` what was changed,
  `result` `ok` or `not_found`.
* Reads of the audit log run off the event loop; store and defense calls on
  the store's thread (`kit.call`).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from imapguard.defense.counters import Block, Target, TargetKind
from imapguard.defense.engine import Defense
from imapguard.errors import StateError
from imapguard.portal.admin_charts import Bar, Series, Tally, bar_chart
from imapguard.portal.admin_feed import RESULTS, AuthFilter, FeedBatch, FileFeed, LiveFeed, shown
from imapguard.portal.admin_live import Live
from imapguard.portal.admin_users import AdminUsers, emit_admin, when
from imapguard.portal.kit import Kit, field, see_other, unavailable
from imapguard.portal.sessions import Current

__all__ = ["Admin"]

# The newest events the events page shows before the live ones are appended.
NEWEST = 50
# Blocks listed on a page (the rest are counted): under attack there may be thousands.
MAX_LISTED = 500
_TARGET_LIMIT = 600


class Admin:
    def __init__(
        self,
        kit: Kit,
        defense: Defense | None,
        audit_path: str,
        users: AdminUsers,
        live: LiveFeed | None = None,
    ):
        """`live`: where the live events come from (None: the audit log file)."""
        self.kit = kit
        self.defense = defense
        self.audit_path = audit_path
        self.tally = Tally(audit_path)
        self.live = Live(kit, live if live is not None else FileFeed(audit_path))
        self.users = users

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/admin", self.overview, methods=["GET"]),
            Route("/admin/events", self.events_page, methods=["GET"]),
            Route("/admin/events/stream", self.live.stream, methods=["GET"]),
            Route("/admin/blocks", self.blocks_page, methods=["GET"]),
            Route("/admin/blocks/clear", self.unblock, methods=["POST"]),
            Route("/admin/lockouts", self.lockouts_page, methods=["GET"]),
            Route("/admin/lockouts/unlock", self.unlock, methods=["POST"]),
            Route("/admin/charts", self.charts_page, methods=["GET"]),
            *self.users.routes(),
        ]

    async def _refresh(self) -> None:
        await asyncio.to_thread(self.tally.refresh, self.kit.clock())

    async def _posture(self) -> dict[str, str]:
        if self.defense is None:
            return {"mode": "no defense configured", "since": "-", "baseline": "-"}
        posture = await self.kit.call(self.defense.posture)
        state = await self.kit.call(self.defense.posture_state)
        return {
            "mode": "under attack" if posture.value == "under_attack" else "normal",
            "since": when(state.since) if state is not None else "-",
            "baseline": f"{state.baseline:.1%}" if state is not None else "-",
        }

    async def _blocks(self) -> list[Block]:
        return [] if self.defense is None else await self.kit.call(self.defense.blocks)

    # -- the overview -------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        admin = self.kit.admin(request)
        if not isinstance(admin, Current):
            return admin
        try:
            posture = await self._posture()
            blocks = await self._blocks()
        except StateError:
            return unavailable()
        await self._refresh()
        hour = self.tally.series(self.kit.clock(), 60, 60)
        by_kind: dict[str, int] = defaultdict(int)
        for block in blocks:
            by_kind[block.target.kind.value] += 1
        return self.kit.render(
            request,
            admin,
            "admin.html",
            {
                "posture": posture,
                "blocks": len(blocks),
                "by_kind": sorted(by_kind.items()),
                "ok_hour": sum(hour.ok),
                "failed_hour": sum(hour.failed),
                "alerts": len(self.tally.alerts()),
            },
        )

    # -- live events ----------------------------------------------------------------

    async def events_page(self, request: Request) -> Response:
        admin = self.kit.admin(request)
        if not isinstance(admin, Current):
            return admin
        q = request.query_params
        error = ""
        try:
            wanted = AuthFilter.parse(q.get("user"), q.get("source"), q.get("result"))
        except ValueError as exc:
            wanted, error = AuthFilter(), str(exc)
        try:
            batch = await asyncio.to_thread(self.live.feed.newest)
        except StateError:  # the live page says so
            batch = FeedBatch([], "", False)
        newest = [shown(r) for r in batch.records if wanted.matches(r)][-NEWEST:]
        newest.reverse()
        for row in newest:
            row["when"] = when(float(row["ts"])) if row["ts"] else "-"
        query = {**wanted.query(), "after": batch.position}
        return self.kit.render(
            request,
            admin,
            "admin_events.html",
            {
                "error": error,
                "filter": wanted.query(),
                "results": RESULTS,
                "events": newest,
                "stream": "/admin/events/stream?" + urlencode(query),
            },
            status_code=400 if error else 200,
        )

    # -- blocks and spraying -----------------------------------------------------------

    async def blocks_page(self, request: Request) -> Response:
        admin = self.kit.admin(request)
        if not isinstance(admin, Current):
            return admin
        try:
            blocks = await self._blocks()
            posture = await self._posture()
        except StateError:
            return unavailable()
        await self._refresh()
        blocks.sort(key=lambda b: (-b.created, b.target.key))
        sprays = [b for b in blocks if b.target.kind is TargetKind.FINGERPRINT]
        return self.kit.render(
            request,
            admin,
            "admin_blocks.html",
            {
                "blocks": [_block_row(b) for b in blocks[:MAX_LISTED]],
                "more": max(0, len(blocks) - MAX_LISTED),
                "sprays": [_block_row(b) for b in sprays[:MAX_LISTED]],
                "alerts": [_alert_row(a) for a in self.tally.alerts()],
                "posture": posture,
                "defense": self.defense is not None,
                "done": request.query_params.get("done", "")[:_TARGET_LIMIT],
            },
        )

    async def unblock(self, request: Request) -> Response:
        admin = self.kit.admin(request)
        if not isinstance(admin, Current):
            return admin
        form = await request.form()
        try:
            target = Target.parse(field(form, "target", _TARGET_LIMIT))
        except ValueError:
            return self.kit.render(
                request, admin, "admin_problem.html", {"problem": "No such block."}, status_code=400
            )
        if self.defense is None:
            return see_other("/admin/blocks")
        try:
            cleared = await self.kit.call(self.defense.clear, target)
        except StateError:
            return unavailable()
        emit_admin(self.kit, request, admin, "admin_unblock", str(target), done=cleared)
        return see_other("/admin/blocks?done=" + ("lifted" if cleared else "gone"))

    # -- lockouts ---------------------------------------------------------------------

    async def lockouts_page(self, request: Request) -> Response:
        admin = self.kit.admin(request)
        if not isinstance(admin, Current):
            return admin
        await self._refresh()
        now = self.kit.clock()
        try:
            blocks = await self._blocks()
            rows = _lockouts(blocks)
            for user in self.tally.locked_accounts():
                record = await self.kit.call(self.kit.store.get_totp, user)
                if record is not None and record.locked_until and record.locked_until > now:
                    rows.setdefault(user, []).append(
                        f"one-time codes locked until {when(record.locked_until)}"
                    )
        except StateError:
            return unavailable()
        return self.kit.render(
            request,
            admin,
            "admin_lockouts.html",
            {
                "accounts": sorted(rows.items())[:MAX_LISTED],
                "done": request.query_params.get("done", "")[:_TARGET_LIMIT],
            },
        )

    async def unlock(self, request: Request) -> Response:
        admin = self.kit.admin(request)
        if not isinstance(admin, Current):
            return admin
        form = await request.form()
        user = self.users.account(field(form, "user", 512))
        if user is None:
            return self.kit.render(
                request,
                admin,
                "admin_problem.html",
                {"problem": "No such account."},
                status_code=400,
            )
        try:
            lifted = [] if self.defense is None else await self.kit.call(self.defense.unlock, user)
            codes = await self.kit.call(self.kit.store.clear_totp_lock, user)
        except StateError:
            return unavailable()
        emit_admin(self.kit, request, admin, "admin_unlock", user, done=bool(lifted) or codes)
        back = field(form, "back", 16)
        if back == "user":
            return see_other(self.users.path_of(user))
        return see_other("/admin/lockouts?done=" + ("unlocked" if lifted or codes else "gone"))

    # -- charts -------------------------------------------------------------------------

    async def charts_page(self, request: Request) -> Response:
        admin = self.kit.admin(request)
        if not isinstance(admin, Current):
            return admin
        await self._refresh()
        now = self.kit.clock()
        charts = [
            _chart(
                "day",
                "Sign-ins in the last 24 hours, per hour",
                self.tally.series(now, 3600, 24),
                "%H:00",
            ),
            _chart(
                "hour",
                "Sign-ins in the last hour, per minute",
                self.tally.series(now, 60, 60),
                "%H:%M",
            ),
        ]
        return self.kit.render(request, admin, "admin_charts.html", {"charts": charts})


def _block_row(block: Block) -> dict[str, str]:
    return {
        "target": str(block.target),
        "kind": block.target.kind.value,
        "value": block.target.value,
        "reason": block.reason,
        "level": str(block.level),
        "since": when(block.created),
        "until": when(block.expires),
    }


def _alert_row(alert: dict[str, Any]) -> dict[str, str]:
    sources = alert.get("sources")
    ts = alert.get("ts")
    return {
        "when": when(float(ts)) if isinstance(ts, int | float) else "-",
        "by": str(alert.get("by", "")),
        "key": str(alert.get("key", "")),
        "accounts": str(alert.get("accounts", "")),
        "sources": ", ".join(str(s) for s in sources[:20]) if isinstance(sources, list) else "",
        "enforced": "yes" if alert.get("enforced") else "no (log only)",
    }


def _lockouts(blocks: Sequence[Block]) -> dict[str, list[str]]:
    """The defense's account lockouts, per account."""
    rows: dict[str, list[str]] = {}
    for block in blocks:
        if block.target.kind is TargetKind.ACCOUNT_UNFAMILIAR:
            user, what = block.target.value, "locked for unfamiliar sources"
        elif block.target.kind is TargetKind.ACCOUNT_SOURCE:
            address, _, user = block.target.value.partition("|")
            what = f"blocked from {address}"
        else:
            continue
        rows.setdefault(user, []).append(f"{what} until {when(block.expires)}: {block.reason}")
    return rows


def _chart(chart_id: str, title: str, series: Series, label: str) -> dict[str, Any]:
    bars = [
        Bar(time.strftime(label, time.gmtime(series.start + i * series.step)), ok, failed)
        for i, (ok, failed) in enumerate(zip(series.ok, series.failed, strict=True))
    ]
    total_ok, total_failed = sum(series.ok), sum(series.failed)
    summary = f"{total_ok} successful and {total_failed} failed sign-ins (times in UTC)."
    return {
        "id": chart_id,
        "title": title,
        "summary": summary,
        "svg": Markup(bar_chart(title, summary, bars, f"chart-{chart_id}")),  # noqa: S704 - escaped in bar_chart
        "rows": [b for b in bars if b.ok or b.failed],
    }
