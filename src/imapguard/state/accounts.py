"""The account store: what imapguard keeps per account, as an interface.

Per account name (the canonical form `imapguard.names` gives it): the user and
its last login, app passwords (by keyed digest), the sealed TOTP secret with its
last used time step and failure lock, devices (trusted or pending) and the
rate limit of notices to the owner. `imapguard.state.sqlite.SqliteStore`
implements it on one SQLite file; the cluster's PostgreSQL store will implement
the same protocols, and tests/conformance/ holds both to the same behaviour.

The interface is split by concern (`UserStore`, `AppPasswordStore`, `TotpStore`,
`DeviceStore`, `NoticeStore`); `AccountStore` is all of them plus `batch` and
`close`. A caller that needs one concern names that protocol; the portal's
sessions, passkeys and sign-in history are further protocols (`state.portal`),
joined to `AccountStore` the same way, so no existing method changes for them.

Rules every implementation keeps:

* Calls are synchronous and short. Callers on the event loop run writes in an
  executor (one worker thread), so a networked store fits without changing them.
* Every failure of the backing store is raised as `StateUnavailable` and nothing
  else: the authentication chokepoint turns it into `NO [UNAVAILABLE]` (it fails
  closed). A closed store raises it too.
* Time is passed in (`now`: wall-clock seconds since the epoch); no method reads a
  clock, and nothing expires on its own except what a method says it forgets.
* A check-and-set (`use_totp_step`, `record_totp_failure`, `claim_notice`,
  `add_app_password` with `max_count`) is atomic
  across every process and node sharing the store: of concurrent callers with the
  same arguments, exactly one wins.
* Absence is not an error: a read returns None or [], a revocation or an update
  of a missing record returns False (or does nothing, for bookkeeping).
* A write that adds a record for an account creates the account's user if it is
  missing, so no record names an unknown user.
* The store never sees a secret in the clear: app passwords and trusted devices
  are stored as keyed digests, TOTP secrets sealed (`imapguard.auth.totp`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

from imapguard.errors import ImapguardError

__all__ = [
    "MAX_PENDING_DEVICES",
    "AccountStore",
    "AppPasswordLimit",
    "AppPasswordRecord",
    "AppPasswordStore",
    "DeviceKey",
    "DeviceRecord",
    "DeviceStatus",
    "DeviceStore",
    "MetaStore",
    "NoticeStore",
    "TotpRecord",
    "TotpStore",
    "UserRecord",
    "UserStore",
]

# Pending devices kept per account (the most recently seen); an owner approves a
# handful at most, and whoever has the password must not grow the store.
MAX_PENDING_DEVICES = 20

DeviceStatus = Literal["trusted", "pending"]


class AppPasswordLimit(ImapguardError):
    """`add_app_password(max_count=n)`: the account holds `n` already, so
    nothing was added (checked in the same transaction as the insert)."""

    def __init__(self, user: str, max_count: int) -> None:
        super().__init__(f"{user} has {max_count} app passwords already")
        self.user = user
        self.max_count = max_count


@dataclass(frozen=True)
class UserRecord:
    name: str
    created_at: float
    last_login_at: float | None
    last_login_address: str | None
    last_login_method: str | None
    app_passwords: int  # how many the account has


@dataclass(frozen=True)
class TotpRecord:
    user: str
    sealed: bytes
    created_at: float
    last_step: int | None  # the last time step a code was accepted for
    failures: int  # wrong codes since `first_failure_at`
    first_failure_at: float | None
    locked_until: float | None  # codes are refused before this time


@dataclass(frozen=True)
class DeviceKey:
    """What identifies a device: the account, the client's network (/24 or /64)
    and the IMAP ID name and version its mail client sent ("" when none)."""

    user: str
    network: str
    client_name: str
    client_version: str


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    user: str
    network: str
    client_name: str
    client_version: str
    status: DeviceStatus
    created_at: float
    trusted_until: float | None
    last_seen_at: float | None
    last_address: str | None
    # The client typed password+code last time.
    split_code: bool
    # What the trust is bound to (imapguard.auth.chokepoint): the keyed digest of
    # the code the device proved, or the exact address an owner approved.
    secret: bytes | None = None
    bound_address: str | None = None

    def trusted_at(self, now: float) -> bool:
        """Trusted, not expired, and bound to something only the device has."""
        return (
            self.status == "trusted"
            and self.trusted_until is not None
            and self.trusted_until > now
            and (self.secret is not None or self.bound_address is not None)
        )


@dataclass(frozen=True)
class AppPasswordRecord:
    id: str
    user: str
    label: str
    created_at: float
    last_used_at: float | None
    last_used_address: str | None
    last_used_client: str | None
    # Its scope (None: any): the client network it works from (an IPv4 or IPv6
    # network in CIDR form), and when it stops working.
    network: str | None = None
    expires_at: float | None = None


class UserStore(Protocol):
    def ensure_user(self, name: str, now: float) -> None:
        """Create the user (created at `now`) if absent; an existing one is unchanged."""
        ...

    def record_login(self, name: str, now: float, address: str, method: str) -> None:
        """Remember the account's last login: time, client address and method (the
        factor that proved it). Creates the user if absent."""
        ...

    def list_users(self) -> list[UserRecord]:
        """Every user, by name in code point order."""
        ...

    def get_user(self, name: str) -> UserRecord | None:
        """The user, or None if absent."""
        ...


class AppPasswordStore(Protocol):
    def add_app_password(
        self,
        user: str,
        label: str,
        digest: bytes,
        now: float,
        *,
        network: str | None = None,
        expires_at: float | None = None,
        max_count: int | None = None,
    ) -> AppPasswordRecord:
        """Store a new app password by its keyed digest under a fresh random id
        (short text). A digest is unique in the whole store: adding one that is
        already stored raises `StateUnavailable` and stores nothing.
        `max_count`: if the account holds that many already, raise
        `AppPasswordLimit` and store nothing; atomic like a check-and-set (of
        concurrent adds, no more than `max_count` are ever held)."""
        ...

    def list_app_passwords(self, user: str) -> list[AppPasswordRecord]:
        """The account's app passwords, oldest first ([] if none)."""
        ...

    def find_app_password(self, user: str, digest: bytes) -> AppPasswordRecord | None:
        """The account's app password with this digest; None if there is none (a
        digest of another account is None: it never logs into this one)."""
        ...

    def record_app_password_use(
        self, record_id: str, now: float, address: str, client: str | None
    ) -> None:
        """Remember its last use (time, address, client ID). An unknown id (revoked
        since) is ignored: this is bookkeeping written after the login."""
        ...

    def revoke_app_password(self, user: str, record_id: str) -> bool:
        """Delete it; True if the account had it. From then on `find_app_password`
        does not return it: the password stops working at once."""
        ...


class TotpStore(Protocol):
    def set_totp(self, user: str, sealed: bytes, now: float) -> None:
        """Enrol (or replace) the account's sealed secret. A replaced secret starts
        afresh: no step used, no failures, no lock. Creates the user if absent."""
        ...

    def get_totp(self, user: str) -> TotpRecord | None:
        """The account's secret and its state; None if it has none."""
        ...

    def remove_totp(self, user: str) -> bool:
        """Delete the secret (its codes stop working); True if there was one."""
        ...

    def use_totp_step(self, user: str, step: int) -> bool:
        """Atomically mark a code's time step used: True only if `step` is later
        than the last step used (the compare-and-set that makes each code valid
        once, across every node sharing the store). Success also forgets the
        failure count (not a lock). False if the account has no secret."""
        ...

    def record_totp_failure(
        self, user: str, now: float, window: float, max_failures: int, lockout: float
    ) -> bool:
        """Atomically count a wrong code after a correct password. Failures more
        than `window` seconds after the first of the series start a new series;
        the `max_failures`-th of a series locks codes out until `now + lockout`,
        starts a new series and returns True. False otherwise, and False with
        nothing recorded if the account has no secret. A lock is a time: it is
        over when `now` passes it, without a write."""
        ...

    def clear_totp_lock(self, user: str) -> bool:
        """Lift the lock and forget the failures; True if the account has a secret."""
        ...


class DeviceStore(Protocol):
    def find_device(self, key: DeviceKey) -> DeviceRecord | None:
        """The device with this key, whatever its status; None if none."""
        ...

    def get_device(self, user: str, device_id: str) -> DeviceRecord | None:
        """The account's device with this id; None if none (or another account's)."""
        ...

    def list_devices(self, user: str) -> list[DeviceRecord]:
        """The account's devices, trusted and pending, oldest first."""
        ...

    def trust_device(
        self, key: DeviceKey, now: float, until: float, address: str, secret: bytes
    ) -> DeviceRecord:
        """The device proved a code: trusted until `until`, bound to `secret` (the
        keyed digest of that code) and to no address, seen now at `address`, typing
        password+code. Created if new; an existing device (pending, approved or
        trusted) keeps its id and is updated. Creates the user if absent. Returns
        the device as stored."""
        ...

    def add_pending_device(self, key: DeviceKey, now: float, address: str) -> DeviceRecord:
        """A correct password without a factor from this device: created pending
        (not trusted) if new; an existing device keeps its status and trust and is
        only seen now at `address`. At most `MAX_PENDING_DEVICES` pending devices
        per account are kept, the most recently seen; the others are deleted
        (trusted devices never are). Creates the user if absent. Returns the
        device as stored."""
        ...

    def approve_device(self, user: str, device_id: str, until: float) -> bool:
        """The owner says "this was me": trusted until `until`, bound to the exact
        address its last login came from and no longer to a code (it proved none).
        False if the account has no such device or no address is known for it."""
        ...

    def revoke_device(self, user: str, device_id: str) -> bool:
        """Delete the device (its trust ends at once); True if the account had it."""
        ...

    def record_device_use(
        self, device_id: str, now: float, address: str, split_code: bool | None
    ) -> None:
        """Remember its last use (time, address) and, unless None, whether the
        client typed password+code. An unknown id (revoked since) is ignored."""
        ...


class NoticeStore(Protocol):
    def claim_notice(self, user: str, kind: str, now: float, interval: float) -> bool:
        """Atomically claim the right to send the owner a notice of this kind: True
        (and remembered) if none was claimed for this account and kind in the
        last `interval` seconds (a claim exactly `interval` old no longer counts);
        at most one per account and kind per interval across every node. Claims
        older than the interval are forgotten."""
        ...


class MetaStore(Protocol):
    """Named values the store keeps about itself (`state.keycheck` keeps the
    check value of the server key here)."""

    def get_meta(self, name: str) -> bytes | None:
        """The value stored under `name`; None if none."""
        ...

    def claim_meta(self, name: str, value: bytes) -> bytes:
        """Store `value` under `name` unless a value is stored already, and return
        the stored value: atomic, the first writer wins and every caller gets
        its value (a value is never replaced)."""
        ...

    def any_totp(self) -> TotpRecord | None:
        """The TOTP record of one account that has one (any); None if none has."""
        ...


class AccountStore(
    UserStore, AppPasswordStore, TotpStore, DeviceStore, NoticeStore, MetaStore, Protocol
):
    """Everything the auth service, the CLI and the demo keep per account."""

    def batch(self) -> AbstractContextManager[None]:
        """Run several write calls as one unit of work: all are stored or none,
        and a read inside sees the writes made before it (`state.writebehind`
        batches bookkeeping this way). Batches may nest; the outermost decides."""
        ...

    def close(self) -> None:
        """Release the store; every later call raises `StateUnavailable`."""
        ...
