"""Devices: the mail clients the account trusts, and the ones waiting for the
owner's "was this you?".

Routes: `GET /devices` (trusted and pending; each row is `#device-ID`, the
anchor the new-device mail links to), `POST /devices/approve` (a pending one:
a fresh second factor first, since it lets a device in), `POST /devices/reject`
(a pending one: "that wasn't me"), `POST /devices/revoke` (a trusted one).

Rules:

* An id from a form names a device of the signed-in account only (the store's
  `user, id` calls): another account's id changes nothing.
* Approval means what `imapguard device approve` means: trusted at the exact
  address its last login came from, for `approved_device_trust` seconds (it
  proved no code, so for less time than a device that did).
* Rejecting a pending device removes it and blocks the address it came from
  for this account (whoever has the password is there), and for everyone only
  when no other account logged in from it (`Defense.owner_report`: one user
  cannot shut a shared address for all; a few reports per account and window,
  then nothing more is blocked); nothing when that is the address the owner is
  using right now (the owner would block themselves).
* Revoking and rejecting go through `store.revoke(user, "device:ID")`: removed
  and published at once, so the gateways end its live sessions within seconds.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from imapguard.defense.engine import Defense
from imapguard.defense.owner import OWNER_REPORTS, OwnerVerdict
from imapguard.errors import StateError
from imapguard.portal.account import RECORD_ID, notice_of, utc
from imapguard.portal.kit import Kit, field, see_other, unavailable
from imapguard.portal.sessions import Current
from imapguard.state.accounts import DeviceRecord

__all__ = ["Devices"]


def _row(device: DeviceRecord, now: float) -> dict[str, object]:
    client = f"{device.client_name} {device.client_version}".strip()
    if device.trusted_at(now):
        state = f"trusted until {utc(device.trusted_until)}"
    elif device.status == "pending":
        state = "waiting for your approval"
    else:
        state = "trust expired"
    return {
        "id": device.id,
        "client": client or "a mail app that did not name itself",
        "network": device.network,
        "address": device.last_address or "unknown",
        "seen": utc(device.last_seen_at),
        "created": utc(device.created_at),
        "state": state,
        "pending": device.status == "pending",
    }


class Devices:
    def __init__(self, kit: Kit, defense: Defense | None, approved_trust: float) -> None:
        self.kit = kit
        self.defense = defense
        self.approved_trust = approved_trust

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/devices", self.list, methods=["GET"]),
            Route("/devices/approve", self.approve, methods=["POST"]),
            # Where the confirm page sends the owner back after a fresh factor.
            Route("/devices/approve", self.back, methods=["GET"]),
            Route("/devices/reject", self.reject, methods=["POST"]),
            Route("/devices/revoke", self.revoke, methods=["POST"]),
        ]

    async def list(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        try:
            devices = await self.kit.call(self.kit.store.list_devices, signed_in.session.user)
        except StateError:
            return unavailable()
        now = self.kit.clock()
        rows = [_row(d, now) for d in devices]
        context = {
            "pending": [r for r in rows if r["pending"]],
            "known": [r for r in rows if not r["pending"]],
            "notice": notice_of(request),
        }
        return self.kit.render(request, signed_in, "devices.html", context)

    async def back(self, request: Request) -> Response:
        del request
        return see_other("/devices")

    async def _device(self, request: Request, user: str) -> DeviceRecord | None:
        device_id = field(await request.form(), "id", 64)
        if not RECORD_ID.fullmatch(device_id):
            return None
        return await self.kit.call(self.kit.store.get_device, user, device_id)

    async def approve(self, request: Request) -> Response:
        signed_in = self.kit.fresh(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user = signed_in.session.user
        try:
            device = await self._device(request, user)
            done = (
                device is not None
                and device.status == "pending"
                and await self.kit.call(
                    self.kit.store.approve_device,
                    user,
                    device.id,
                    self.kit.clock() + self.approved_trust,
                )
            )
        except StateError:
            return unavailable()
        shown = device.id if device is not None else None
        self.kit.emit(request, user, "device_approve", "ok" if done else "not_found", shown)
        return see_other("/devices?done=" + ("approved" if done else "nothing"))

    async def reject(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user = signed_in.session.user
        now = self.kit.clock()
        try:
            device = await self._device(request, user)
            done = (
                device is not None
                and device.status == "pending"
                and await self.kit.call(self.kit.store.revoke, user, f"device:{device.id}", now)
            )
            verdict = None
            if done and device is not None and self._should_block(request, device):
                verdict = await self.kit.call(self._block, request, user, device)
        except StateError:
            return unavailable()
        reason = None if device is None else device.id
        if verdict is not None and verdict.limited:
            reason = f"{reason} not blocked: {OWNER_REPORTS} reports in the window"
        elif verdict is not None and verdict.blocked:
            reason = f"{reason} blocked " + " ".join(str(t) for t in verdict.blocked)
        self.kit.emit(request, user, "device_reject", "ok" if done else "not_found", reason)
        return see_other("/devices?done=" + ("rejected" if done else "nothing"))

    def _should_block(self, request: Request, device: DeviceRecord) -> bool:
        address = device.last_address
        return self.defense is not None and bool(address) and address != Kit.client(request).ip

    def _block(self, request: Request, user: str, device: DeviceRecord) -> OwnerVerdict | None:
        """Block the rejected device's address (on the store's thread)."""
        if self.defense is None or not device.last_address:
            return None
        rid = Kit.client(request).session
        reason = "pending device rejected by the account's owner"
        verdict = self.defense.owner_report(user, device.last_address, reason)
        for event in verdict.events:
            self.kit.audit.emit(event.record(rid))
        return verdict

    async def revoke(self, request: Request) -> Response:
        signed_in = self.kit.full(request)
        if not isinstance(signed_in, Current):
            return signed_in
        user = signed_in.session.user
        try:
            device = await self._device(request, user)
            done = device is not None and await self.kit.call(
                self.kit.store.revoke, user, f"device:{device.id}", self.kit.clock()
            )
        except StateError:
            return unavailable()
        shown = device.id if device is not None else None
        self.kit.emit(request, user, "device_revoke", "ok" if done else "not_found", shown)
        return see_other("/devices?done=" + ("revoked" if done else "nothing"))
