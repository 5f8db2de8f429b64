"""The on-disk schema of the SQLite store and how a database reaches it.

Since Alembic (`imapguard.state.versions`), the schema's revision is in the
`alembic_version` table, and REVISIONS holds what each revision runs here.

Before it, the version was `PRAGMA user_version`: each entry of MIGRATIONS moved
the schema one version up, inside one transaction. Those are frozen: together
they are the first revision (`0001_baseline`, which also sets user_version to
their count, as they did), and a file written before Alembic is recognised by
its user_version: at the last one it is stamped with the baseline when opened;
an earlier one is brought there by `imapguard db upgrade` (`migrate`) first.
"""

from __future__ import annotations

import sqlite3

from imapguard.state.versions import BASELINE, VERSION_TABLE, SchemaMismatch, check_revision

__all__ = ["MIGRATIONS", "REVISIONS", "check_version", "migrate", "open_schema", "stamp_legacy"]

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
    # 5: the portal (imapguard.state.portal): its sign-in sessions (found by the
    # digest of their cookie token), WebAuthn user handles and passkeys, recovery
    # codes, invitations, the sign-in history and the revocation feed. Secrets are
    # digests. Revocations name no user row: the feed records events, and its seq
    # (AUTOINCREMENT) is never reused, even once the rows are forgotten.
    """
    CREATE TABLE portal_sessions (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users(name),
        token_digest BLOB NOT NULL UNIQUE,
        level TEXT NOT NULL CHECK (level IN ('password', 'full')),
        created_at REAL NOT NULL,
        last_seen_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        second_factor_at REAL,
        address TEXT NOT NULL,
        user_agent TEXT NOT NULL
    );
    CREATE INDEX portal_sessions_user ON portal_sessions(user, created_at);
    CREATE INDEX portal_sessions_expires ON portal_sessions(expires_at);
    CREATE TABLE user_handles (
        user TEXT PRIMARY KEY REFERENCES users(name),
        handle BLOB NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE TABLE passkeys (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users(name),
        credential_id BLOB NOT NULL UNIQUE,
        public_key BLOB NOT NULL,
        sign_count INTEGER NOT NULL,
        name TEXT NOT NULL,
        aaguid TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_used_at REAL
    );
    CREATE INDEX passkeys_user ON passkeys(user, created_at);
    CREATE TABLE recovery_codes (
        user TEXT NOT NULL REFERENCES users(name),
        digest BLOB NOT NULL,
        created_at REAL NOT NULL,
        used_at REAL,
        PRIMARY KEY (user, digest)
    );
    CREATE TABLE invites (
        digest BLOB PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users(name),
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL
    );
    CREATE INDEX invites_user ON invites(user);
    CREATE TABLE sign_ins (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        user TEXT NOT NULL REFERENCES users(name),
        at REAL NOT NULL,
        address TEXT NOT NULL,
        method TEXT NOT NULL,
        ok INTEGER NOT NULL,
        reason TEXT NOT NULL,
        credential TEXT NOT NULL,
        client TEXT NOT NULL,
        disowned INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX sign_ins_user ON sign_ins(user, at);
    CREATE TABLE revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        user TEXT NOT NULL,
        credential TEXT,
        at REAL NOT NULL
    );
    CREATE INDEX revocations_at ON revocations(at);
    """,
    # 6: an app password's scope: the client network it works from, its expiry
    """
    ALTER TABLE app_passwords ADD COLUMN network TEXT;
    ALTER TABLE app_passwords ADD COLUMN expires_at REAL;
    """,
)


def _split(script: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in script.split(";") if part.strip())


# Per revision of `imapguard.state.versions.REVISIONS`: its statements.
REVISIONS: dict[str, tuple[str, ...]] = {
    "0001_baseline": (
        *(st for script in MIGRATIONS for st in _split(script)),
        f"PRAGMA user_version = {len(MIGRATIONS)}",
    ),
    # Named values the store keeps about itself (the server key's check value).
    "0002_meta": ("CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",),
}


def _revision(db: sqlite3.Connection) -> str | None:
    """The Alembic revision; None when the file has no version table."""
    if not db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    ).fetchone():
        return None
    row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else ""


def open_schema(db: sqlite3.Connection, *, writable: bool) -> None:
    """Check the schema at open (`db` in autocommit mode). A new empty file is
    created at HEAD (when `writable`); a file of the migrations before Alembic at
    their last version is stamped with the baseline; anything but HEAD is then
    refused (SchemaMismatch)."""
    revision = _revision(db)
    if revision is None and writable:
        db.execute("BEGIN IMMEDIATE")
        try:
            # Again under the write lock: another process may have created it.
            revision = _revision(db)
            if revision is None:
                (version,) = db.execute("PRAGMA user_version").fetchone()
                (tables,) = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                if version == 0 and tables == 0:
                    revision = _create_at_head(db)
                elif version == len(MIGRATIONS):
                    revision = _stamp(db, BASELINE)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    if revision is None:
        check_version(db)  # a user_version past the last migration: newer
    check_revision(revision or None)


def _create_at_head(db: sqlite3.Connection) -> str:
    from imapguard.state.versions import HEAD
    from imapguard.state.versions import REVISIONS as NAMES

    for name in NAMES:
        for statement in REVISIONS[name]:
            db.execute(statement)
    return _stamp(db, HEAD)


def _stamp(db: sqlite3.Connection, revision: str) -> str:
    db.execute(VERSION_TABLE)
    db.execute("INSERT INTO alembic_version(version_num) VALUES (?)", (revision,))
    return revision


def stamp_legacy(db: sqlite3.Connection) -> None:
    """For `imapguard db upgrade`: bring a file written before Alembic to the
    baseline (the frozen MIGRATIONS) and stamp it, so Alembic can go on; a new
    empty file is left to Alembic. A file with a version table is left as is."""
    if _revision(db) is not None:
        return
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version == 0:
        return
    migrate(db)
    db.execute("BEGIN IMMEDIATE")
    try:
        if _revision(db) is None:
            _stamp(db, BASELINE)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def check_version(db: sqlite3.Connection) -> int:
    """The database's schema version; refused if newer than this imapguard's."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise SchemaMismatch(f"user_version {version}", newer=True)
    return int(version)


def migrate(db: sqlite3.Connection) -> None:
    """Apply the migrations the database lacks, each in its own transaction
    (`db` is in autocommit mode: isolation_level=None)."""
    for number in range(check_version(db), len(MIGRATIONS)):
        db.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process opening the same
            # new file may have applied this migration since the first read.
            if check_version(db) <= number:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
