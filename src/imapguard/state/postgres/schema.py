"""The PostgreSQL store's schema, by revision (the revisions of
`imapguard.state.versions`; the Alembic scripts in `state/migrations` run these
same statements, and a new empty database gets them all at once).

The tables and columns are the SQLite store's (`state/sqlite/schema.py`), in
PostgreSQL's types: DOUBLE PRECISION for times (SQLite's REAL is 8 bytes too),
BYTEA for digests, BOOLEAN for flags. `"user"` is quoted (a reserved word here).
Tables whose records are listed "oldest first" get an `ord` identity column:
SQLite breaks ties of `created_at` by its rowid, PostgreSQL has none.
Defense counters are not here: with PostgreSQL they live in the counter store
that `state.counters_url` names.
"""

from __future__ import annotations

__all__ = ["REVISIONS"]

_BASELINE = (
    """CREATE TABLE users (
        name TEXT PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        last_login_at DOUBLE PRECISION,
        last_login_address TEXT,
        last_login_method TEXT
    )""",
    """CREATE TABLE app_passwords (
        id TEXT PRIMARY KEY,
        ord BIGINT GENERATED ALWAYS AS IDENTITY,
        "user" TEXT NOT NULL REFERENCES users(name),
        label TEXT NOT NULL,
        digest BYTEA NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION,
        last_used_address TEXT,
        last_used_client TEXT,
        network TEXT,
        expires_at DOUBLE PRECISION
    )""",
    'CREATE INDEX app_passwords_user ON app_passwords("user")',
    """CREATE TABLE totp (
        "user" TEXT PRIMARY KEY REFERENCES users(name),
        sealed BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_step BIGINT,
        failures INTEGER NOT NULL DEFAULT 0,
        first_failure_at DOUBLE PRECISION,
        locked_until DOUBLE PRECISION
    )""",
    """CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        ord BIGINT GENERATED ALWAYS AS IDENTITY,
        "user" TEXT NOT NULL REFERENCES users(name),
        network TEXT NOT NULL,
        client_name TEXT NOT NULL,
        client_version TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('trusted', 'pending')),
        created_at DOUBLE PRECISION NOT NULL,
        trusted_until DOUBLE PRECISION,
        last_seen_at DOUBLE PRECISION,
        last_address TEXT,
        split_code BOOLEAN NOT NULL DEFAULT FALSE,
        secret BYTEA,
        bound_address TEXT,
        UNIQUE ("user", network, client_name, client_version)
    )""",
    'CREATE INDEX devices_user ON devices("user")',
    """CREATE TABLE notices (
        "user" TEXT NOT NULL,
        kind TEXT NOT NULL,
        sent_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY ("user", kind)
    )""",
    "CREATE INDEX notices_sent_at ON notices(sent_at)",
    """CREATE TABLE portal_sessions (
        id TEXT PRIMARY KEY,
        ord BIGINT GENERATED ALWAYS AS IDENTITY,
        "user" TEXT NOT NULL REFERENCES users(name),
        token_digest BYTEA NOT NULL UNIQUE,
        level TEXT NOT NULL CHECK (level IN ('password', 'full')),
        created_at DOUBLE PRECISION NOT NULL,
        last_seen_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        second_factor_at DOUBLE PRECISION,
        address TEXT NOT NULL,
        user_agent TEXT NOT NULL
    )""",
    'CREATE INDEX portal_sessions_user ON portal_sessions("user", created_at)',
    "CREATE INDEX portal_sessions_expires ON portal_sessions(expires_at)",
    """CREATE TABLE user_handles (
        "user" TEXT PRIMARY KEY REFERENCES users(name),
        handle BYTEA NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE passkeys (
        id TEXT PRIMARY KEY,
        ord BIGINT GENERATED ALWAYS AS IDENTITY,
        "user" TEXT NOT NULL REFERENCES users(name),
        credential_id BYTEA NOT NULL UNIQUE,
        public_key BYTEA NOT NULL,
        sign_count BIGINT NOT NULL,
        name TEXT NOT NULL,
        aaguid TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION
    )""",
    'CREATE INDEX passkeys_user ON passkeys("user", created_at)',
    """CREATE TABLE recovery_codes (
        "user" TEXT NOT NULL REFERENCES users(name),
        digest BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION,
        PRIMARY KEY ("user", digest)
    )""",
    """CREATE TABLE invites (
        digest BYTEA PRIMARY KEY,
        "user" TEXT NOT NULL REFERENCES users(name),
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION
    )""",
    'CREATE INDEX invites_user ON invites("user")',
    """CREATE TABLE sign_ins (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        "user" TEXT NOT NULL REFERENCES users(name),
        at DOUBLE PRECISION NOT NULL,
        address TEXT NOT NULL,
        method TEXT NOT NULL,
        ok BOOLEAN NOT NULL,
        reason TEXT NOT NULL,
        credential TEXT NOT NULL,
        client TEXT NOT NULL,
        disowned BOOLEAN NOT NULL DEFAULT FALSE
    )""",
    'CREATE INDEX sign_ins_user ON sign_ins("user", at)',
    # The feed's seq is never reused (a sequence never goes back) and is taken
    # under a lock held to the commit (`publish_revocation`), so seqs become
    # visible in order.
    """CREATE TABLE revocations (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        "user" TEXT NOT NULL,
        credential TEXT,
        at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX revocations_at ON revocations(at)",
)

# Named values the store keeps about itself (the server key's check value).
_META = (
    """CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    )""",
)

# Per revision of `imapguard.state.versions.REVISIONS`: its statements.
REVISIONS: dict[str, tuple[str, ...]] = {
    "0001_baseline": _BASELINE,
    "0002_meta": _META,
}
