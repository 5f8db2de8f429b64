"""The networked state store (`postgresql://...`): accounts and the portal's
records for several gateway nodes.

`PgStore` is the account store (`imapguard.state.accounts.AccountStore`) and the
portal's stores (`imapguard.state.portal.PortalStore`), both written once for
SQLite and PostgreSQL in `imapguard.state.sql`, on one pool of connections
(`connection.py`, with PostgreSQL's spellings and locks: `PgDialect`), its
schema checked at open (`imapguard.state.versions`). The defense's counters are
not here: `state.counters_url` names their store.
Calls are synchronous and cost a round trip to the server; callers on the event
loop run them on a worker thread (`state.on_thread`).
"""

from __future__ import annotations

from imapguard.state.postgres.connection import PgConnection
from imapguard.state.sql.accounts import SqlAccounts
from imapguard.state.sql.portal import SqlPortal
from imapguard.state.sql.portal_records import SqlPortalRecords

__all__ = ["PgStore", "open_store"]


class PgStore(PgConnection, SqlAccounts, SqlPortal, SqlPortalRecords):
    """A pool of connections to the state database."""


def open_store(url: str, *, password: str | None = None, pool_size: int = 4) -> PgStore:
    """The store at `url` (a libpq URL); a new empty database is created at the
    current schema, another revision is refused (SchemaMismatch)."""
    return PgStore(url, password=password, pool_size=pool_size)
