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
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from imapguard.errors import StateUnavailable

__all__ = ["AppPasswordRecord", "SqliteStore", "UserRecord", "open_reader", "open_store"]

T = TypeVar("T")

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


def _path(url: str) -> str:
    if not url.startswith("sqlite:///"):
        raise StateUnavailable("open", f"unsupported state url {url!r}")
    return url.removeprefix("sqlite://")


def open_store(url: str) -> SqliteStore:
    path = _path(url)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return SqliteStore(path)


def open_reader(url: str) -> SqliteStore:
    """A read-only connection to a store that `open_store` has created (and
    migrated); for reads on the event loop."""
    return SqliteStore(_path(url), read_only=True)
