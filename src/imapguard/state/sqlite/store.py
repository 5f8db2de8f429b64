"""The embedded state store (`sqlite:///PATH`): accounts, the portal's records and
defense counters in one file.

`SqliteStore` is the account store (`imapguard.state.accounts.AccountStore`) and
the portal's stores (`imapguard.state.portal.PortalStore` with the former), both
written once for SQLite and PostgreSQL in `imapguard.state.sql`, and the
defense's counter store (`imapguard.defense.counters.CounterStore`, in
`counters.py`), on one connection (`connection.py`) to one file in WAL mode, its
schema versioned by `schema.py`.

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

from pathlib import Path

from imapguard.state.sql.accounts import SqlAccounts
from imapguard.state.sql.portal import SqlPortal
from imapguard.state.sql.portal_records import SqlPortalRecords
from imapguard.state.sqlite.connection import create_private, url_path
from imapguard.state.sqlite.counters import SqliteCounters

__all__ = ["SqliteStore", "open_reader", "open_store"]


class SqliteStore(SqliteCounters, SqlAccounts, SqlPortal, SqlPortalRecords):
    """One connection to the state file (read-write, or read-only for the reader).
    The connection (`SqliteCounters`' base) comes first: its `_tx` and `_read`."""


def open_store(url: str) -> SqliteStore:
    """The read-write store: its directory and its file (mode 0600) are created
    if missing, and its schema migrated."""
    path = url_path(url)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    create_private(path)
    return SqliteStore(path)


def open_reader(url: str) -> SqliteStore:
    """A read-only connection to a store that `open_store` has created (and
    migrated); for reads on the event loop. Its writes raise `StateUnavailable`."""
    return SqliteStore(url_path(url), read_only=True)
