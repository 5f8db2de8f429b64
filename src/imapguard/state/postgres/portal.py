"""The portal's sign-in sessions and passkeys on PostgreSQL
(`imapguard.state.portal`: `PortalSessionStore`, `PasskeyStore`,
`SecondFactorStore`); its other records are `portal_records.py`.

As in `accounts.py`: one conditional statement where it suffices (the passkey
counter's `UPDATE ... WHERE sign_count < %s`, the user handle's `INSERT ... ON
CONFLICT DO NOTHING`), else the account's `users` row locked (`lock_user`) from
the read to the write (the passkey limit, the last second factor, the bound on
password-level sessions). Uniqueness across accounts (a credential id, a token
digest, a handle) is the tables' UNIQUE constraints. Ids are the SQLite store's
(`new_id`).
"""

from __future__ import annotations

from typing import Any, cast

from imapguard.state.portal import (
    MAX_PASSKEYS,
    MAX_PASSWORD_SESSIONS,
    FactorRemoval,
    PasskeyRecord,
    PortalSession,
    SessionLevel,
)
from imapguard.state.postgres.accounts import ensure_user, lock_account, lock_user
from imapguard.state.postgres.connection import PgConnection
from imapguard.state.sqlite.portal import new_id

__all__ = ["PgPortal"]


class _Taken(Exception):
    """Rolls back an insert that found its credential id taken."""


class PgPortal(PgConnection):
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
            lock_user(db, user, now)  # the bound below counts the account's rows
            db.execute(
                f"INSERT INTO portal_sessions({self._SESSION_COLUMNS}, token_digest)"  # noqa: S608
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
                "DELETE FROM portal_sessions WHERE id IN (SELECT id FROM portal_sessions"
                " WHERE \"user\" = %s AND level = 'password'"
                " ORDER BY last_seen_at DESC, ord DESC OFFSET %s)",
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
                " WHERE token_digest = %s",
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
                "UPDATE portal_sessions SET last_seen_at = GREATEST(last_seen_at, %s)"
                " WHERE id = %s",
                (now, session_id),
            )

    def raise_portal_session(self, session_id: str, token_digest: bytes, now: float) -> bool:
        with self._tx("raise portal session") as db:
            cursor = db.execute(
                "UPDATE portal_sessions SET level = 'full', second_factor_at = %s,"
                " token_digest = %s, last_seen_at = GREATEST(last_seen_at, %s)"
                " WHERE id = %s AND expires_at >= %s",
                (now, token_digest, now, session_id, now),
            )
            return cursor.rowcount > 0

    def list_portal_sessions(self, user: str, now: float) -> list[PortalSession]:
        rows = self._read(
            "list portal sessions",
            lambda db: db.execute(
                f"SELECT {self._SESSION_COLUMNS} FROM portal_sessions"  # noqa: S608
                ' WHERE "user" = %s AND expires_at >= %s ORDER BY created_at DESC, ord DESC',
                (user, now),
            ).fetchall(),
        )
        return [self._session_row(row) for row in rows]

    def revoke_portal_session(self, user: str, session_id: str) -> bool:
        with self._tx("revoke portal session") as db:
            cursor = db.execute(
                'DELETE FROM portal_sessions WHERE "user" = %s AND id = %s', (user, session_id)
            )
            return cursor.rowcount > 0

    def revoke_portal_sessions(self, user: str, *, keep: str | None = None) -> int:
        with self._tx("revoke portal sessions") as db:
            cursor = db.execute(
                'DELETE FROM portal_sessions WHERE "user" = %s AND id IS DISTINCT FROM %s',
                (user, keep),
            )
            return cursor.rowcount

    def forget_portal_sessions(self, now: float) -> int:
        with self._tx("forget portal sessions") as db:
            return db.execute("DELETE FROM portal_sessions WHERE expires_at < %s", (now,)).rowcount

    # -- passkeys -------------------------------------------------------------

    def user_handle(self, user: str, new_handle: bytes, now: float) -> bytes:
        with self._tx("user handle") as db:
            ensure_user(db, user, now)
            # The first caller's insert wins; the others wait for it, do nothing
            # and read its handle. A handle of another account is a UNIQUE error.
            db.execute(
                'INSERT INTO user_handles("user", handle, created_at) VALUES (%s, %s, %s)'
                ' ON CONFLICT ("user") DO NOTHING',
                (user, new_handle, now),
            )
            row = db.execute(
                'SELECT handle FROM user_handles WHERE "user" = %s', (user,)
            ).fetchone()
            assert row is not None  # noqa: S101 - inserted or there before
            return bytes(row[0])

    def user_for_handle(self, handle: bytes) -> str | None:
        row = self._read(
            "user for handle",
            lambda db: db.execute(
                'SELECT "user" FROM user_handles WHERE handle = %s', (handle,)
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
                lock_account(db, user)
                row = db.execute(
                    'SELECT COUNT(*) FROM passkeys WHERE "user" = %s', (user,)
                ).fetchone()
                if row is not None and row[0] >= MAX_PASSKEYS:
                    return None
                ensure_user(db, user, now)
                # A credential id stored for any account: nothing inserted (the
                # constraint waits for a concurrent insert of it, then skips), and
                # the transaction is rolled back.
                cursor = db.execute(
                    f"INSERT INTO passkeys({self._PK_COLUMNS})"  # noqa: S608
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
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
                f'SELECT {self._PK_COLUMNS} FROM passkeys WHERE "user" = %s'  # noqa: S608
                " ORDER BY created_at, ord",
                (user,),
            ).fetchall(),
        )
        return [self._passkey_row(row) for row in rows]

    def find_passkey(self, credential_id: bytes) -> PasskeyRecord | None:
        row = self._read(
            "find passkey",
            lambda db: db.execute(
                f"SELECT {self._PK_COLUMNS} FROM passkeys WHERE credential_id = %s",  # noqa: S608
                (credential_id,),
            ).fetchone(),
        )
        return self._passkey_row(row) if row else None

    def use_passkey(self, credential_id: bytes, sign_count: int, now: float) -> bool:
        with self._tx("use passkey") as db:
            cursor = db.execute(
                "UPDATE passkeys SET sign_count = %s, last_used_at = %s"
                " WHERE credential_id = %s AND (sign_count < %s OR (sign_count = 0 AND %s = 0))",
                (sign_count, now, credential_id, sign_count, sign_count),
            )
            return cursor.rowcount > 0

    def rename_passkey(self, user: str, passkey_id: str, name: str) -> bool:
        with self._tx("rename passkey") as db:
            cursor = db.execute(
                'UPDATE passkeys SET name = %s WHERE "user" = %s AND id = %s',
                (name, user, passkey_id),
            )
            return cursor.rowcount > 0

    def remove_passkey(self, user: str, passkey_id: str) -> bool:
        with self._tx("remove passkey") as db:
            cursor = db.execute(
                'DELETE FROM passkeys WHERE "user" = %s AND id = %s', (user, passkey_id)
            )
            return cursor.rowcount > 0

    # -- second factors together ------------------------------------------------

    def remove_second_factor(self, user: str, factor: str) -> FactorRemoval:
        kind, _, passkey_id = factor.partition(":")
        if factor != "totp" and (kind != "passkey" or not passkey_id):
            return "absent"
        with self._tx("remove second factor") as db:
            # The account's row lock from the count to the delete: a concurrent
            # removal waits, then counts what this one left.
            row = db.execute("SELECT 1 FROM users WHERE name = %s FOR UPDATE", (user,)).fetchone()
            if row is None:
                return "absent"
            counts = db.execute(
                'SELECT (SELECT COUNT(*) FROM totp WHERE "user" = %s),'
                ' (SELECT COUNT(*) FROM passkeys WHERE "user" = %s),'
                ' (SELECT COUNT(*) FROM passkeys WHERE "user" = %s AND id = %s)',
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
                db.execute('DELETE FROM totp WHERE "user" = %s', (user,))
            else:
                db.execute('DELETE FROM passkeys WHERE "user" = %s AND id = %s', (user, passkey_id))
            return "removed"
