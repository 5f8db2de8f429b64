"""The portal's one-time codes and feeds (`imapguard.state.portal`:
`RecoveryCodeStore`, `InviteStore`, `SignInStore`, `RevocationFeed`) on SQLite and
PostgreSQL (`dialect.py`).

A code or an invitation is used by one conditional `UPDATE ... WHERE used_at IS
NULL`: of concurrent callers in any process or node exactly one wins. The
history is trimmed on insert under the account's lock. The feed's seq never goes
back (no seq is reused: SQLite's AUTOINCREMENT key, PostgreSQL's identity
column); a writer takes the feed's lock before it inserts (`Dialect.lock_feed`:
SQLite's file write lock, PostgreSQL's transaction-level advisory lock), held
to its commit, so a later seq is never committed (visible) before an earlier
one.
"""

from __future__ import annotations

from typing import Any

from imapguard.state.portal import MAX_RECOVERY_CODES, MAX_SIGN_INS, Revocation, SignInRecord
from imapguard.state.sql.dialect import Db, Dialect, SqlConnection, ensure_user
from imapguard.state.sql.portal import new_id

__all__ = ["SqlPortalRecords"]


def _publish(dialect: Dialect, db: Db, user: str, credential: str | None, now: float) -> int:
    dialect.lock_feed(db)
    row = db.execute(
        'INSERT INTO revocations("user", credential, at) VALUES (?, ?, ?) RETURNING seq',
        (user, credential, now),
    ).fetchone()
    assert row is not None  # noqa: S101 - RETURNING gives the row
    return int(row[0])


class SqlPortalRecords(SqlConnection):
    # -- recovery codes -------------------------------------------------------

    def set_recovery_codes(self, user: str, digests: list[bytes], now: float) -> None:
        if len(digests) > MAX_RECOVERY_CODES:
            raise ValueError(f"at most {MAX_RECOVERY_CODES} recovery codes")
        if len(set(digests)) != len(digests):
            raise ValueError("a recovery code given twice")
        with self._tx("set recovery codes") as db:
            ensure_user(db, user, now)
            db.execute('DELETE FROM recovery_codes WHERE "user" = ?', (user,))
            db.executemany(
                'INSERT INTO recovery_codes("user", digest, created_at) VALUES (?, ?, ?)',
                [(user, digest, now) for digest in digests],
            )

    def use_recovery_code(self, user: str, digest: bytes, now: float) -> bool:
        with self._tx("use recovery code") as db:
            # One conditional UPDATE: of concurrent callers only one marks it used.
            cursor = db.execute(
                "UPDATE recovery_codes SET used_at = ?"
                ' WHERE "user" = ? AND digest = ? AND used_at IS NULL',
                (now, user, digest),
            )
            return cursor.rowcount > 0

    def count_recovery_codes(self, user: str) -> int:
        row = self._read(
            "count recovery codes",
            lambda db: db.execute(
                'SELECT COUNT(*) FROM recovery_codes WHERE "user" = ? AND used_at IS NULL',
                (user,),
            ).fetchone(),
        )
        return int(row[0]) if row else 0

    # -- invitations ----------------------------------------------------------

    def add_invite(self, user: str, digest: bytes, now: float, expires_at: float) -> None:
        with self._tx("add invite") as db:
            ensure_user(db, user, now)
            db.execute(
                'INSERT INTO invites(digest, "user", created_at, expires_at) VALUES (?, ?, ?, ?)',
                (digest, user, now, expires_at),
            )

    def use_invite(self, digest: bytes, user: str, now: float) -> bool:
        with self._tx("use invite") as db:
            # One conditional UPDATE: of concurrent callers only one marks it
            # used, and only when it names `user`.
            used = db.execute(
                'UPDATE invites SET used_at = ? WHERE digest = ? AND "user" = ?'
                " AND used_at IS NULL AND expires_at >= ?",
                (now, digest, user, now),
            ).rowcount
            if not used:
                return False
            # The account's other invitations are void from now on.
            db.execute(
                'UPDATE invites SET used_at = ? WHERE "user" = ? AND used_at IS NULL',
                (now, user),
            )
            return True

    # -- sign-in history ------------------------------------------------------

    _SIGN_IN_COLUMNS = 'id, "user", at, address, method, ok, reason, credential, client, disowned'

    @staticmethod
    def _sign_in_row(row: tuple[Any, ...]) -> SignInRecord:
        id_, user, at, address, method, ok, reason, credential, client, disowned = row
        return SignInRecord(
            id_, user, at, address, method, bool(ok), reason, credential, client, bool(disowned)
        )

    def record_sign_in(
        self,
        user: str,
        at: float,
        address: str,
        method: str,
        ok: bool,
        reason: str,
        credential: str,
        client: str,
    ) -> None:
        with self._tx("record sign-in") as db:
            # Only for a user the store knows (locked: the trim counts its rows).
            if not db.execute(
                "SELECT 1 FROM users WHERE name = ?" + self.dialect.for_update,  # noqa: S608
                (user,),
            ).fetchone():
                return
            db.execute(
                'INSERT INTO sign_ins(id, "user", at, address, method, ok, reason, credential,'
                " client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (new_id(), user, at, address, method, ok, reason, credential, client),
            )
            db.execute(
                "DELETE FROM sign_ins WHERE seq IN (SELECT seq FROM sign_ins"  # noqa: S608
                f' WHERE "user" = ? ORDER BY at DESC, seq DESC {self.dialect.offset})',
                (user, MAX_SIGN_INS),
            )

    def list_sign_ins(self, user: str, since: float, limit: int) -> list[SignInRecord]:
        rows = self._read(
            "list sign-ins",
            lambda db: db.execute(
                f"SELECT {self._SIGN_IN_COLUMNS} FROM sign_ins"  # noqa: S608
                ' WHERE "user" = ? AND at >= ? ORDER BY at DESC, seq DESC LIMIT ?',
                (user, since, max(limit, 0)),
            ).fetchall(),
        )
        return [self._sign_in_row(row) for row in rows]

    def get_sign_in(self, user: str, sign_in_id: str) -> SignInRecord | None:
        row = self._read(
            "get sign-in",
            lambda db: db.execute(
                f"SELECT {self._SIGN_IN_COLUMNS} FROM sign_ins"  # noqa: S608
                ' WHERE "user" = ? AND id = ?',
                (user, sign_in_id),
            ).fetchone(),
        )
        return self._sign_in_row(row) if row else None

    def disown_sign_in(self, user: str, sign_in_id: str) -> bool:
        return self._changes(
            "disown sign-in",
            'UPDATE sign_ins SET disowned = TRUE WHERE "user" = ? AND id = ?',
            (user, sign_in_id),
        )

    # -- revocation feed ------------------------------------------------------

    def publish_revocation(self, user: str, credential: str | None, now: float) -> int:
        with self._tx("publish revocation") as db:
            return _publish(self.dialect, db, user, credential, now)

    def revoke(self, user: str, credential: str | None, now: float) -> bool:
        kind, _, ident = (credential or "").partition(":")
        if credential is not None and not (kind in ("app-password", "device") and ident):
            raise ValueError(f"not a revocable credential: {credential!r}")
        with self._tx("revoke") as db:
            if credential is None:
                removed = sum(
                    db.execute(
                        f'DELETE FROM {table} WHERE "user" = ?',  # noqa: S608
                        (user,),
                    ).rowcount
                    for table in ("app_passwords", "devices", "portal_sessions")
                )
            else:
                table = "app_passwords" if kind == "app-password" else "devices"
                removed = db.execute(
                    f'DELETE FROM {table} WHERE "user" = ? AND id = ?',  # noqa: S608
                    (user, ident),
                ).rowcount
            if removed <= 0:
                return False
            _publish(self.dialect, db, user, credential, now)
            return True

    def revocations_after(self, seq: int, limit: int) -> list[Revocation]:
        rows = self._read(
            "list revocations",
            lambda db: db.execute(
                'SELECT seq, "user", credential, at FROM revocations WHERE seq > ?'
                " ORDER BY seq LIMIT ?",
                (seq, max(limit, 0)),
            ).fetchall(),
        )
        return [Revocation(*row) for row in rows]

    def last_revocation(self) -> int:
        row = self._read(
            "last revocation",
            lambda db: db.execute("SELECT COALESCE(MAX(seq), 0) FROM revocations").fetchone(),
        )
        return int(row[0]) if row else 0

    def forget_revocations(self, before: float) -> int:
        with self._tx("forget revocations") as db:
            return db.execute("DELETE FROM revocations WHERE at < ?", (before,)).rowcount
