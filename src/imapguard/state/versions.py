"""The schema revisions of the state store, and how a store checks its own.

Schema migrations are Alembic revisions (`state/migrations`, run by `imapguard
db upgrade`); this module knows their names and order without importing
Alembic or SQLAlchemy, so that opening a store (every login path process, every
CLI call) checks its revision with one query. A store whose revision is not
HEAD is refused: an older one until `imapguard db upgrade` has run, a newer one
(written by a newer imapguard) always. A brand-new empty database is created at
HEAD directly, by the statements the revisions run (`statements`), which
is what Alembic would do, without its start-up cost (tests and the demo create
many stores; tests/unit/test_migrations.py proves both give one schema).

The first revision is the SQLite schema as `PRAGMA user_version` 6 left it
(the migrations before Alembic, `state/sqlite/schema.py`); a SQLite file
written before Alembic is recognised by that version and stamped with it.
"""

from __future__ import annotations

from imapguard.errors import StateUnavailable

__all__ = [
    "BASELINE",
    "HEAD",
    "REVISIONS",
    "VERSION_TABLE",
    "SchemaMismatch",
    "check_revision",
    "statements",
]

# In order; only ever appended (a new Alembic script in state/migrations/versions
# names the last one as its down_revision).
REVISIONS: tuple[str, ...] = ("0001_baseline", "0002_meta")
BASELINE = REVISIONS[0]
HEAD = REVISIONS[-1]

# Alembic's own table, as it creates it (alembic.runtime.migration), to the
# whitespace (SQLite keeps the statement).
VERSION_TABLE = (
    "CREATE TABLE alembic_version (\n\tversion_num VARCHAR(32) NOT NULL, \n"
    "\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n)"
)


class SchemaMismatch(StateUnavailable):
    """The store's schema is not the one this imapguard was written for."""

    def __init__(self, found: str | None, *, newer: bool) -> None:
        self.found = found
        self.newer = newer
        if newer:
            detail = (
                f"schema revision {found} was written by a newer imapguard"
                f" (this one knows up to {HEAD}): upgrade imapguard"
            )
        else:
            detail = (
                f"schema revision {found or '(before ' + BASELINE + ')'} is older than"
                f" this imapguard's ({HEAD}): run `imapguard db upgrade`"
            )
        super().__init__("open", detail)


def check_revision(found: str | None) -> None:
    """Raise SchemaMismatch unless `found` is HEAD (None: older than every revision)."""
    if found == HEAD:
        return
    raise SchemaMismatch(found, newer=found is not None and found not in REVISIONS)


def statements(dialect: str, revision: str) -> tuple[str, ...]:
    """What `revision` runs on `dialect` ("sqlite" or "postgresql")."""
    if dialect == "sqlite":
        from imapguard.state.sqlite.schema import REVISIONS as SQLITE

        return SQLITE[revision]
    from imapguard.state.postgres.schema import REVISIONS as POSTGRES

    return POSTGRES[revision]
