"""The portal's sign-in sessions and passkeys on SQLite (`imapguard.state.portal`:
`PortalSessionStore`, `PasskeyStore`, `SecondFactorStore`); its other records
are `portal_records.py`.

Tables `portal_sessions`, `user_handles` and `passkeys` (`schema.py`, version 5),
and `totp` (`accounts.py`) for the last-factor check. Each check-and-set is one
conditional statement (the passkey counter's `UPDATE ... WHERE sign_count < ?`)
or a read and a write inside one `BEGIN IMMEDIATE` transaction (the passkey
limit and uniqueness, the user handle, the last second factor), so it is atomic
across every connection and process on the file.

Ids are `secrets.token_hex(8)` (`new_id`): the sign-in history keeps up to
MAX_SIGN_INS rows per account under ids unique in the store, too many for the
four bytes of the account store's ids, and the portal's ids are all made alike.
The contracts are the protocols' docstrings; comments here say how SQL keeps
them.
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
from imapguard.state.sqlite.accounts import _ensure_user
from imapguard.state.sqlite.connection import Connection

__all__ = ["SqlitePortal", "new_id"]


def new_id() -> str:
    """A fresh random id for a portal record (64 bits: no collision in practice)."""
    return secrets.token_hex(8)


class SqlitePortal(Connection):
    # -- sessions -------------------------------------------------------------

    _SESSION_COLUMNS = (
        "id, user, level, created_at, last_seen_at, expires_at, second_factor_at,"
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
            _ensure_user(db, user, now)
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
            # Bounded: whoever has the password could otherwise open a session per
            # try; the least recently seen password-level ones make room.
            db.execute(
                "DELETE FROM portal_sessions WHERE id IN (SELECT id FROM portal_sessions"
                " WHERE user = ? AND level = 'password'"
                " ORDER BY last_seen_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
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
        # A revoked session is deleted; the two expiries are checked here.
        session = self._session_row(row)
        if now > session.expires_at or now - session.last_seen_at > idle:
            return None
        return session

    def touch_portal_session(self, session_id: str, now: float) -> None:
        with self._tx("touch portal session") as db:
            db.execute(
                "UPDATE portal_sessions SET last_seen_at = max(last_seen_at, ?) WHERE id = ?",
                (now, session_id),
            )

    def raise_portal_session(self, session_id: str, token_digest: bytes, now: float) -> bool:
        with self._tx("raise portal session") as db:
            cursor = db.execute(
                "UPDATE portal_sessions SET level = 'full', second_factor_at = ?,"
                " token_digest = ?, last_seen_at = max(last_seen_at, ?)"
                " WHERE id = ? AND expires_at >= ?",
                (now, token_digest, now, session_id, now),
            )
            return cursor.rowcount > 0

    def list_portal_sessions(self, user: str, now: float) -> list[PortalSession]:
        rows = self._read(
            "list portal sessions",
            lambda db: db.execute(
                f"SELECT {self._SESSION_COLUMNS} FROM portal_sessions"  # noqa: S608
                " WHERE user = ? AND expires_at >= ? ORDER BY created_at DESC, rowid DESC",
                (user, now),
            ).fetchall(),
        )
        return [self._session_row(row) for row in rows]

    def revoke_portal_session(self, user: str, session_id: str) -> bool:
        with self._tx("revoke portal session") as db:
            cursor = db.execute(
                "DELETE FROM portal_sessions WHERE user = ? AND id = ?", (user, session_id)
            )
            return cursor.rowcount > 0

    def revoke_portal_sessions(self, user: str, *, keep: str | None = None) -> int:
        with self._tx("revoke portal sessions") as db:
            # `id IS NOT NULL` (no `keep`) matches every session.
            cursor = db.execute(
                "DELETE FROM portal_sessions WHERE user = ? AND id IS NOT ?", (user, keep)
            )
            return cursor.rowcount

    def forget_portal_sessions(self, now: float) -> int:
        with self._tx("forget portal sessions") as db:
            return db.execute("DELETE FROM portal_sessions WHERE expires_at < ?", (now,)).rowcount

    # -- passkeys -------------------------------------------------------------

    def user_handle(self, user: str, new_handle: bytes, now: float) -> bytes:
        # BEGIN IMMEDIATE holds the write lock from the read to the write: the
        # first caller stores its handle, the others read it.
        with self._tx("user handle") as db:
            row = db.execute("SELECT handle FROM user_handles WHERE user = ?", (user,)).fetchone()
            if row is not None:
                return bytes(row[0])
            _ensure_user(db, user, now)
            db.execute(
                "INSERT INTO user_handles(user, handle, created_at) VALUES (?, ?, ?)",
                (user, new_handle, now),
            )
            return new_handle

    def user_for_handle(self, handle: bytes) -> str | None:
        row = self._read(
            "user for handle",
            lambda db: db.execute(
                "SELECT user FROM user_handles WHERE handle = ?", (handle,)
            ).fetchone(),
        )
        return str(row[0]) if row else None

    _PK_COLUMNS = (
        "id, user, credential_id, public_key, sign_count, name, aaguid, created_at, last_used_at"
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
        # The checks and the insert under one write lock: concurrent callers never
        # pass the limit together nor store one credential twice.
        with self._tx("add passkey") as db:
            taken = db.execute(
                "SELECT 1 FROM passkeys WHERE credential_id = ?", (credential_id,)
            ).fetchone()
            (count,) = db.execute(
                "SELECT COUNT(*) FROM passkeys WHERE user = ?", (user,)
            ).fetchone()
            if taken is not None or count >= MAX_PASSKEYS:
                return None
            _ensure_user(db, user, now)
            db.execute(
                f"INSERT INTO passkeys({self._PK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (record.id, user, credential_id, public_key, sign_count, name, aaguid, now, None),
            )
        return record

    def list_passkeys(self, user: str) -> list[PasskeyRecord]:
        rows = self._read(
            "list passkeys",
            lambda db: db.execute(
                f"SELECT {self._PK_COLUMNS} FROM passkeys WHERE user = ?"  # noqa: S608
                " ORDER BY created_at, rowid",
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
        with self._tx("rename passkey") as db:
            cursor = db.execute(
                "UPDATE passkeys SET name = ? WHERE user = ? AND id = ?", (name, user, passkey_id)
            )
            return cursor.rowcount > 0

    def remove_passkey(self, user: str, passkey_id: str) -> bool:
        with self._tx("remove passkey") as db:
            cursor = db.execute(
                "DELETE FROM passkeys WHERE user = ? AND id = ?", (user, passkey_id)
            )
            return cursor.rowcount > 0

    # -- second factors together ------------------------------------------------

    def remove_second_factor(self, user: str, factor: str) -> FactorRemoval:
        kind, _, passkey_id = factor.partition(":")
        if factor != "totp" and (kind != "passkey" or not passkey_id):
            return "absent"
        # BEGIN IMMEDIATE holds the write lock from the count to the delete: a
        # concurrent removal waits, then counts what this one left.
        with self._tx("remove second factor") as db:
            (totp,) = db.execute("SELECT COUNT(*) FROM totp WHERE user = ?", (user,)).fetchone()
            (passkeys,) = db.execute(
                "SELECT COUNT(*) FROM passkeys WHERE user = ?", (user,)
            ).fetchone()
            if factor == "totp":
                held = totp > 0
            else:
                held = (
                    db.execute(
                        "SELECT 1 FROM passkeys WHERE user = ? AND id = ?", (user, passkey_id)
                    ).fetchone()
                    is not None
                )
            if not held:
                return "absent"
            if totp + passkeys <= 1:
                return "last"
            if factor == "totp":
                db.execute("DELETE FROM totp WHERE user = ?", (user,))
            else:
                db.execute("DELETE FROM passkeys WHERE user = ? AND id = ?", (user, passkey_id))
            return "removed"
