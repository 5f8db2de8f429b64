"""Out-of-band notifications: tell the account owner and the admins (SPEC `[notify]`).

Three kinds of notice: a compromise signal (correct password, missing second
factor), a new device awaiting approval, and a lockout. Each goes to a webhook
(JSON, optionally HMAC-signed) and/or by mail (one message to the owner, one to
the admins), at most once per account and kind per `min_interval`.

Rules:

- **Never delay a login.** The gateway calls `Notifier.submit(notice)`, which only
  schedules the work on the notifier's own TaskGroup and returns at once; it never
  awaits `notify()` on the login path. At most `max_pending` notices wait (beyond
  that they are dropped and logged: a client that can trigger notices must not be
  able to grow our memory), and at most `max_concurrent` are sent at a time.
- **Never raise.** `notify()` returns a `NotifyResult` with one `Delivery` per
  channel and a reason for each failure, and logs it on "imapguard.notify".
- **At most once per account and kind per interval**, across every gateway node:
  the caller supplies `should_send(user, kind, now)`, an atomic check-and-set in
  the shared state store (Redis: `SET notify:{kind}:{user} 1 NX EX interval`; SQLite:
  `INSERT ... ON CONFLICT DO UPDATE ... WHERE last <= now - interval` in one
  transaction), which answers True to exactly one caller per window. The slot is
  taken before sending, so a failed send is not retried within the window: the
  audit log has the event anyway. If the check fails (store down), nothing is
  sent. `MemoryRateLimit` is the single-node/test version.
- **No secrets, no injection.** A notice never holds a password or a code. Every
  client-chosen text (account name, client ID) is made printable and bounded
  before it goes anywhere: CR/LF and other controls, C1 controls, Unicode line
  separators and bidi overrides become "?"; the owner's address is built from the
  account name only when the result is a plain addr-spec (otherwise only the
  admins are mailed); `EmailMessage` refuses CR/LF in headers as a second line.
  Logs name the webhook by its origin only (webhook URLs often carry a token).
- **Verified transport.** The webhook is https (http only to loopback), with
  `webhook_ca_file` as the only trust anchor when set; redirects are not followed
  and proxy environment variables are ignored. SMTP uses STARTTLS or implicit TLS
  verified against `smtp_ca_file` (or the system store); "none" is allowed to a
  loopback relay only, and never with credentials.

Webhook body (`Notice.to_json()`, schema version 1; every key always present):

    {"version": 1,                      integer; bumped on incompatible change
     "kind": "compromise_signal" | "new_device" | "lockout",
     "user": "alice",                   account name (printable, <= 256 chars)
     "src": "203.0.113.9",              client address (as in the audit log)
     "client_id": "Thunderbird" | null, what the client called itself (IMAP ID)
     "device_id": "d-1" | null,         the pending device (new_device)
     "ts": 1714564800.0,                Unix time of the event, seconds
     "time": "2024-05-01T12:00:00Z",    the same, RFC 3339 UTC
     "summary": "..."}                  one line for people

Headers: `Content-Type: application/json`, `X-Imapguard-Event: <kind>` and, when
`webhook_secret` is set, `X-Imapguard-Signature: sha256=<hex HMAC-SHA256 of the
exact body bytes>`. A receiver recomputes the HMAC over the raw body, compares in
constant time, and rejects a `ts` older than a few minutes (replays).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import logging
import math
import re
import shlex
import smtplib
import ssl
import textwrap
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from imapguard import __version__
from imapguard.errors import ConfigError
from imapguard.net import is_loopback
from imapguard.secret import Secret
from imapguard.text import clean

__all__ = [
    "Channel",
    "Delivery",
    "Mail",
    "MemoryRateLimit",
    "Notice",
    "NoticeKind",
    "Notifier",
    "NotifyResult",
    "NotifySettings",
    "NotifyStatus",
    "ShouldSend",
    "build_messages",
    "owner_address",
    "sign",
    "webhook_request",
]

log = logging.getLogger("imapguard.notify")

SCHEMA_VERSION = 1

#: Notices waiting to be sent. One notice is a few hundred bytes plus a task; a
#: thousand covers a burst of lockouts during an attack with room to spare.
DEFAULT_MAX_PENDING = 1000
#: Notices sent at a time: each holds an SMTP thread and a webhook connection.
#: A small number keeps the thread pool and the resolver free for logins.
DEFAULT_MAX_CONCURRENT = 4
#: How long `aclose()` lets pending notices finish before cancelling them.
DEFAULT_CLOSE_GRACE = 3.0
_MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3 path limit minus the angle brackets
_MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
_SUBJECT_USER_LIMIT = 64

ShouldSend = Callable[[str, str, float], Awaitable[bool]]
"""should_send(user, kind, now): True for exactly one caller per account, kind
and interval (an atomic check-and-set in the shared state store). `user` is the
account name in lower case (accounts compare case-insensitively), `kind` a
`NoticeKind` value, `now` the notifier's clock in Unix seconds."""


# ---------------------------------------------------------------------------
# Text hygiene


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def _is_address(text: str) -> bool:
    """A plain ASCII addr-spec (dot-atom@domain): nothing a header or an SMTP
    command could read as a second address, a comment or a new line."""
    if len(text) > _MAX_ADDRESS or text.count("@") != 1:
        return False
    local, domain = text.split("@")
    return (
        len(local) <= _MAX_LOCAL_PART
        and _LOCAL.fullmatch(local) is not None
        and _DOMAIN.fullmatch(domain) is not None
    )


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL: what may be logged of it."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


# ---------------------------------------------------------------------------
# Settings


SmtpTls = Literal["starttls", "implicit", "none"]
_SMTP_DEFAULT_PORT: dict[str, int] = {"starttls": 587, "implicit": 465, "none": 25}


@dataclass(frozen=True)
class NotifySettings:
    """The `[notify]` section. Validated on construction (`ConfigError` names
    every bad key); files (CA bundles) are read by `Notifier`."""

    webhook_url: str | None = None
    webhook_secret: Secret | None = None
    webhook_ca_file: str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None  # None: 587 (starttls), 465 (implicit), 25 (none)
    smtp_tls: SmtpTls = "starttls"
    smtp_username: str | None = None
    smtp_password: Secret | None = None
    smtp_ca_file: str | None = None
    mail_from: str | None = None
    #: How an account name becomes its owner's address: "{user}" when account
    #: names are addresses, "{user}@example.org" when they are local parts, None
    #: to mail the admins only.
    owner_address: str | None = "{user}"
    admin_addresses: tuple[str, ...] = ()
    #: Named in the mails ("approve the device in the portal at ...").
    portal_url: str | None = None
    timeout: float = 10.0
    min_interval: float = 3600.0
    #: At most this many notices an hour in all, whatever the accounts (per node).
    max_per_hour: int = 200

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []

        def add(key: str, message: str) -> None:
            out.append((f"notify.{key}", message))

        if self.webhook_url is None and self.smtp_host is None:
            add("webhook_url", "set webhook_url and/or smtp_host (nothing to notify with)")
        if self.webhook_url is not None:
            parts = urlsplit(self.webhook_url)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                add("webhook_url", "must be an https:// URL")
            elif parts.scheme == "http" and not is_loopback(parts.hostname):
                add("webhook_url", "http:// only to a loopback address; use https://")
            elif parts.username is not None or parts.password is not None:
                add("webhook_url", "no credentials in the URL: use webhook_secret_file")
        elif self.webhook_secret is not None or self.webhook_ca_file is not None:
            add("webhook_url", "webhook_secret/webhook_ca_file are set but webhook_url is not")
        if self.webhook_secret is not None and len(self.webhook_secret) < 16:
            add("webhook_secret", "must hold at least 16 bytes")

        if self.smtp_host is not None:
            if self.smtp_tls not in _SMTP_DEFAULT_PORT:
                add("smtp_tls", "must be starttls, implicit or none")
            elif self.smtp_tls == "none":
                if not is_loopback(self.smtp_host):
                    add("smtp_tls", "none only to a loopback relay; use starttls or implicit")
                if self.smtp_username is not None or self.smtp_password is not None:
                    add("smtp_tls", "credentials are never sent without TLS")
            if self.smtp_port is not None and not 0 < self.smtp_port < 65536:
                add("smtp_port", "must be 1-65535")
            if (self.smtp_username is None) != (self.smtp_password is None):
                add("smtp_username", "set both smtp_username and smtp_password, or neither")
            if self.mail_from is None or not _is_address(self.mail_from):
                add("mail_from", "must be a plain address like imapguard@example.org")
            if self.owner_address is None and not self.admin_addresses:
                add("admin_addresses", "no recipients: set owner_address or admin_addresses")
            for i, address in enumerate(self.admin_addresses):
                if not _is_address(address):
                    add(f"admin_addresses[{i}]", f"not a plain address: {clean(address, 80)!r}")
        if self.owner_address is not None:
            template = self.owner_address
            rest = template.replace("{user}", "")
            if template.count("{user}") != 1 or "{" in rest or "}" in rest:
                add("owner_address", 'must contain "{user}" once, e.g. "{user}@example.org"')
            elif template != "{user}" and not _is_address(template.replace("{user}", "user")):
                add("owner_address", 'must be "{user}" or an address like "{user}@example.org"')
        if self.portal_url is not None and urlsplit(self.portal_url).scheme != "https":
            add("portal_url", "must be an https:// URL")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            add("timeout", "must be a positive number of seconds")
        if not (math.isfinite(self.min_interval) and self.min_interval >= 0):
            add("min_interval", "must be zero or a positive number of seconds")
        if self.max_per_hour < 1:
            add("max_per_hour", "must be at least 1")
        return out

    @property
    def effective_smtp_port(self) -> int:
        return self.smtp_port or _SMTP_DEFAULT_PORT.get(self.smtp_tls, 587)


# ---------------------------------------------------------------------------
# Notices


class NoticeKind(enum.Enum):
    COMPROMISE_SIGNAL = "compromise_signal"  # correct password, missing factor
    NEW_DEVICE = "new_device"  # a device awaits the owner's approval
    LOCKOUT = "lockout"  # unfamiliar sources are locked out of the account


_DEFAULT_SUMMARY: dict[NoticeKind, str] = {
    NoticeKind.COMPROMISE_SIGNAL: "Correct password, second factor missing",
    NoticeKind.NEW_DEVICE: "New device awaits approval",
    NoticeKind.LOCKOUT: "Locked out after repeated failed sign-ins",
}


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


# ---------------------------------------------------------------------------
# The pure core: the webhook request and the mails


def sign(secret: Secret, body: bytes) -> str:
    """The X-Imapguard-Signature value: "sha256=" + hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.reveal(), body, hashlib.sha256).hexdigest()


def webhook_request(notice: Notice, settings: NotifySettings) -> tuple[bytes, dict[str, str]]:
    """The exact body bytes and the headers to POST."""
    body = notice.to_json().encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"imapguard/{__version__}",
        "X-Imapguard-Event": notice.kind.value,
    }
    if settings.webhook_secret is not None:
        headers["X-Imapguard-Signature"] = sign(settings.webhook_secret, body)
    return body, headers


def owner_address(user: str, template: str | None) -> str | None:
    """The owner's mail address, or None when the account name does not make a
    plain address (CR/LF, spaces, commas, a second "@" ...): then only the
    admins are told. The account name is attacker-chosen text."""
    if template is None:
        return None
    candidate = template.replace("{user}", user)
    return candidate if _is_address(candidate) else None


class Channel(enum.Enum):
    WEBHOOK = "webhook"
    OWNER_MAIL = "owner_mail"
    ADMIN_MAIL = "admin_mail"


_OWNER_SUBJECT: dict[NoticeKind, str] = {
    NoticeKind.COMPROMISE_SIGNAL: "Sign-in without second factor to {user}",
    NoticeKind.NEW_DEVICE: "New device for {user} awaits your approval",
    NoticeKind.LOCKOUT: "Sign-ins to {user} locked after failed attempts",
}

_WHAT_HAPPENED: dict[NoticeKind, str] = {
    NoticeKind.COMPROMISE_SIGNAL: (
        'Someone signed in to the mail account "{user}" with the correct password '
        "but without the second factor. The sign-in was refused."
    ),
    NoticeKind.NEW_DEVICE: (
        'A device that has not been seen before signed in to the mail account "{user}" '
        "with the correct password. It cannot read mail until it is approved."
    ),
    NoticeKind.LOCKOUT: (
        'After repeated failed sign-ins, the mail account "{user}" is locked for a while '
        "for sign-ins from unfamiliar places. Devices that signed in before keep working."
    ),
}


def _portal(settings: NotifySettings) -> str:
    return f"the portal at {settings.portal_url}" if settings.portal_url else "the portal"


# Advice: (text, command). A command is printed on a line of its own, unwrapped
# and shell-quoted: the account name is attacker-chosen, and an admin will paste
# the line into a shell.
_Advice = list[tuple[str, str | None]]


def _owner_advice(notice: Notice, settings: NotifySettings) -> _Advice:
    portal = _portal(settings)
    match notice.kind:
        case NoticeKind.COMPROMISE_SIGNAL:
            return [
                (
                    "If this was you: use an app password for this device (create one in "
                    f"{portal}), or type your one-time code right after your password.",
                    None,
                ),
                (
                    "If this was not you: someone knows your password. Change your password "
                    "now and tell your administrator.",
                    None,
                ),
            ]
        case NoticeKind.NEW_DEVICE:
            return [
                (
                    f"If this was you: approve the device in {portal}, or ask your "
                    "administrator to approve it.",
                    None,
                ),
                (
                    "If this was not you: do not approve it. Change your password now and "
                    "tell your administrator.",
                    None,
                ),
            ]
        case NoticeKind.LOCKOUT:
            return [
                (
                    "If this was you (for example a device with an old password): fix the "
                    "password on that device and wait for the lock to expire, or ask your "
                    "administrator to clear it.",
                    None,
                ),
                (
                    "If this was not you: someone is guessing your password. Tell your "
                    "administrator, and change your password if it is weak or used elsewhere.",
                    None,
                ),
            ]


def _admin_advice(notice: Notice) -> _Advice:
    user = shlex.quote(clean(notice.user, 128))
    device = shlex.quote(clean(notice.device_id, 64)) if notice.device_id else "ID"
    show = ("The account, its devices and lockouts:", f"imapguard user show {user}")
    match notice.kind:
        case NoticeKind.COMPROMISE_SIGNAL:
            return [
                (
                    "Whoever signed in knows the password of this account. Unless the "
                    "owner confirms it was them, have the password changed.",
                    None,
                ),
                show,
            ]
        case NoticeKind.NEW_DEVICE:
            return [
                (
                    "When the owner confirms the device:",
                    f"imapguard device approve {user} {device}",
                ),
                show,
            ]
        case NoticeKind.LOCKOUT:
            return [
                ("To clear the lock once the cause is known:", f"imapguard user unlock {user}"),
                ("Current blocks:", "imapguard blocks list"),
                show,
            ]


_FOOTER = (
    "This message was sent automatically by imapguard, the gateway in front of the "
    "mail server. It never contains a password or a code and never asks for one."
)


def _body(notice: Notice, settings: NotifySettings, *, for_admins: bool) -> str:
    user = clean(notice.user, 128)
    wrap = textwrap.TextWrapper(width=72, break_long_words=False, break_on_hyphens=False)
    bullet = textwrap.TextWrapper(
        width=72, initial_indent="- ", subsequent_indent="  ", break_long_words=False
    )
    facts = [
        ("What", clean(notice.summary, 160)),
        ("Account", user),
        ("From", clean(notice.source, 64)),
    ]
    if notice.client_id:
        facts.append(("Client", f'"{clean(notice.client_id, 128)}" (as it names itself)'))
    if notice.device_id:
        facts.append(("Device", clean(notice.device_id, 64)))
    facts.append(("When", notice.utc.strftime("%Y-%m-%d %H:%M:%S UTC")))
    lines = ["Hello," if not for_admins else "Hello administrators,", ""]
    lines += wrap.wrap(_WHAT_HAPPENED[notice.kind].format(user=user))
    lines.append("")
    lines += [f"  {label + ':':<9} {value}" for label, value in facts]
    lines += ["", "What to do:"]
    advice = _admin_advice(notice) if for_admins else _owner_advice(notice, settings)
    for text, command in advice:
        lines += bullet.wrap(text)
        if command is not None:
            lines.append(f"    {command}")
    lines += ["", "-- ", *wrap.wrap(_FOOTER)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Mail:
    """One message to send, or (message None) why it cannot be sent."""

    channel: Channel
    recipients: tuple[str, ...]
    message: EmailMessage | None
    problem: str | None = None


def build_messages(notice: Notice, settings: NotifySettings) -> list[Mail]:
    """One message for the owner and one for the admins (those configured)."""
    if settings.mail_from is None:
        return []
    sender = Address(display_name="imapguard", addr_spec=settings.mail_from)
    domain = settings.mail_from.rpartition("@")[2]
    user = clean(notice.user, _SUBJECT_USER_LIMIT)

    def message(subject: str, to: tuple[str, ...], for_admins: bool) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(to)
        msg["Subject"] = subject
        msg["Date"] = format_datetime(notice.utc)
        msg["Message-ID"] = make_msgid("imapguard", domain=domain)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies
        msg["X-Imapguard-Event"] = notice.kind.value
        msg.set_content(_body(notice, settings, for_admins=for_admins))
        return msg

    out: list[Mail] = []
    if settings.owner_address is not None:
        owner = owner_address(notice.user, settings.owner_address)
        if owner is None:
            problem = "the account name does not make a plain mail address"
            out.append(Mail(Channel.OWNER_MAIL, (), None, problem))
        else:
            subject = "[imapguard] " + _OWNER_SUBJECT[notice.kind].format(user=user)
            msg = message(subject, (owner,), for_admins=False)
            out.append(Mail(Channel.OWNER_MAIL, (owner,), msg))
    if settings.admin_addresses:
        subject = f"[imapguard] {notice.kind.value.replace('_', ' ')}: {user}"
        msg = message(subject, settings.admin_addresses, for_admins=True)
        out.append(Mail(Channel.ADMIN_MAIL, settings.admin_addresses, msg))
    return out


# ---------------------------------------------------------------------------
# Results


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


# ---------------------------------------------------------------------------
# Rate limit (single node)


class MemoryRateLimit:
    """`should_send` for one node and for tests: at most one True per (user,
    kind) per `interval` seconds. Entries expire after the interval; at most
    `max_entries` are kept (the oldest is forgotten first, which at worst allows
    an early second notice, never an unbounded dict)."""

    def __init__(self, interval: float, max_entries: int = 100_000) -> None:
        self.interval = interval
        self.max_entries = max_entries
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()

    async def __call__(self, user: str, kind: str, now: float) -> bool:
        # No await in here: check and set are atomic on the event loop.
        while self._last:
            oldest_key, oldest = next(iter(self._last.items()))
            if now - oldest < self.interval and len(self._last) < self.max_entries:
                break
            del self._last[oldest_key]
        key = (user, kind)
        previous = self._last.get(key)
        # (A clock that went backwards counts as "within the interval".)
        if previous is not None and now - previous < self.interval:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        return True


# ---------------------------------------------------------------------------
# The shell: sending


def _describe(exc: BaseException) -> str:
    """A failure reason without secrets: for exceptions we do not know, only the
    type (a UnicodeEncodeError from AUTH would quote a password character)."""
    match exc:
        case TimeoutError():
            return "timed out"
        case smtplib.SMTPAuthenticationError():
            return f"SMTP authentication refused ({exc.smtp_code})"
        case smtplib.SMTPRecipientsRefused():
            codes = sorted({code for code, _ in exc.recipients.values()})
            return f"recipients refused ({', '.join(map(str, codes))})"
        case smtplib.SMTPResponseException():
            text = (
                exc.smtp_error.decode("utf-8", "replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            return f"SMTP {exc.smtp_code} {clean(text, 120)}"
        case smtplib.SMTPException() | ssl.SSLError() | OSError() | httpx.TransportError():
            return clean(f"{type(exc).__name__}: {exc}", 200)
        case _:
            return type(exc).__name__


class Notifier:
    """Sends notices by webhook and mail; see the module docstring.

        async with Notifier(settings, should_send=store.notify_once) as notifier:
            ...                         # serve; on the login path:
            notifier.submit(notice)     # returns at once, never raises

    `notify()` can also be awaited directly (tests, CLI); call `aclose()` after.
    `clock()` gives the `now` passed to `should_send`; `transport` replaces the
    webhook's HTTP transport (tests: `httpx.MockTransport`).
    """

    def __init__(
        self,
        settings: NotifySettings,
        *,
        should_send: ShouldSend,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        close_grace: float = DEFAULT_CLOSE_GRACE,
    ) -> None:
        self.settings = settings
        self._should_send = should_send
        self._clock = clock
        self.max_pending = max_pending
        self.close_grace = close_grace
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tg: asyncio.TaskGroup | None = None
        self._state: Literal["new", "running", "closed"] = "new"
        self._pending: set[asyncio.Task[NotifyResult | None]] = set()
        self._dropped = 0
        self._dropping = 0  # dropped since the queue was last not full
        # When the notices of the last hour were sent (the global cap).
        self._sent: deque[float] = deque()
        self._capped = 0  # suppressed by the cap since the last one that went out
        self._http: httpx.AsyncClient | None = None
        self._smtp_context: ssl.SSLContext | None = None
        # SMTP runs in its own threads: blocking sends must never take the
        # default executor's workers, which resolve names for logins.
        self._executor: ThreadPoolExecutor | None = None
        if settings.webhook_url is not None:
            if transport is None:
                context = _tls_context(settings.webhook_ca_file, "notify.webhook_ca_file")
                transport = httpx.AsyncHTTPTransport(verify=context, retries=0)
            self._http = httpx.AsyncClient(
                transport=transport,
                timeout=httpx.Timeout(settings.timeout),
                follow_redirects=False,
                trust_env=False,
            )
        if settings.smtp_host is not None:
            if settings.smtp_tls != "none":
                self._smtp_context = _tls_context(settings.smtp_ca_file, "notify.smtp_ca_file")
            self._executor = ThreadPoolExecutor(
                max_workers=max_concurrent, thread_name_prefix="imapguard-notify-smtp"
            )

    # -- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> Notifier:
        if self._state != "new":
            raise RuntimeError("a Notifier runs once")
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        self._state = "running"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop taking notices, let pending ones finish for `close_grace`
        seconds, cancel the rest, release connections and threads."""
        self._state = "closed"
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                try:
                    if self._pending:
                        await asyncio.wait(set(self._pending), timeout=self.close_grace)
                finally:
                    if self._pending:
                        log.warning(
                            "shutting down: %d pending notification(s) cancelled",
                            len(self._pending),
                        )
                        for task in list(self._pending):
                            task.cancel()
                    await tg.__aexit__(None, None, None)
        finally:
            if self._http is not None:
                await self._http.aclose()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)

    async def join(self) -> None:
        """Wait until every submitted notice has been sent or has failed."""
        while self._pending:
            await asyncio.wait(set(self._pending))

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def dropped(self) -> int:
        """Notices dropped because `max_pending` were already waiting."""
        return self._dropped

    def submit(self, notice: Notice) -> bool:
        """Schedule `notify(notice)` in the background and return at once (call
        it on the event loop's thread). False when dropped: the queue is full or
        the notifier is closing."""
        if self._state == "new":
            raise RuntimeError("Notifier.submit() outside `async with notifier:`")
        if self._tg is None or self._state != "running":
            log.warning(
                "notifier closed: %s notice for %s dropped",
                notice.kind.value,
                clean(notice.user, 64),
            )
            return False
        if len(self._pending) >= self.max_pending:
            self._dropped += 1
            self._dropping += 1
            if self._dropping == 1:
                log.warning(
                    "notification queue full (%d pending): dropping notices", self.max_pending
                )
            return False
        if self._dropping:
            log.warning("notification queue accepts again; %d notice(s) dropped", self._dropping)
            self._dropping = 0
        task = self._tg.create_task(self._background(notice))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    # -- sending ----------------------------------------------------------

    async def _background(self, notice: Notice) -> NotifyResult | None:
        # An exception escaping a TaskGroup child would cancel the task that
        # owns the group (the gateway): a bug here must only cost this notice.
        try:
            return await self.notify(notice)
        except Exception:
            log.exception("notification for %s failed", clean(notice.user, 64))
            return None

    async def notify(self, notice: Notice) -> NotifyResult:
        """Tell the owner and the admins, unless already told within
        `min_interval`. Never raises (except cancellation); logs the outcome."""
        try:
            async with asyncio.timeout(self.settings.timeout):
                allowed = await self._should_send(
                    notice.user.lower(), notice.kind.value, self._clock()
                )
        except Exception as exc:
            detail = f"rate-limit check failed: {_describe(exc)}"
            log.error(
                "%s notice for %s not sent: %s", notice.kind.value, clean(notice.user, 64), detail
            )
            return NotifyResult(notice, NotifyStatus.FAILED, (), detail)
        if not allowed:
            log.debug(
                "%s notice for %s suppressed: already sent within %gs",
                notice.kind.value,
                clean(notice.user, 64),
                self.settings.min_interval,
            )
            return NotifyResult(notice, NotifyStatus.RATE_LIMITED)
        if not self._within_hourly_cap():
            return NotifyResult(notice, NotifyStatus.RATE_LIMITED, (), "max_per_hour reached")
        async with self._slots, asyncio.TaskGroup() as tg:
            jobs = []
            if self._http is not None and self.settings.webhook_url is not None:
                jobs.append(
                    tg.create_task(self._webhook(self._http, self.settings.webhook_url, notice))
                )
            if self._executor is not None:
                jobs.append(tg.create_task(self._mail(self._executor, notice)))
        result = NotifyResult.of(notice, tuple(d for job in jobs for d in job.result()))
        self._log(result)
        return result

    def _within_hourly_cap(self) -> bool:
        """At most `max_per_hour` notices in any hour: a flood of lockouts (or an
        attacker who found a way to trigger notices) cannot make the relay mail
        without bound. The first suppressed one is logged, then a count."""
        now = self._clock()
        while self._sent and self._sent[0] <= now - 3600.0:
            self._sent.popleft()
        if len(self._sent) >= self.settings.max_per_hour:
            self._capped += 1
            if self._capped == 1:
                log.warning(
                    "notifications: %d sent in the last hour (notify.max_per_hour); "
                    "suppressing until the hour has passed",
                    len(self._sent),
                )
            return False
        if self._capped:
            log.warning("notifications resume; %d suppressed by max_per_hour", self._capped)
            self._capped = 0
        self._sent.append(now)
        return True

    async def _webhook(self, http: httpx.AsyncClient, url: str, notice: Notice) -> list[Delivery]:
        body, headers = webhook_request(notice, self.settings)
        try:
            async with (
                asyncio.timeout(self.settings.timeout),
                # Streamed and closed unread: the receiver decides nothing but
                # the status, and must not make us buffer a large answer.
                http.stream("POST", url, content=body, headers=headers) as response,
            ):
                status = response.status_code
        except Exception as exc:
            detail = _describe(exc).replace(url, _origin(url))
            return [Delivery(Channel.WEBHOOK, False, f"{_origin(url)}: {detail}")]
        ok = 200 <= status < 300
        detail = f"HTTP {status}"
        if 300 <= status < 400:
            detail += " (redirects are not followed)"
        return [Delivery(Channel.WEBHOOK, ok, detail if ok else f"{_origin(url)}: {detail}")]

    async def _mail(self, executor: ThreadPoolExecutor, notice: Notice) -> list[Delivery]:
        out: list[Delivery] = []
        mails: list[tuple[Channel, tuple[str, ...], EmailMessage]] = []
        for mail in build_messages(notice, self.settings):
            if mail.message is None:
                out.append(Delivery(mail.channel, False, mail.problem or "not sendable"))
            else:
                mails.append((mail.channel, mail.recipients, mail.message))
        if not mails:
            return out
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.timeout):
                out += await loop.run_in_executor(executor, self._smtp_send, mails)
        except Exception as exc:
            # The thread may still be talking: its socket timeout ends it.
            out += [Delivery(channel, False, _describe(exc)) for channel, _, _ in mails]
        return out

    def _smtp_send(
        self, mails: list[tuple[Channel, tuple[str, ...], EmailMessage]]
    ) -> list[Delivery]:
        """Blocking: one SMTP session for all messages. Runs on `_executor`."""
        s = self.settings
        host, port, sender = s.smtp_host or "", s.effective_smtp_port, s.mail_from or ""
        client: smtplib.SMTP
        try:
            if s.smtp_tls == "implicit":
                client = smtplib.SMTP_SSL(host, port, timeout=s.timeout, context=self._smtp_context)
            else:
                client = smtplib.SMTP(host, port, timeout=s.timeout)
            with client:
                if s.smtp_tls == "starttls":
                    client.ehlo()
                    # Raises SMTPNotSupportedError when STARTTLS is not offered:
                    # no silent downgrade to plaintext.
                    client.starttls(context=self._smtp_context)
                    client.ehlo()
                if s.smtp_username is not None and s.smtp_password is not None:
                    client.login(s.smtp_username, s.smtp_password.reveal().decode("utf-8"))
                out: list[Delivery] = []
                for channel, recipients, message in mails:
                    try:
                        refused = client.send_message(
                            message, from_addr=sender, to_addrs=list(recipients)
                        )
                    except smtplib.SMTPServerDisconnected:
                        raise
                    except smtplib.SMTPException as exc:
                        # This message was refused; the session goes on (smtplib
                        # has sent RSET) and the next message is tried.
                        out.append(Delivery(channel, False, _describe(exc)))
                        continue
                    detail = "accepted" if not refused else f"refused for {sorted(refused)}"
                    out.append(Delivery(channel, True, detail))
                return out
        except Exception as exc:
            detail = f"{host}:{port}: {_describe(exc)}"
            return [Delivery(channel, False, detail) for channel, _, _ in mails]

    def _log(self, result: NotifyResult) -> None:
        notice = result.notice
        user = clean(notice.user, 64)
        summary = ", ".join(f"{d.channel.value} {d.detail}" for d in result.deliveries)
        if result.status is NotifyStatus.SENT:
            log.info("%s notice for %s sent: %s", notice.kind.value, user, summary)
        else:
            log.warning(
                "%s notice for %s %s: %s", notice.kind.value, user, result.status.value, summary
            )


def _tls_context(ca_file: str | None, key: str) -> ssl.SSLContext:
    """A verifying client context: the CA file as the only anchor when given,
    the system store otherwise; TLS 1.2 at least."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([(key, f"cannot load CA file {ca_file}: {exc}")]) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
