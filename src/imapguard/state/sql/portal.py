"""The portal's sign-in sessions and passkeys (`imapguard.state.portal`:
`PortalSessionStore`, `PasskeyStore`, `SecondFactorStore`) on SQLite and
PostgreSQL (`dialect.py`); its other records are `portal_records.py`.

As in `accounts.py`: one conditional statement where it suffices (the passkey
counter's `UPDATE ... WHERE sign_count < ?`, the user handle's `INSERT ... ON
CONFLICT DO NOTHING`), else the account's lock (`Dialect.lock_user`,
`lock_account`) from the read to the write (the passkey limit, the last second
factor, the bound on password-level sessions). Uniqueness across accounts (a
credential id, a token digest, a handle) is the tables' UNIQUE constraints.

Ids are `secrets.token_hex(8)` (`new_id`): the sign-in history keeps up to
MAX_SIGN_INS rows per account under ids unique in the store, too many for the
four bytes of the account store's ids, and the portal's ids are all made alike.
"""

from __future__ import annotations

import secrets
from typing import Any, cast

from imapguard.state.portal import (
    MAX_PASSKEYS,
    MAX_PASSWORD_SESSIONS,
    FactorRemoval,
    PasskeyRecord,
    PortalSession,
    SessionLevel,
)
from imapguard.state.sql.dialect import SqlConnection, ensure_user

__all__ = ["SqlPortal", "new_id"]


def new_id() -> str:
    """A fresh random id for a portal record (64 bits: no collision in practice)."""
    return secrets.token_hex(8)


class _Taken(Exception):
    """Rolls back an insert that found its credential id taken."""


class SqlPortal(SqlConnection):
    # -- sessions -------------------------------------------------------------

    _SESSION_COLUMNS = (
        'id, "user", level, created_at, last_seen_at, expires_at, second_factor_at,'
        " address, user_agent"
    )

    @staticmethod
    def _session_row(row: tuple[Any, ...]) -> PortalSession:
        id_, user, level, created, seen, expires, second, address, agent = row
        return PortalSession(
            id_, user, cast(SessionLevel, level), created, seen, expires, second, address, agent
        )

    def create_portal_session(
        self,
        user: str,
        token_digest: bytes,
        level: SessionLevel,
        now: float,
        expires_at: float,
        address: str,
        user_agent: str,
    ) -> PortalSession:
        session = PortalSession(
            new_id(),
            user,
            level,
            now,
            now,
            expires_at,
            now if level == "full" else None,
            address,
            user_agent,
        )
        with self._tx("create portal session") as db:
            # The account's lock: the bound below counts its rows; whoever has the
            # password could otherwise open a session per try, so the least
            # recently seen password-level ones make room.
            self.dialect.lock_user(db, user, now)
            db.execute(
                f"INSERT INTO portal_sessions({self._SESSION_COLUMNS}, token_digest)"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id,
                    user,
                    level,
                    now,
                    now,
                    expires_at,
                    session.second_factor_at,
                    address,
                    user_agent,
                    token_digest,
                ),
            )
            db.execute(
                "DELETE FROM portal_sessions WHERE id IN (SELECT id FROM portal_sessions"  # noqa: S608
                " WHERE \"user\" = ? AND level = 'password'"
                f" ORDER BY last_seen_at DESC, {self.dialect.ord} DESC {self.dialect.offset})",
                (user, MAX_PASSWORD_SESSIONS),
            )
        return session

    def find_portal_session(
        self, token_digest: bytes, now: float, idle: float
    ) -> PortalSession | None:
        row = self._read(
            "find portal session",
            lambda db: db.execute(
                f"SELECT {self._SESSION_COLUMNS} FROM portal_sessions"  # noqa: S608
                " WHERE token_digest = ?",
                (token_digest,),
            ).fetchone(),
        )
        if row is None:
            return None
        session = self._session_row(row)
        if now > session.expires_at or now - session.last_seen_at > idle:
            return None
        return session

    def touch_portal_session(self, session_id: str, now: float) -> None:
        with self._tx("touch portal session") as db:
            db.execute(
                "UPDATE portal_sessions"  # noqa: S608
                f" SET last_seen_at = {self.dialect.greatest}(last_seen_at, ?) WHERE id = ?",
                (now, session_id),
            )

    def raise_portal_session(self, session_id: str, token_digest: bytes, now: float) -> bool:
        return self._changes(
            "raise portal session",
            "UPDATE portal_sessions SET level = 'full', second_factor_at = ?,"  # noqa: S608
            f" token_digest = ?, last_seen_at = {self.dialect.greatest}(last_seen_at, ?)"
            " WHERE id = ? AND expires_at >= ?",
            (now, token_digest, now, session_id, now),
        )

    def list_portal_sessions(self, user: str, now: float) -> list[PortalSession]:
        rows = self._read(
            "list portal sessions",
            lambda db: db.execute(
                f"SELECT {self._SESSION_COLUMNS} FROM portal_sessions"  # noqa: S608
                ' WHERE "user" = ? AND expires_at >= ?'
                f" ORDER BY created_at DESC, {self.dialect.ord} DESC",
                (user, now),
            ).fetchall(),
        )
        return [self._session_row(row) for row in rows]

    def revoke_portal_session(self, user: str, session_id: str) -> bool:
        return self._changes(
            "revoke portal session",
            'DELETE FROM portal_sessions WHERE "user" = ? AND id = ?',
            (user, session_id),
        )

    def revoke_portal_sessions(self, user: str, *, keep: str | None = None) -> int:
        with self._tx("revoke portal sessions") as db:
            # `id IS DISTINCT FROM NULL` (no `keep`) matches every session.
            cursor = db.execute(
                'DELETE FROM portal_sessions WHERE "user" = ?'  # noqa: S608
                f" AND id {self.dialect.is_distinct} ?",
                (user, keep),
            )
            return cursor.rowcount

    def forget_portal_sessions(self, now: float) -> int:
        with self._tx("forget portal sessions") as db:
            return db.execute("DELETE FROM portal_sessions WHERE expires_at < ?", (now,)).rowcount

    # -- passkeys -------------------------------------------------------------

    def user_handle(self, user: str, new_handle: bytes, now: float) -> bytes:
        with self._tx("user handle") as db:
            ensure_user(db, user, now)
            # The first caller's insert wins; the others wait for it, do nothing
            # and read its handle. A handle of another account is a UNIQUE error.
            db.execute(
                'INSERT INTO user_handles("user", handle, created_at) VALUES (?, ?, ?)'
                ' ON CONFLICT ("user") DO NOTHING',
                (user, new_handle, now),
            )
            row = db.execute('SELECT handle FROM user_handles WHERE "user" = ?', (user,)).fetchone()
            assert row is not None  # noqa: S101 - inserted or there before
            return bytes(row[0])

    def user_for_handle(self, handle: bytes) -> str | None:
        row = self._read(
            "user for handle",
            lambda db: db.execute(
                'SELECT "user" FROM user_handles WHERE handle = ?', (handle,)
            ).fetchone(),
        )
        return str(row[0]) if row else None

    _PK_COLUMNS = (
        'id, "user", credential_id, public_key, sign_count, name, aaguid, created_at, last_used_at'
    )

    @staticmethod
    def _passkey_row(row: tuple[Any, ...]) -> PasskeyRecord:
        id_, user, credential_id, public_key, count, name, aaguid, created, used = row
        return PasskeyRecord(
            id_, user, bytes(credential_id), bytes(public_key), count, name, aaguid, created, used
        )

    def add_passkey(
        self,
        user: str,
        credential_id: bytes,
        public_key: bytes,
        sign_count: int,
        name: str,
        aaguid: str,
        now: float,
    ) -> PasskeyRecord | None:
        record = PasskeyRecord(
            new_id(), user, credential_id, public_key, sign_count, name, aaguid, now, None
        )
        try:
            with self._tx("add passkey") as db:
                # The account's lock from the count to the insert; nothing is
                # written (not even the user) when the passkey is refused.
                self.dialect.lock_account(db, user)
                taken = db.execute(
                    "SELECT 1 FROM passkeys WHERE credential_id = ?", (credential_id,)
                ).fetchone()
                row = db.execute(
                    'SELECT COUNT(*) FROM passkeys WHERE "user" = ?', (user,)
                ).fetchone()
                if taken is not None or (row is not None and row[0] >= MAX_PASSKEYS):
                    return None
                ensure_user(db, user, now)
                # A credential id that another account's transaction stored since
                # the check (PostgreSQL; SQLite's write lock excludes it): nothing
                # inserted (the constraint waits for the concurrent insert, then
                # skips), and the transaction is rolled back.
                cursor = db.execute(
                    f"INSERT INTO passkeys({self._PK_COLUMNS})"  # noqa: S608
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (credential_id) DO NOTHING",
                    (
                        record.id,
                        user,
                        credential_id,
                        public_key,
                        sign_count,
                        name,
                        aaguid,
                        now,
                        None,
                    ),
                )
                if cursor.rowcount == 0:
                    raise _Taken
        except _Taken:
            return None
        return record

    def list_passkeys(self, user: str) -> list[PasskeyRecord]:
        rows = self._read(
            "list passkeys",
            lambda db: db.execute(
                f'SELECT {self._PK_COLUMNS} FROM passkeys WHERE "user" = ?'  # noqa: S608
                f" ORDER BY created_at, {self.dialect.ord}",
                (user,),
            ).fetchall(),
        )
        return [self._passkey_row(row) for row in rows]

    def find_passkey(self, credential_id: bytes) -> PasskeyRecord | None:
        row = self._read(
            "find passkey",
            lambda db: db.execute(
                f"SELECT {self._PK_COLUMNS} FROM passkeys WHERE credential_id = ?",  # noqa: S608
                (credential_id,),
            ).fetchone(),
        )
        return self._passkey_row(row) if row else None

    def use_passkey(self, credential_id: bytes, sign_count: int, now: float) -> bool:
        with self._tx("use passkey") as db:
            # One conditional UPDATE: of concurrent callers with one counter only one
            # matches the row; a counter not above the stored one (a clone) matches
            # nothing, unless both are 0 (an authenticator that keeps no counter).
            cursor = db.execute(
                "UPDATE passkeys SET sign_count = ?, last_used_at = ?"
                " WHERE credential_id = ? AND (sign_count < ? OR (sign_count = 0 AND ? = 0))",
                (sign_count, now, credential_id, sign_count, sign_count),
            )
            return cursor.rowcount > 0

    def rename_passkey(self, user: str, passkey_id: str, name: str) -> bool:
        return self._changes(
            "rename passkey",
            'UPDATE passkeys SET name = ? WHERE "user" = ? AND id = ?',
            (name, user, passkey_id),
        )

    def remove_passkey(self, user: str, passkey_id: str) -> bool:
        return self._changes(
            "remove passkey", 'DELETE FROM passkeys WHERE "user" = ? AND id = ?', (user, passkey_id)
        )

    # -- second factors together ------------------------------------------------

    def remove_second_factor(self, user: str, factor: str) -> FactorRemoval:
        kind, _, passkey_id = factor.partition(":")
        if factor != "totp" and (kind != "passkey" or not passkey_id):
            return "absent"
        with self._tx("remove second factor") as db:
            # The account's lock from the count to the delete: a concurrent
            # removal waits, then counts what this one left.
            row = db.execute(
                "SELECT 1 FROM users WHERE name = ?" + self.dialect.for_update,  # noqa: S608
                (user,),
            ).fetchone()
            if row is None:
                return "absent"
            counts = db.execute(
                'SELECT (SELECT COUNT(*) FROM totp WHERE "user" = ?),'
                ' (SELECT COUNT(*) FROM passkeys WHERE "user" = ?),'
                ' (SELECT COUNT(*) FROM passkeys WHERE "user" = ? AND id = ?)',
                (user, user, user, passkey_id),
            ).fetchone()
            assert counts is not None  # noqa: S101 - one row
            totp, passkeys, this = counts
            held = totp > 0 if factor == "totp" else this > 0
            if not held:
                return "absent"
            if totp + passkeys <= 1:
                return "last"
            if factor == "totp":
                db.execute('DELETE FROM totp WHERE "user" = ?', (user,))
            else:
                db.execute('DELETE FROM passkeys WHERE "user" = ? AND id = ?', (user, passkey_id))
            return "removed"
