"""The networked state store (`postgresql://...`): accounts and the portal's
records for several gateway nodes.

`PgStore` is the account store (`imapguard.state.accounts.AccountStore`, in
`accounts.py`) and the portal's stores (`imapguard.state.portal.PortalStore`, in
`portal.py` and `portal_records.py`) on one pool of connections
(`connection.py`), its schema checked at open (`imapguard.state.versions`). The
defense's counters are not here: `state.counters_url` names their store.
Calls are synchronous and cost a round trip to the server; callers on the event
loop run them on a worker thread (`state.on_thread`).
"""

from __future__ import annotations

from imapguard.state.postgres.accounts import PgAccounts
from imapguard.state.postgres.portal import PgPortal
from imapguard.state.postgres.portal_records import PgPortalRecords

__all__ = ["PgStore", "open_store"]


class PgStore(PgAccounts, PgPortal, PgPortalRecords):
    """A pool of connections to the state database."""


def open_store(url: str, *, password: str | None = None, pool_size: int = 4) -> PgStore:
    """The store at `url` (a libpq URL); a new empty database is created at the
    current schema, another revision is refused (SchemaMismatch)."""
    return PgStore(url, password=password, pool_size=pool_size)
