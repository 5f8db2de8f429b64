"""Out-of-band notifications: tell the account owner and the admins (`[notify]`).

Three kinds of notice: a compromise signal (correct password, missing second
factor), a new device awaiting approval, and a lockout; from the portal also a
disowned sign-in, a right password from an unfamiliar address, a used
invitation and each change of how the account signs in (`ACCOUNT_CHANGES`: an
authenticator app set up, replaced or removed, a passkey added or removed, new
recovery codes, a new app password). Each goes to a webhook (JSON, optionally
HMAC-signed) and/or by mail (one message to the owner, one to the admins: not
for `OWNER_ONLY` kinds), at most once per account and kind per `min_interval`.

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
     "kind": "compromise_signal" | "new_device" | "lockout" | "disowned"
           | "portal_password" | "invitation_used" | "totp_added"
           | "totp_replaced" | "totp_removed" | "passkey_added"
           | "passkey_removed" | "recovery_codes" | "app_password_created",
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

from imapguard.notify.limits import MemoryRateLimit, ShouldSend
from imapguard.notify.messages import Mail, build_messages, owner_address, sign, webhook_request
from imapguard.notify.notice import (
    ACCOUNT_CHANGES,
    OWNER_ONLY,
    Channel,
    Delivery,
    Notice,
    NoticeKind,
    NotifyResult,
    NotifyStatus,
)
from imapguard.notify.notifier import Notifier

__all__ = [
    "ACCOUNT_CHANGES",
    "OWNER_ONLY",
    "Channel",
    "Delivery",
    "Mail",
    "MemoryRateLimit",
    "Notice",
    "NoticeKind",
    "Notifier",
    "NotifyResult",
    "NotifyStatus",
    "ShouldSend",
    "build_messages",
    "owner_address",
    "sign",
    "webhook_request",
]
