"""The account store (`imapguard.state.accounts.AccountStore`) on SQLite and
PostgreSQL (`dialect.py`).

Tables `users`, `app_passwords`, `totp`, `devices`, `notices` and `meta`. A
check-and-set that one statement can do is one conditional statement (`UPDATE
... WHERE last_step < ?`, `INSERT ... ON CONFLICT DO UPDATE ... WHERE`): SQLite
runs it under the file's write lock (`BEGIN IMMEDIATE`), PostgreSQL at READ
COMMITTED, where a concurrent writer waits for the row's lock and the condition
is evaluated again on the row as committed. A check that reads before it writes
(a count against a limit, the failure series) first takes the account's lock
(`Dialect.lock_user`: on PostgreSQL its `users` row, `SELECT ... FOR UPDATE`) or
the row's (`Dialect.for_update`), so writers of one account take turns and, on
PostgreSQL, writers of different accounts do not wait for each other. The
contracts are the protocol's docstrings; comments here say how SQL keeps them.
"""

from __future__ import annotations

import secrets
from typing import Any, cast

from imapguard.state.accounts import (
    MAX_PENDING_DEVICES,
    AppPasswordLimit,
    AppPasswordRecord,
    DeviceKey,
    DeviceRecord,
    DeviceStatus,
    TotpRecord,
    UserRecord,
)
from imapguard.state.sql.dialect import SqlConnection, ensure_user

__all__ = ["SqlAccounts"]


class SqlAccounts(SqlConnection):
    # -- users ----------------------------------------------------------------

    def ensure_user(self, name: str, now: float) -> None:
        with self._tx("ensure user") as db:
            ensure_user(db, name, now)

    def record_login(self, name: str, now: float, address: str, method: str) -> None:
        with self._tx("record login") as db:
            ensure_user(db, name, now)
            db.execute(
                "UPDATE users SET last_login_at = ?, last_login_address = ?,"
                " last_login_method = ? WHERE name = ?",
                (now, address, method, name),
            )

    _USER_SELECT = (
        "SELECT u.name, u.created_at, u.last_login_at, u.last_login_address,"
        ' u.last_login_method, (SELECT COUNT(*) FROM app_passwords a WHERE a."user" = u.name)'
        " FROM users u"
    )

    def list_users(self) -> list[UserRecord]:
        rows = self._read(
            "list users",
            lambda db: db.execute(
                self._USER_SELECT + " ORDER BY u.name" + self.dialect.collate_c
            ).fetchall(),
        )
        return [UserRecord(*row) for row in rows]

    def get_user(self, name: str) -> UserRecord | None:
        row = self._read(
            "get user",
            lambda db: db.execute(self._USER_SELECT + " WHERE u.name = ?", (name,)).fetchone(),
        )
        return UserRecord(*row) if row else None

    # -- app passwords --------------------------------------------------------

    _AP_COLUMNS = (
        'id, "user", label, created_at, last_used_at, last_used_address, last_used_client,'
        " network, expires_at"
    )

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
        record_id = secrets.token_hex(4)
        with self._tx("add app password") as db:
            # The account's row lock from the count to the insert: a concurrent add
            # waits, then counts this one.
            self.dialect.lock_user(db, user, now)
            if max_count is not None:
                row = db.execute(
                    'SELECT COUNT(*) FROM app_passwords WHERE "user" = ?', (user,)
                ).fetchone()
                if row is not None and row[0] >= max_count:
                    raise AppPasswordLimit(user, max_count)
            db.execute(
                'INSERT INTO app_passwords(id, "user", label, digest, created_at, network,'
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record_id, user, label, digest, now, network, expires_at),
            )
        return AppPasswordRecord(record_id, user, label, now, None, None, None, network, expires_at)

    def list_app_passwords(self, user: str) -> list[AppPasswordRecord]:
        rows = self._read(
            "list app passwords",
            lambda db: db.execute(
                f'SELECT {self._AP_COLUMNS} FROM app_passwords WHERE "user" = ?'  # noqa: S608
                f" ORDER BY created_at, {self.dialect.ord}",
                (user,),
            ).fetchall(),
        )
        return [AppPasswordRecord(*row) for row in rows]

    def find_app_password(self, user: str, digest: bytes) -> AppPasswordRecord | None:
        row = self._read(
            "find app password",
            lambda db: db.execute(
                f"SELECT {self._AP_COLUMNS} FROM app_passwords"  # noqa: S608
                ' WHERE "user" = ? AND digest = ?',
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
        return self._changes(
            "revoke app password",
            'DELETE FROM app_passwords WHERE "user" = ? AND id = ?',
            (user, record_id),
        )

    # -- one-time codes (TOTP) ------------------------------------------------

    _TOTP_COLUMNS = (
        '"user", sealed, created_at, last_step, failures, first_failure_at, locked_until'
    )

    def set_totp(self, user: str, sealed: bytes, now: float) -> None:
        with self._tx("set totp") as db:
            ensure_user(db, user, now)
            # A replaced secret starts afresh: step, failures and lock.
            db.execute(
                'INSERT INTO totp("user", sealed, created_at) VALUES (?, ?, ?)'
                ' ON CONFLICT ("user") DO UPDATE SET sealed = excluded.sealed,'
                " created_at = excluded.created_at, last_step = NULL, failures = 0,"
                " first_failure_at = NULL, locked_until = NULL",
                (user, sealed, now),
            )

    def get_totp(self, user: str) -> TotpRecord | None:
        row = self._read(
            "get totp",
            lambda db: db.execute(
                f'SELECT {self._TOTP_COLUMNS} FROM totp WHERE "user" = ?',  # noqa: S608
                (user,),
            ).fetchone(),
        )
        return TotpRecord(*row) if row else None

    def remove_totp(self, user: str) -> bool:
        with self._tx("remove totp") as db:
            return db.execute('DELETE FROM totp WHERE "user" = ?', (user,)).rowcount > 0

    def use_totp_step(self, user: str, step: int) -> bool:
        with self._tx("use totp step") as db:
            # One conditional UPDATE: of concurrent callers only one matches the row.
            cursor = db.execute(
                "UPDATE totp SET last_step = ?, failures = 0, first_failure_at = NULL"
                ' WHERE "user" = ? AND (last_step IS NULL OR last_step < ?)',
                (step, user, step),
            )
            return cursor.rowcount > 0

    def record_totp_failure(
        self, user: str, now: float, window: float, max_failures: int, lockout: float
    ) -> bool:
        with self._tx("record totp failure") as db:
            # The row's lock (SQLite: the file's) from the read to the write.
            row = db.execute(
                'SELECT failures, first_failure_at FROM totp WHERE "user" = ?'  # noqa: S608
                + self.dialect.for_update,
                (user,),
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
                ' locked_until = CASE WHEN ? THEN ? ELSE locked_until END WHERE "user" = ?',
                (0 if locked else failures, None if locked else first, locked, now + lockout, user),
            )
            return locked

    def clear_totp_lock(self, user: str) -> bool:
        return self._changes(
            "clear totp lock",
            "UPDATE totp SET failures = 0, first_failure_at = NULL, locked_until = NULL"
            ' WHERE "user" = ?',
            (user,),
        )

    # -- devices --------------------------------------------------------------

    _DEV_COLUMNS = (
        'id, "user", network, client_name, client_version, status, created_at, trusted_until,'
        " last_seen_at, last_address, split_code, secret, bound_address"
    )

    @staticmethod
    def _device_row(row: tuple[Any, ...] | None) -> DeviceRecord | None:
        if row is None:
            return None
        (id_, user, network, name, version, status, created, until, seen, address, split) = row[:11]
        secret, bound = row[11:]
        return DeviceRecord(
            id_,
            user,
            network,
            name,
            version,
            cast(DeviceStatus, status),
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
                ' WHERE "user" = ? AND network = ? AND client_name = ?'
                " AND client_version = ?",
                (key.user, key.network, key.client_name, key.client_version),
            ).fetchone(),
        )
        return self._device_row(row)

    def get_device(self, user: str, device_id: str) -> DeviceRecord | None:
        row = self._read(
            "get device",
            lambda db: db.execute(
                f'SELECT {self._DEV_COLUMNS} FROM devices WHERE "user" = ? AND id = ?',  # noqa: S608
                (user, device_id),
            ).fetchone(),
        )
        return self._device_row(row)

    def list_devices(self, user: str) -> list[DeviceRecord]:
        rows = self._read(
            "list devices",
            lambda db: db.execute(
                f'SELECT {self._DEV_COLUMNS} FROM devices WHERE "user" = ?'  # noqa: S608
                f" ORDER BY created_at, {self.dialect.ord}",
                (user,),
            ).fetchall(),
        )
        return [d for d in map(self._device_row, rows) if d is not None]

    def trust_device(
        self, key: DeviceKey, now: float, until: float, address: str, secret: bytes
    ) -> DeviceRecord:
        with self._tx("trust device") as db:
            ensure_user(db, key.user, now)
            row = db.execute(
                'INSERT INTO devices(id, "user", network, client_name, client_version, status,'  # noqa: S608
                " created_at, trusted_until, last_seen_at, last_address, split_code, secret,"
                " bound_address)"
                " VALUES (?, ?, ?, ?, ?, 'trusted', ?, ?, ?, ?, TRUE, ?, NULL)"
                ' ON CONFLICT ("user", network, client_name, client_version) DO UPDATE SET'
                " status = 'trusted', trusted_until = excluded.trusted_until,"
                " last_seen_at = excluded.last_seen_at, last_address = excluded.last_address,"
                " split_code = TRUE, secret = excluded.secret, bound_address = NULL"
                f" RETURNING {self._DEV_COLUMNS}",
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
            ).fetchone()
        device = self._device_row(row)
        assert device is not None  # noqa: S101 - RETURNING gives the row
        return device

    def add_pending_device(self, key: DeviceKey, now: float, address: str) -> DeviceRecord:
        with self._tx("add pending device") as db:
            # The account's lock: the bound below counts its rows.
            self.dialect.lock_user(db, key.user, now)
            row = db.execute(
                'INSERT INTO devices(id, "user", network, client_name, client_version, status,'  # noqa: S608
                " created_at, last_seen_at, last_address)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)"
                ' ON CONFLICT ("user", network, client_name, client_version) DO UPDATE SET'
                " last_seen_at = excluded.last_seen_at, last_address = excluded.last_address"
                f" RETURNING {self._DEV_COLUMNS}",
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
            ).fetchone()
            # Bounded: whoever has the password could otherwise add a pending device
            # per network and client name; the oldest pending ones make room.
            db.execute(
                "DELETE FROM devices WHERE id IN (SELECT id FROM devices"  # noqa: S608
                " WHERE \"user\" = ? AND status = 'pending'"
                f" ORDER BY last_seen_at DESC, {self.dialect.ord} DESC {self.dialect.offset})",
                (key.user, MAX_PENDING_DEVICES),
            )
        device = self._device_row(row)
        assert device is not None  # noqa: S101 - RETURNING gives the row
        return device

    def approve_device(self, user: str, device_id: str, until: float) -> bool:
        return self._changes(
            "approve device",
            "UPDATE devices SET status = 'trusted', trusted_until = ?,"
            " bound_address = last_address, secret = NULL"
            ' WHERE "user" = ? AND id = ? AND last_address IS NOT NULL',
            (until, user, device_id),
        )

    def revoke_device(self, user: str, device_id: str) -> bool:
        return self._changes(
            "revoke device", 'DELETE FROM devices WHERE "user" = ? AND id = ?', (user, device_id)
        )

    def record_device_use(
        self, device_id: str, now: float, address: str, split_code: bool | None
    ) -> None:
        with self._tx("record device use") as db:
            db.execute(
                "UPDATE devices SET last_seen_at = ?, last_address = ?,"
                " split_code = COALESCE(?, split_code) WHERE id = ?",
                (now, address, split_code, device_id),
            )

    # -- notification rate limit ----------------------------------------------

    def claim_notice(self, user: str, kind: str, now: float, interval: float) -> bool:
        with self._tx("claim notice") as db:
            # Rows older than the interval limit nothing any more (bounded table).
            db.execute("DELETE FROM notices WHERE sent_at <= ?", (now - interval,))
            cursor = db.execute(
                'INSERT INTO notices("user", kind, sent_at) VALUES (?, ?, ?)'
                ' ON CONFLICT ("user", kind) DO UPDATE SET sent_at = excluded.sent_at'
                " WHERE notices.sent_at <= ?",
                (user, kind, now, now - interval),
            )
            return cursor.rowcount > 0

    # -- the store's own values -----------------------------------------------

    def get_meta(self, name: str) -> bytes | None:
        row = self._read(
            "get meta",
            lambda db: db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone(),
        )
        return None if row is None else bytes(row[0])

    def claim_meta(self, name: str, value: bytes) -> bytes:
        with self._tx("claim meta") as db:
            # ON CONFLICT waits for a concurrent insert of the name, then does nothing;
            # the SELECT (a new snapshot at READ COMMITTED) sees the winner's value.
            db.execute(
                "INSERT INTO meta(name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (name, value),
            )
            row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            assert row is not None  # noqa: S101 - inserted or there before
            return bytes(row[0])

    def any_totp(self) -> TotpRecord | None:
        row = self._read(
            "any totp",
            lambda db: db.execute(
                f"SELECT {self._TOTP_COLUMNS} FROM totp LIMIT 1"  # noqa: S608
            ).fetchone(),
        )
        return TotpRecord(*row) if row else None
