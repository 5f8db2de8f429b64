"""What a notice says, and what became of it: the notice, its webhook document
(schema version 1, see imapguard.notify), and the result per channel."""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from imapguard.secret import Secret
from imapguard.text import clean

__all__ = [
    "ACCOUNT_CHANGES",
    "OWNER_ONLY",
    "SCHEMA_VERSION",
    "Channel",
    "Delivery",
    "Notice",
    "NoticeKind",
    "NotifyResult",
    "NotifyStatus",
]

SCHEMA_VERSION = 1


class NoticeKind(enum.Enum):
    COMPROMISE_SIGNAL = "compromise_signal"  # correct password, missing factor
    NEW_DEVICE = "new_device"  # a device awaits the owner's approval
    LOCKOUT = "lockout"  # unfamiliar sources are locked out of the account
    DISOWNED = "disowned"  # the owner said a sign-in "wasn't me" (portal)
    # A right password at the portal from a source unfamiliar to the account.
    PORTAL_PASSWORD = "portal_password"  # noqa: S105 - a notice kind
    INVITATION_USED = "invitation_used"  # an invitation set up the account's factor
    # The owner's portal changed how the account signs in (`ACCOUNT_CHANGES`).
    TOTP_ADDED = "totp_added"
    TOTP_REPLACED = "totp_replaced"
    TOTP_REMOVED = "totp_removed"
    PASSKEY_ADDED = "passkey_added"
    PASSKEY_REMOVED = "passkey_removed"
    RECOVERY_CODES = "recovery_codes"  # a new set, the earlier one void
    APP_PASSWORD_CREATED = "app_password_created"  # noqa: S105 - a notice kind


_DEFAULT_SUMMARY: dict[NoticeKind, str] = {
    NoticeKind.COMPROMISE_SIGNAL: "Correct password, second factor missing",
    NoticeKind.NEW_DEVICE: "New device awaits approval",
    NoticeKind.LOCKOUT: "Locked out after repeated failed sign-ins",
    NoticeKind.DISOWNED: "A sign-in was reported as not the owner's",
    NoticeKind.PORTAL_PASSWORD: "Correct password at the portal from an unfamiliar address",
    NoticeKind.INVITATION_USED: "An invitation link set up a new second factor",
    NoticeKind.TOTP_ADDED: "An authenticator app was set up for the account",
    NoticeKind.TOTP_REPLACED: "The account's authenticator app was replaced by a new one",
    NoticeKind.TOTP_REMOVED: "The account's authenticator app was removed",
    NoticeKind.PASSKEY_ADDED: "A passkey was added to the account",
    NoticeKind.PASSKEY_REMOVED: "A passkey was removed from the account",
    NoticeKind.RECOVERY_CODES: "A new set of recovery codes was made for the account",
    NoticeKind.APP_PASSWORD_CREATED: "A new app password was created for the account",
}

#: A change made in the portal, by whoever holds a signed-in session with a
#: fresh second factor: the owner, or a thief making the account theirs.
ACCOUNT_CHANGES = frozenset(
    {
        NoticeKind.TOTP_ADDED,
        NoticeKind.TOTP_REPLACED,
        NoticeKind.TOTP_REMOVED,
        NoticeKind.PASSKEY_ADDED,
        NoticeKind.PASSKEY_REMOVED,
        NoticeKind.RECOVERY_CODES,
        NoticeKind.APP_PASSWORD_CREATED,
    }
)

#: Told to the owner (and the webhook) only: each is the owner's own doing most
#: of the time, and an admin mail per sign-in, per rollout invitation or per
#: new app password would bury the ones that matter.
OWNER_ONLY = frozenset({NoticeKind.PORTAL_PASSWORD, NoticeKind.INVITATION_USED}) | ACCOUNT_CHANGES


@dataclass(frozen=True)
class Notice:
    """What happened, to whom, from where, when. Never a password or a code."""

    kind: NoticeKind
    user: str
    source: str
    time: float
    client_id: str | None = None
    device_id: str | None = None
    summary: str = ""  # empty: the kind's standard one-liner

    def __post_init__(self) -> None:
        if not isinstance(self.kind, NoticeKind):
            raise TypeError("Notice.kind must be a NoticeKind")
        for name in ("user", "source", "client_id", "device_id", "summary"):
            if isinstance(getattr(self, name), (Secret, bytes, bytearray)):
                raise TypeError(f"Notice.{name} must be text, never a secret or raw bytes")
        if not self.user:
            raise ValueError("Notice.user must not be empty")
        if not math.isfinite(self.time):
            raise ValueError("Notice.time must be a finite Unix time")
        if not self.summary:
            object.__setattr__(self, "summary", _DEFAULT_SUMMARY[self.kind])

    @property
    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.time, UTC)

    def to_dict(self) -> dict[str, Any]:
        """The webhook document, schema version 1 (see the module docstring)."""
        return {
            "version": SCHEMA_VERSION,
            "kind": self.kind.value,
            "user": clean(self.user),
            "src": clean(self.source),
            "client_id": None if self.client_id is None else clean(self.client_id),
            "device_id": None if self.device_id is None else clean(self.device_id),
            "ts": round(self.time, 6),
            "time": self.utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "summary": clean(self.summary),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)


class Channel(enum.Enum):
    WEBHOOK = "webhook"
    OWNER_MAIL = "owner_mail"
    ADMIN_MAIL = "admin_mail"


@dataclass(frozen=True)
class Delivery:
    channel: Channel
    ok: bool
    detail: str  # "HTTP 204", "accepted", or why it failed; never a secret


class NotifyStatus(enum.Enum):
    SENT = "sent"  # every channel delivered
    PARTIAL = "partial"  # some channels delivered, some failed
    FAILED = "failed"  # nothing delivered (see deliveries / detail)
    RATE_LIMITED = "rate_limited"  # already told within min_interval, or over max_per_hour


@dataclass(frozen=True)
class NotifyResult:
    notice: Notice
    status: NotifyStatus
    deliveries: tuple[Delivery, ...] = ()
    detail: str | None = None  # why nothing was attempted (rate check failed)

    @property
    def ok(self) -> bool:
        return self.status in (NotifyStatus.SENT, NotifyStatus.RATE_LIMITED)

    @classmethod
    def of(cls, notice: Notice, deliveries: tuple[Delivery, ...]) -> NotifyResult:
        delivered = sum(d.ok for d in deliveries)
        if deliveries and delivered == len(deliveries):
            status = NotifyStatus.SENT
        elif delivered:
            status = NotifyStatus.PARTIAL
        else:
            status = NotifyStatus.FAILED
        return cls(notice, status, deliveries)
