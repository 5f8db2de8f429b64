"""The seam between the stores' SQL and a database: how to run a statement, how to
take the locks a check-and-set needs, and the few spellings that differ.

The stores (`accounts.py`, `portal.py`, `portal_records.py`) write their SQL once,
with `?` placeholders and `"user"` quoted (both databases read it as the column);
a backend's connection class provides `_tx` (one write transaction, or the
enclosing batch's) and `_read`, whose `Db` runs a statement with parameters, and
a `Dialect`. The base `Dialect` is SQLite's: there every write transaction is
`BEGIN IMMEDIATE`, which holds the file's write lock from its start to
its commit, so a read and the write after it are atomic with no further lock and
the `lock_*` hooks need only create what the transaction writes. PostgreSQL runs
at READ COMMITTED and takes row or advisory locks in those hooks
(`state.postgres.connection.PgDialect`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol, TypeVar

__all__ = ["Cursor", "Db", "Dialect", "SqlConnection", "ensure_user"]

T = TypeVar("T")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """A connection inside a transaction (or a read): `?` placeholders."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> object: ...


def ensure_user(db: Db, name: str, now: float) -> None:
    db.execute(
        "INSERT INTO users(name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        (name, now),
    )


class Dialect:
    """SQLite's spellings and locks (one writer at a time on the file)."""

    # Appended to an ORDER BY of names: code point order whatever the locale
    # (SQLite's BINARY collation already is).
    collate_c = ""
    # The column that breaks ties in insertion order (SQLite's rowid; PostgreSQL
    # has none, its tables carry an identity column).
    ord = "rowid"
    # "All rows after the first N": SQLite wants a LIMIT before an OFFSET.
    offset = "LIMIT -1 OFFSET ?"
    # Appended to a SELECT whose row the transaction writes next.
    for_update = ""
    greatest = "max"
    is_distinct = "IS NOT"

    def lock_user(self, db: Db, name: str, now: float) -> None:
        """Create the user if absent and hold it to the end of the transaction, so
        that writers of one account take turns (a count against a limit)."""
        ensure_user(db, name, now)

    def lock_account(self, db: Db, name: str) -> None:
        """As `lock_user`, without writing anything."""

    def lock_feed(self, db: Db) -> None:
        """Hold the revocation feed to the end of the transaction, so seqs commit
        in order."""


class SqlConnection:
    """What the stores need of their backend's connection class (which comes
    before them in the store's bases)."""

    dialect: ClassVar[Dialect]

    def _tx(self, operation: str) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def _read(self, operation: str, fn: Callable[[Db], T]) -> T:
        raise NotImplementedError

    def _changes(self, operation: str, sql: str, params: Sequence[Any] = ()) -> bool:
        """Run one writing statement in a transaction of its own (or the
        enclosing batch): whether it changed a row."""
        with self._tx(operation) as db:
            return db.execute(sql, params).rowcount > 0
