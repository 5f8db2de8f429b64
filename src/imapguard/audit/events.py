"""Every audit event: one record type per kind, and the one place that turns a
record into its JSON line.

SIEM users parse these lines, so the schema is stable: `docs/audit-events.md`
lists every kind and field (a test keeps it true). A line is one JSON object:
`ts` (Unix time, microseconds), `event` (the kind), `session` (the connection's
id, when the event belongs to one), then the record's fields in the order
declared here; a field that is None is left out. Text a client chose (a user
name, a client ID, a reason quoting the upstream) is cleaned of control and
bidi characters (`imapguard.text`); a secret or raw bytes cannot be a field.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any, ClassVar

from imapguard.secret import Secret
from imapguard.text import clean

__all__ = [
    "Admin",
    "Admission",
    "Auth",
    "Close",
    "CompromiseSignal",
    "Connect",
    "DefenseBlock",
    "DefenseLogOnly",
    "DefenseUnavailable",
    "Event",
    "Portal",
    "Posture",
    "Refused",
    "Relay",
    "Reload",
    "SprayAlert",
    "Start",
    "StartTlsInjection",
    "Stop",
    "Tls",
    "TlsFailed",
    "all_kinds",
    "to_json",
    "to_record",
]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """A record of the audit log; `kind` is its `event` value."""

    kind: ClassVar[str] = ""
    session: str | None = None


# -- connections ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Connect(Event):
    """A client connected (its pre-auth slot was granted)."""

    kind: ClassVar[str] = "connect"
    src: str
    src_port: int
    listener: str
    tls_mode: str  # implicit | starttls
    # The load balancer's address when a PROXY header named the client (`src`).
    proxy: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Tls(Event):
    """TLS is up on a connection."""

    kind: ClassVar[str] = "tls"
    src: str
    tls_mode: str
    version: str | None = None
    cipher: str | None = None
    # The account a verified client certificate names, or "(names no account)".
    client_cert: str | None = None
    handshake: float | None = None  # seconds, once admitted


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TlsFailed(Event):
    """A TLS handshake failed or was not admitted."""

    kind: ClassVar[str] = "tls_failed"
    src: str
    tls_mode: str
    reason: str


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class StartTlsInjection(Event):
    """Bytes arrived after STARTTLS and before the handshake: discarded."""

    kind: ClassVar[str] = "starttls_injection"
    src: str
    discarded_bytes: int


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Relay(Event):
    """A logged-in connection now relays to the upstream."""

    kind: ClassVar[str] = "relay"
    src: str
    user: str | None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Close(Event):
    """A connection ended."""

    kind: ClassVar[str] = "close"
    src: str
    user: str | None = None
    reason: str
    duration: float | None = None  # seconds
    bytes_in: int | None = None
    bytes_out: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Revoked(Event):
    """A live session ended because what it logged in with was revoked."""

    kind: ClassVar[str] = "revoked"
    src: str
    user: str
    credential: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Refused(Event):
    """Connections refused at accept (pre-auth slot limits); `count` of them
    since the last such event for this source and reason."""

    kind: ClassVar[str] = "refused"
    src: str  # an IPv4 address or an IPv6 /64
    listener: str | None = None
    reason: str
    count: int


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Admission(Event):
    """The TLS handshake admission changed state."""

    kind: ClassVar[str] = "admission"
    state: str  # saturated | normal
    limit: int
    waited: int
    shed: int


# -- logins --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Auth(Event):
    """The decision on one login attempt."""

    kind: ClassVar[str] = "auth"
    src: str
    listener: str
    client_id: str | None = None
    mechanism: str
    user: str | None = None
    method: str | None = None
    factor: str | None = None
    device: str | None = None
    credential: str | None = None
    rule: str | None = None
    delay: float | None = None  # seconds the defense made it wait
    result: str  # ok | invalid | missing_factor | denied | unavailable
    reason: str
    elapsed: float | None = None  # seconds from the command to the decision


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CompromiseSignal(Event):
    """A correct password came without a sufficient second factor."""

    kind: ClassVar[str] = "compromise_signal"
    src: str
    user: str
    client_id: str | None = None
    device: str | None = None
    reason: str


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Disowned(Event):
    """The owner said a sign-in of the account "wasn't me" (portal)."""

    kind: ClassVar[str] = "disowned"
    src: str
    user: str
    sign_in: str
    sign_in_src: str
    revoked: str | None = None
    blocked: str | None = None  # the blocks in force for sign_in_src, KIND:VALUE ...
    limited: bool | None = None  # the account's reports were used up: nothing blocked


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DefenseLogOnly(Event):
    """`defense.enforce = false`: what the defense would have done."""

    kind: ClassVar[str] = "defense_log_only"
    src: str
    user: str | None = None
    would: str
    would_delay: float
    reason: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DefenseUnavailable(Event):
    """`defense.fail_open = true`: a login let on without the defense's checks,
    because its counter store could not be reached."""

    kind: ClassVar[str] = "defense_unavailable"
    src: str
    user: str | None = None
    reason: str


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DefenseBlock(Event):
    """The defense placed a block."""

    kind: ClassVar[str] = "defense_block"
    target: str
    target_kind: str
    reason: str
    level: int
    expires: float
    duration: float
    enforced: bool


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SprayAlert(Event):
    """One password on many accounts, or one source failing on many accounts."""

    kind: ClassVar[str] = "spray_alert"
    by: str
    key: str
    accounts: int
    sources: list[str]
    enforced: bool


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Posture(Event):
    """The gateway's defense posture changed."""

    kind: ClassVar[str] = "posture"
    before: str
    after: str
    ratio: float
    baseline: float
    trigger: float
    failures: int
    attempts: int
    sprays: int


# -- the portal ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Portal(Event):
    """A step of the web portal: a sign-in step, a sign-out, or a request it
    refused (the password and code checks themselves are `auth` events)."""

    kind: ClassVar[str] = "portal"
    src: str
    user: str | None = None
    # sign_in | second_factor | sign_out | request | invite | enroll_totp | oidc
    # | confirm | totp_enrol | totp_remove | passkey_add | passkey_rename
    # | passkey_remove | recovery_codes
    # | session_revoke | session_revoke_others (also after a factor change: portal.changes)
    # | app_password_create | app_password_revoke | app_password_setup
    # | device_approve | device_reject | device_revoke | disown
    # | admin_unblock | admin_unlock | admin_revoke (an admin's action; `user` is the admin)
    action: str
    # ok | failed | no_second_factor | csrf | rate_limited | password_only
    # | not_found | invalid | limit | refused | already
    result: str
    reason: str | None = None
    # What an admin's action was on: a block (KIND:VALUE), an account, or
    # "ACCOUNT CREDENTIAL" (`everything`, app-password:ID, device:ID, portal-session:ID).
    target: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Admin(Event):
    """An administrator's command (the CLI) that gave or took an account's access."""

    kind: ClassVar[str] = "admin"
    actor: str  # the local user who ran the command
    user: str
    action: str  # invite | reset_factors | revoke
    result: str  # ok | mailed | mail_failed | none
    reason: str | None = None


# -- the process -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Start(Event):
    kind: ClassVar[str] = "start"
    pid: int


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Stop(Event):
    kind: ClassVar[str] = "stop"
    pid: int


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Reload(Event):
    """A SIGHUP reload of the configuration."""

    kind: ClassVar[str] = "reload"
    result: str  # ok | failed
    reason: str | None = None


def all_kinds() -> dict[str, type[Event]]:
    """Every event kind and its record type."""
    kinds: dict[str, type[Event]] = {}
    pending = list(Event.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.kind:
            kinds[cls.kind] = cls
    return kinds


_FIELDS: dict[type[Event], tuple[str, ...]] = {}


def _field_names(cls: type[Event]) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls) if f.name != "session")
        _FIELDS[cls] = names
    return names


# One encoder for every line: `json.dumps` with arguments other than its defaults
# builds a new JSONEncoder on each call, and the gateway writes several lines
# per login.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# Built once, not on every field of every event.
_FORBIDDEN = (Secret, bytes, bytearray)


def to_json(event: Event, ts: float) -> str:
    """The event's audit line (without the newline)."""
    return _ENCODER.encode(to_record(event, ts))


def to_record(event: Event, ts: float) -> dict[str, Any]:
    """The event's audit record, as its line holds it (`to_json`)."""
    record: dict[str, Any] = {"ts": round(ts, 6), "event": event.kind}
    if event.session is not None:
        record["session"] = event.session
    for name in _field_names(type(event)):
        value = getattr(event, name)
        if value is None:
            continue
        if isinstance(value, str):
            value = clean(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, _FORBIDDEN):
            raise TypeError(f"audit field {name!r} must not hold a secret or raw bytes")
        record[name] = value
    return record
