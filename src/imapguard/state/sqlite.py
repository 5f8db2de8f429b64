"""The embedded state store (`sqlite:///PATH`).

One file, WAL mode, schema migrations by `PRAGMA user_version`: each entry of
MIGRATIONS moves the schema one version up, inside one transaction, and a
database written by a newer imapguard is refused rather than misread.

Calls are synchronous and short (about 10 µs each). The gateway writes on a
single worker thread, so the event loop never waits on a locked file, and reads
on the event loop itself through a second, read-only connection (`open_reader`):
in WAL mode a reader never waits for a writer, and a thread hop per login cost
more CPU than the query (a third of the gateway's CPU per login, measured with
bench/gateway.py). Bookkeeping writes that no decision depends on are batched
into one transaction (`batch()`, used by `state.writebehind`). Every sqlite3
error leaves as `StateUnavailable`, which the authentication chokepoint turns
into `NO [UNAVAILABLE]` (fail closed).

The store is also the defense's `CounterStore` (`imapguard.defense.counters`,
the rules are there): bucketed counters and distinct sets keyed by (key,
bucket), blocks and shared values, each row with its expiry. A precheck is one
`defense_lookup` on the reader: two primary-key `IN` queries.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from imapguard.defense.counters import Block, Target, TargetKind
from imapguard.errors import StateUnavailable

__all__ = [
    "AppPasswordRecord",
    "DeviceKey",
    "DeviceRecord",
    "SqliteStore",
    "TotpRecord",
    "UserRecord",
    "open_reader",
    "open_store",
]

T = TypeVar("T")

# Pending devices kept per account (the newest); an owner approves a handful at most.
MAX_PENDING_DEVICES = 20

MIGRATIONS: tuple[str, ...] = (
    # 1: users and app passwords
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        last_login_at REAL,
        last_login_address TEXT,
        last_login_method TEXT
    );
    CREATE TABLE app_passwords (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users(name),
        label TEXT NOT NULL,
        digest BLOB NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        last_used_at REAL,
        last_used_address TEXT,
        last_used_client TEXT
    );
    CREATE INDEX app_passwords_user ON app_passwords(user);
    """,
    # 2: one-time codes, devices, notification rate limits
    """
    CREATE TABLE totp (
        user TEXT PRIMARY KEY REFERENCES users(name),
        sealed BLOB NOT NULL,
        created_at REAL NOT NULL,
        last_step INTEGER,
        failures INTEGER NOT NULL DEFAULT 0,
        first_failure_at REAL,
        locked_until REAL
    );
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users(name),
        network TEXT NOT NULL,
        client_name TEXT NOT NULL,
        client_version TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('trusted', 'pending')),
        created_at REAL NOT NULL,
        trusted_until REAL,
        last_seen_at REAL,
        last_address TEXT,
        split_code INTEGER NOT NULL DEFAULT 0,
        UNIQUE (user, network, client_name, client_version)
    );
    CREATE INDEX devices_user ON devices(user);
    CREATE TABLE notices (
        user TEXT NOT NULL,
        kind TEXT NOT NULL,
        sent_at REAL NOT NULL,
        PRIMARY KEY (user, kind)
    );
    """,
    # 3: defense counters, distinct sets, blocks and shared values (imapguard.defense).
    # Every row carries its absolute expiry; `defense_purge` deletes by the index.
    """
    CREATE TABLE defense_counters (
        key TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        count INTEGER NOT NULL,
        expires REAL NOT NULL,
        PRIMARY KEY (key, bucket)
    ) WITHOUT ROWID;
    CREATE INDEX defense_counters_expires ON defense_counters(expires);
    CREATE TABLE defense_members (
        key TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        member TEXT NOT NULL,
        expires REAL NOT NULL,
        PRIMARY KEY (key, bucket, member)
    ) WITHOUT ROWID;
    CREATE INDEX defense_members_expires ON defense_members(expires);
    CREATE TABLE defense_blocks (
        key TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        reason TEXT NOT NULL,
        level INTEGER NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX defense_blocks_expires ON defense_blocks(expires);
    CREATE TABLE defense_values (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        expires REAL
    ) WITHOUT ROWID;
    CREATE INDEX defense_values_expires ON defense_values(expires);
    """,
    # 4: a trusted device is bound to what only it has: the keyed digest of the code
    # it proved (sent again with its password), or, approved by its owner without a
    # code, its exact address. Devices trusted before this version had neither and
    # prove a code once more. Notices get an index for their purge.
    """
    ALTER TABLE devices ADD COLUMN secret BLOB;
    ALTER TABLE devices ADD COLUMN bound_address TEXT;
    CREATE INDEX notices_sent_at ON notices(sent_at);
    """,
)


@dataclass(frozen=True)
class UserRecord:
    name: str
    created_at: float
    last_login_at: float | None
    last_login_address: str | None
    last_login_method: str | None
    app_passwords: int


@dataclass(frozen=True)
class TotpRecord:
    user: str
    sealed: bytes
    created_at: float
    last_step: int | None
    failures: int
    first_failure_at: float | None
    locked_until: float | None


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
    status: str  # "trusted" | "pending"
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


class SqliteStore:
    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._lock = threading.RLock()
        self._depth = 0
        try:
            if read_only:
                # A reader waits at most this long for a lock (only WAL recovery or
                # a schema change takes one); it runs on the event loop.
                self._db = sqlite3.connect(
                    Path(path).resolve().as_uri() + "?mode=ro",
                    uri=True,
                    timeout=0.25,
                    isolation_level=None,
                    check_same_thread=False,
                )
                self._db.execute("PRAGMA query_only=ON")
                self._check_version()
            else:
                self._db = sqlite3.connect(
                    path, timeout=2.0, isolation_level=None, check_same_thread=False
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._migrate()
        except sqlite3.Error as exc:
            raise StateUnavailable("open", f"{path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing -------------------------------------------------------------

    def _check_version(self) -> int:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this imapguard ({len(MIGRATIONS)})"
            )
        return int(version)

    def _migrate(self) -> None:
        version = self._check_version()
        for number in range(version, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def _tx(self, operation: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; inside `batch()` it joins the batch's."""
        with self._lock:
            if self._depth:
                try:
                    yield self._db
                except sqlite3.Error as exc:
                    raise StateUnavailable(operation, str(exc)) from None
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._depth += 1
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                finally:
                    self._depth -= 1
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StateUnavailable(operation, str(exc)) from None

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run several write calls in one transaction (all or nothing)."""
        with self._tx("batch"):
            yield

    def _read(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                raise StateUnavailable(operation, str(exc)) from None

    # -- users ----------------------------------------------------------------

    def ensure_user(self, name: str, now: float) -> None:
        with self._tx("ensure user") as db:
            db.execute("INSERT OR IGNORE INTO users(name, created_at) VALUES (?, ?)", (name, now))

    def record_login(self, name: str, now: float, address: str, method: str) -> None:
        with self._tx("record login") as db:
            db.execute("INSERT OR IGNORE INTO users(name, created_at) VALUES (?, ?)", (name, now))
            db.execute(
                "UPDATE users SET last_login_at = ?, last_login_address = ?, last_login_method = ?"
                " WHERE name = ?",
                (now, address, method, name),
            )

    _USER_SELECT = (
        "SELECT u.name, u.created_at, u.last_login_at, u.last_login_address,"
        " u.last_login_method, (SELECT COUNT(*) FROM app_passwords a WHERE a.user = u.name)"
        " FROM users u"
    )

    def list_users(self) -> list[UserRecord]:
        rows = self._read(
            "list users", lambda db: db.execute(self._USER_SELECT + " ORDER BY u.name").fetchall()
        )
        return [UserRecord(*row) for row in rows]

    def get_user(self, name: str) -> UserRecord | None:
        row = self._read(
            "get user",
            lambda db: db.execute(self._USER_SELECT + " WHERE u.name = ?", (name,)).fetchone(),
        )
        return UserRecord(*row) if row else None

    # -- app passwords --------------------------------------------------------

    _AP_COLUMNS = "id, user, label, created_at, last_used_at, last_used_address, last_used_client"

    def add_app_password(
        self, user: str, label: str, digest: bytes, now: float
    ) -> AppPasswordRecord:
        record_id = secrets.token_hex(4)
        with self._tx("add app password") as db:
            db.execute("INSERT OR IGNORE INTO users(name, created_at) VALUES (?, ?)", (user, now))
            db.execute(
                "INSERT INTO app_passwords(id, user, label, digest, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (record_id, user, label, digest, now),
            )
        return AppPasswordRecord(record_id, user, label, now, None, None, None)

    def list_app_passwords(self, user: str) -> list[AppPasswordRecord]:
        rows = self._read(
            "list app passwords",
            lambda db: db.execute(
                f"SELECT {self._AP_COLUMNS} FROM app_passwords WHERE user = ?"  # noqa: S608
                " ORDER BY created_at",
                (user,),
            ).fetchall(),
        )
        return [AppPasswordRecord(*row) for row in rows]

    def find_app_password(self, user: str, digest: bytes) -> AppPasswordRecord | None:
        row = self._read(
            "find app password",
            lambda db: db.execute(
                f"SELECT {self._AP_COLUMNS} FROM app_passwords"  # noqa: S608
                " WHERE user = ? AND digest = ?",
                (user, digest),
            ).fetchone(),
        )
        return AppPasswordRecord(*row) if row else None

    def record_app_password_use(
        self, record_id: str, now: float, address: str, client: str | None
    ) -> None:
        with self._tx("record app password use") as db:
            db.execute(
                "UPDATE app_passwords SET last_used_at = ?, last_used_address = ?,"
                " last_used_client = ? WHERE id = ?",
                (now, address, client, record_id),
            )

    def revoke_app_password(self, user: str, record_id: str) -> bool:
        with self._tx("revoke app password") as db:
            cursor = db.execute(
                "DELETE FROM app_passwords WHERE user = ? AND id = ?", (user, record_id)
            )
            return cursor.rowcount > 0

    # -- one-time codes (TOTP) ------------------------------------------------

    _TOTP_COLUMNS = "user, sealed, created_at, last_step, failures, first_failure_at, locked_until"

    def set_totp(self, user: str, sealed: bytes, now: float) -> None:
        """Enroll (or replace) the account's TOTP secret; counters start afresh."""
        with self._tx("set totp") as db:
            db.execute("INSERT OR IGNORE INTO users(name, created_at) VALUES (?, ?)", (user, now))
            db.execute(
                "INSERT OR REPLACE INTO totp(user, sealed, created_at) VALUES (?, ?, ?)",
                (user, sealed, now),
            )

    def get_totp(self, user: str) -> TotpRecord | None:
        row = self._read(
            "get totp",
            lambda db: db.execute(
                f"SELECT {self._TOTP_COLUMNS} FROM totp WHERE user = ?",  # noqa: S608
                (user,),
            ).fetchone(),
        )
        return TotpRecord(*row) if row else None

    def remove_totp(self, user: str) -> bool:
        with self._tx("remove totp") as db:
            return db.execute("DELETE FROM totp WHERE user = ?", (user,)).rowcount > 0

    def use_totp_step(self, user: str, step: int) -> bool:
        """Mark a code's time step used; False if it (or a later one) already was:
        the compare-and-set that makes each code valid once, across gateway nodes
        sharing this store. Success also clears the failure count."""
        with self._tx("use totp step") as db:
            cursor = db.execute(
                "UPDATE totp SET last_step = ?, failures = 0, first_failure_at = NULL"
                " WHERE user = ? AND (last_step IS NULL OR last_step < ?)",
                (step, user, step),
            )
            return cursor.rowcount > 0

    def record_totp_failure(
        self, user: str, now: float, window: float, max_failures: int, lockout: float
    ) -> bool:
        """Count a wrong code after a correct password; True when this failure
        locks codes out for the account (`lockout` seconds from now). Failures
        older than `window` are forgotten."""
        with self._tx("record totp failure") as db:
            row = db.execute(
                "SELECT failures, first_failure_at FROM totp WHERE user = ?", (user,)
            ).fetchone()
            if row is None:
                return False
            failures, first = row
            if first is None or now - first > window:
                failures, first = 0, now
            failures += 1
            locked = bool(failures >= max_failures)
            db.execute(
                "UPDATE totp SET failures = ?, first_failure_at = ?,"
                " locked_until = CASE WHEN ? THEN ? ELSE locked_until END WHERE user = ?",
                (0 if locked else failures, None if locked else first, locked, now + lockout, user),
            )
            return locked

    def clear_totp_lock(self, user: str) -> bool:
        with self._tx("clear totp lock") as db:
            cursor = db.execute(
                "UPDATE totp SET failures = 0, first_failure_at = NULL, locked_until = NULL"
                " WHERE user = ?",
                (user,),
            )
            return cursor.rowcount > 0

    # -- devices --------------------------------------------------------------

    _DEV_COLUMNS = (
        "id, user, network, client_name, client_version, status, created_at, trusted_until,"
        " last_seen_at, last_address, split_code, secret, bound_address"
    )

    @staticmethod
    def _device_row(row: tuple[Any, ...] | None) -> DeviceRecord | None:
        if row is None:
            return None
        (id_, user, network, name, version, status, created, until, seen, address, split) = row[
            :11
        ]
        secret, bound = row[11:]
        return DeviceRecord(
            id_,
            user,
            network,
            name,
            version,
            status,
            created,
            until,
            seen,
            address,
            bool(split),
            None if secret is None else bytes(secret),
            bound,
        )

    def find_device(self, key: DeviceKey) -> DeviceRecord | None:
        row = self._read(
            "find device",
            lambda db: db.execute(
                f"SELECT {self._DEV_COLUMNS} FROM devices"  # noqa: S608
                " WHERE user = ? AND network = ? AND client_name = ? AND client_version = ?",
                (key.user, key.network, key.client_name, key.client_version),
            ).fetchone(),
        )
        return self._device_row(row)

    def get_device(self, user: str, device_id: str) -> DeviceRecord | None:
        row = self._read(
            "get device",
            lambda db: db.execute(
                f"SELECT {self._DEV_COLUMNS} FROM devices WHERE user = ? AND id = ?",  # noqa: S608
                (user, device_id),
            ).fetchone(),
        )
        return self._device_row(row)

    def list_devices(self, user: str) -> list[DeviceRecord]:
        rows = self._read(
            "list devices",
            lambda db: db.execute(
                f"SELECT {self._DEV_COLUMNS} FROM devices WHERE user = ?"  # noqa: S608
                " ORDER BY created_at",
                (user,),
            ).fetchall(),
        )
        return [d for d in map(self._device_row, rows) if d is not None]

    def trust_device(
        self, key: DeviceKey, now: float, until: float, address: str, secret: bytes
    ) -> DeviceRecord:
        """The device proved a code: trusted until `until` (created if new) for
        its password followed by that code, whose keyed digest is `secret`."""
        with self._tx("trust device") as db:
            db.execute(
                "INSERT OR IGNORE INTO users(name, created_at) VALUES (?, ?)", (key.user, now)
            )
            db.execute(
                "INSERT INTO devices(id, user, network, client_name, client_version, status,"
                " created_at, trusted_until, last_seen_at, last_address, split_code, secret,"
                " bound_address)"
                " VALUES (?, ?, ?, ?, ?, 'trusted', ?, ?, ?, ?, 1, ?, NULL)"
                " ON CONFLICT (user, network, client_name, client_version) DO UPDATE SET"
                " status = 'trusted', trusted_until = excluded.trusted_until,"
                " last_seen_at = excluded.last_seen_at, last_address = excluded.last_address,"
                " split_code = 1, secret = excluded.secret, bound_address = NULL",
                (
                    secrets.token_hex(4),
                    key.user,
                    key.network,
                    key.client_name,
                    key.client_version,
                    now,
                    until,
                    now,
                    address,
                    secret,
                ),
            )
        device = self.find_device(key)
        assert device is not None  # noqa: S101 - written in the transaction above
        return device

    def add_pending_device(self, key: DeviceKey, now: float, address: str) -> DeviceRecord:
        """A correct password without a factor from this unknown device: pending
        until the owner approves it. An existing record is left as it is."""
        with self._tx("add pending device") as db:
            db.execute(
                "INSERT OR IGNORE INTO users(name, created_at) VALUES (?, ?)", (key.user, now)
            )
            db.execute(
                "INSERT INTO devices(id, user, network, client_name, client_version, status,"
                " created_at, last_seen_at, last_address)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)"
                " ON CONFLICT (user, network, client_name, client_version) DO UPDATE SET"
                " last_seen_at = excluded.last_seen_at, last_address = excluded.last_address",
                (
                    secrets.token_hex(4),
                    key.user,
                    key.network,
                    key.client_name,
                    key.client_version,
                    now,
                    now,
                    address,
                ),
            )
            # Bounded: whoever has the password could otherwise add a pending device
            # per network and client name; the oldest pending ones make room.
            db.execute(
                "DELETE FROM devices WHERE id IN (SELECT id FROM devices"
                " WHERE user = ? AND status = 'pending'"
                " ORDER BY last_seen_at DESC LIMIT -1 OFFSET ?)",
                (key.user, MAX_PENDING_DEVICES),
            )
        device = self.find_device(key)
        assert device is not None  # noqa: S101 - written in the transaction above
        return device

    def approve_device(self, user: str, device_id: str, until: float) -> bool:
        """The owner says "this was me": the device is trusted until `until`, for the
        exact address its login came from (it proved no code)."""
        with self._tx("approve device") as db:
            cursor = db.execute(
                "UPDATE devices SET status = 'trusted', trusted_until = ?,"
                " bound_address = last_address, secret = NULL"
                " WHERE user = ? AND id = ? AND last_address IS NOT NULL",
                (until, user, device_id),
            )
            return cursor.rowcount > 0

    def revoke_device(self, user: str, device_id: str) -> bool:
        with self._tx("revoke device") as db:
            cursor = db.execute("DELETE FROM devices WHERE user = ? AND id = ?", (user, device_id))
            return cursor.rowcount > 0

    def record_device_use(
        self, device_id: str, now: float, address: str, split_code: bool | None
    ) -> None:
        with self._tx("record device use") as db:
            db.execute(
                "UPDATE devices SET last_seen_at = ?, last_address = ?,"
                " split_code = COALESCE(?, split_code) WHERE id = ?",
                (now, address, None if split_code is None else int(split_code), device_id),
            )

    # -- notification rate limit ----------------------------------------------

    def claim_notice(self, user: str, kind: str, now: float, interval: float) -> bool:
        """True (and remembered) if no notice of this kind went to this account in
        the last `interval` seconds: at most one per account and kind per interval,
        on every gateway node sharing the store."""
        with self._tx("claim notice") as db:
            # Rows older than the interval limit nothing any more (bounded table).
            db.execute("DELETE FROM notices WHERE sent_at <= ?", (now - interval,))
            cursor = db.execute(
                "INSERT INTO notices(user, kind, sent_at) VALUES (?, ?, ?)"
                " ON CONFLICT (user, kind) DO UPDATE SET sent_at = excluded.sent_at"
                " WHERE notices.sent_at <= ?",
                (user, kind, now, now - interval),
            )
            return cursor.rowcount > 0

    # -- defense counters (imapguard.defense.counters.CounterStore) -------------

    def bucket_incr(self, key: str, bucket: int, amount: int, expires: float, now: float) -> int:
        with self._tx("count") as db:
            (count,) = db.execute(
                "INSERT INTO defense_counters(key, bucket, count, expires) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key, bucket) DO UPDATE SET"
                " count = CASE WHEN defense_counters.expires > ?"
                " THEN defense_counters.count + excluded.count ELSE excluded.count END,"
                " expires = excluded.expires RETURNING count",
                (key, bucket, amount, expires, now),
            ).fetchone()
            return int(count)

    def bucket_counts(self, key: str, buckets: range, now: float) -> list[int]:
        rows = self._read(
            "read counters",
            lambda db: db.execute(
                "SELECT bucket, count FROM defense_counters"
                " WHERE key = ? AND bucket BETWEEN ? AND ? AND expires > ?",
                (key, *_bounds(buckets), now),
            ).fetchall(),
        )
        found = dict(rows)
        return [int(found.get(b, 0)) for b in buckets]

    def member_add(self, key: str, bucket: int, member: str, expires: float) -> None:
        with self._tx("add member") as db:
            db.execute(
                "INSERT INTO defense_members(key, bucket, member, expires) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key, bucket, member) DO UPDATE SET"
                " expires = max(defense_members.expires, excluded.expires)",
                (key, bucket, member, expires),
            )

    def members_add(self, entries: Sequence[tuple[str, str]], bucket: int, expires: float) -> None:
        with self._tx("add members") as db:
            db.executemany(
                "INSERT INTO defense_members(key, bucket, member, expires) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key, bucket, member) DO UPDATE SET"
                " expires = max(defense_members.expires, excluded.expires)",
                [(key, bucket, member, expires) for key, member in entries],
            )

    def member_seen(self, key: str, buckets: range, member: str, now: float) -> bool:
        row = self._read(
            "read member",
            lambda db: db.execute(
                "SELECT 1 FROM defense_members WHERE key = ? AND bucket BETWEEN ? AND ?"
                " AND member = ? AND expires > ? LIMIT 1",
                (key, *_bounds(buckets), member, now),
            ).fetchone(),
        )
        return row is not None

    def distinct_count(
        self, keys: Sequence[str], buckets: range, now: float, limit: int | None = None
    ) -> int:
        marks = ", ".join("?" * len(keys))
        query = (
            f"SELECT DISTINCT member FROM defense_members WHERE key IN ({marks})"  # noqa: S608
            " AND bucket BETWEEN ? AND ? AND expires > ?"
        )
        args: tuple[Any, ...] = (*keys, *_bounds(buckets), now)
        if limit is not None:
            query += " LIMIT ?"
            args += (limit,)
        (count,) = self._read(
            "count members",
            lambda db: db.execute(f"SELECT COUNT(*) FROM ({query})", args).fetchone(),  # noqa: S608
        )
        return int(count)

    def distinct_counts(self, keys: Sequence[str], buckets: range, now: float) -> dict[str, int]:
        marks = ", ".join("?" * len(keys))
        rows = self._read(
            "count members",
            lambda db: db.execute(
                "SELECT key, COUNT(DISTINCT member) FROM defense_members"  # noqa: S608
                f" WHERE key IN ({marks}) AND bucket BETWEEN ? AND ? AND expires > ?"
                " GROUP BY key",
                (*keys, *_bounds(buckets), now),
            ).fetchall(),
        )
        found = dict(rows)
        return {key: int(found.get(key, 0)) for key in keys}

    def distinct_members(
        self, keys: Sequence[str], buckets: range, now: float, limit: int
    ) -> list[str]:
        marks = ", ".join("?" * len(keys))
        rows = self._read(
            "list members",
            lambda db: db.execute(
                f"SELECT DISTINCT member FROM defense_members WHERE key IN ({marks})"  # noqa: S608
                " AND bucket BETWEEN ? AND ? AND expires > ? ORDER BY member LIMIT ?",
                (*keys, *_bounds(buckets), now, limit),
            ).fetchall(),
        )
        return [str(member) for (member,) in rows]

    def buckets_forget(self, keys: Sequence[str], buckets: range) -> None:
        marks = ", ".join("?" * len(keys))
        with self._tx("forget counters") as db:
            for table in ("defense_counters", "defense_members"):
                db.execute(
                    f"DELETE FROM {table} WHERE key IN ({marks})"  # noqa: S608
                    " AND bucket BETWEEN ? AND ?",
                    (*keys, *_bounds(buckets)),
                )

    def block_put(self, block: Block) -> None:
        target = block.target
        with self._tx("put block") as db:
            db.execute(
                "INSERT OR REPLACE INTO defense_blocks"
                "(key, kind, target, reason, level, created, expires)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    target.key,
                    target.kind.value,
                    target.value,
                    block.reason,
                    block.level,
                    block.created,
                    block.expires,
                ),
            )

    _BLOCK_COLUMNS = "kind, target, reason, level, created, expires"

    @staticmethod
    def _blocks(rows: list[Any]) -> list[Block]:
        return [
            Block(Target(TargetKind(kind), target), reason, level, created, expires)
            for kind, target, reason, level, created, expires in rows
        ]

    @classmethod
    def _select_blocks(cls, db: sqlite3.Connection, keys: list[str], now: float) -> list[Any]:
        marks = ", ".join("?" * len(keys))
        return db.execute(
            f"SELECT {cls._BLOCK_COLUMNS} FROM defense_blocks"  # noqa: S608
            f" WHERE key IN ({marks}) AND expires > ?",
            (*keys, now),
        ).fetchall()

    @staticmethod
    def _select_values(db: sqlite3.Connection, names: Sequence[str], now: float) -> list[Any]:
        marks = ", ".join("?" * len(names))
        return db.execute(
            f"SELECT name, value FROM defense_values WHERE name IN ({marks})"  # noqa: S608
            " AND (expires IS NULL OR expires > ?)",
            (*names, now),
        ).fetchall()

    def blocks_get(self, targets: Sequence[Target], now: float) -> list[Block]:
        keys = [t.key for t in targets]
        return self._blocks(self._read("get blocks", lambda db: self._select_blocks(db, keys, now)))

    def block_delete(self, target: Target) -> bool:
        with self._tx("delete block") as db:
            cursor = db.execute("DELETE FROM defense_blocks WHERE key = ?", (target.key,))
            return cursor.rowcount > 0

    def blocks_list(self, now: float) -> list[Block]:
        rows = self._read(
            "list blocks",
            lambda db: db.execute(
                f"SELECT {self._BLOCK_COLUMNS} FROM defense_blocks"  # noqa: S608
                " WHERE expires > ? ORDER BY expires, key",
                (now,),
            ).fetchall(),
        )
        return self._blocks(rows)

    def values_get(self, names: Sequence[str], now: float) -> dict[str, str]:
        rows = self._read("get values", lambda db: self._select_values(db, names, now))
        return dict(rows)

    def value_put(self, name: str, value: str, expires: float | None) -> None:
        with self._tx("put value") as db:
            db.execute(
                "INSERT OR REPLACE INTO defense_values(name, value, expires) VALUES (?, ?, ?)",
                (name, value, expires),
            )

    def value_swap(
        self, name: str, expected: str | None, value: str, expires: float | None, now: float
    ) -> bool:
        with self._tx("swap value") as db:
            row = db.execute(
                "SELECT value FROM defense_values WHERE name = ?"
                " AND (expires IS NULL OR expires > ?)",
                (name, now),
            ).fetchone()
            if (row[0] if row else None) != expected:
                return False
            db.execute(
                "INSERT OR REPLACE INTO defense_values(name, value, expires) VALUES (?, ?, ?)",
                (name, value, expires),
            )
            return True

    def values_delete(self, names: Sequence[str]) -> None:
        marks = ", ".join("?" * len(names))
        with self._tx("delete values") as db:
            db.execute(f"DELETE FROM defense_values WHERE name IN ({marks})", tuple(names))  # noqa: S608

    def defense_lookup(
        self, targets: Sequence[Target], names: Sequence[str], now: float
    ) -> tuple[list[Block], dict[str, str]]:
        keys = [t.key for t in targets]

        def lookup(db: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            return self._select_blocks(db, keys, now), self._select_values(db, names, now)

        blocks, values = self._read("defense lookup", lookup)
        return self._blocks(blocks), dict(values)

    def defense_purge(self, now: float, limit: int) -> int:
        removed = 0
        with self._tx("purge defense") as db:
            for table, key in (
                ("defense_counters", "key, bucket"),
                ("defense_members", "key, bucket, member"),
                ("defense_blocks", "key"),
                ("defense_values", "name"),
            ):
                cursor = db.execute(
                    f"DELETE FROM {table} WHERE ({key}) IN"  # noqa: S608
                    f" (SELECT {key} FROM {table} WHERE expires <= ? LIMIT ?)",
                    (now, limit),
                )
                removed += cursor.rowcount
        return removed


def _bounds(buckets: range) -> tuple[int, int]:
    """A window's first and last bucket (windows are contiguous, step 1)."""
    if buckets.step != 1 or not buckets:
        raise ValueError("a window is a non-empty range of consecutive buckets")
    return buckets[0], buckets[-1]


def _path(url: str) -> str:
    if not url.startswith("sqlite:///"):
        raise StateUnavailable("open", f"unsupported state url {url!r}")
    return url.removeprefix("sqlite://")


def open_store(url: str) -> SqliteStore:
    path = _path(url)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _create_private(path)
    return SqliteStore(path)


def _create_private(path: str) -> None:
    """Create the database file mode 0600 if it does not exist yet. SQLite would
    create it 0644 less the umask (SQLITE_DEFAULT_FILE_PERMISSIONS), readable by
    every local user; its -wal and -shm files take the database file's mode
    (os_unix.c: `findCreateFileMode`, `unixOpenSharedMemory`), so they are 0600
    too. An existing file is
    left as it is: `check-config` reports one that others may read."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StateUnavailable("open", f"{path}: {exc.strerror}") from None
    os.close(fd)


def open_reader(url: str) -> SqliteStore:
    """A read-only connection to a store that `open_store` has created (and
    migrated); for reads on the event loop."""
    return SqliteStore(_path(url), read_only=True)
