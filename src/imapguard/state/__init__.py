"""Where imapguard keeps what must outlive a connection: users, factors, last use."""

from imapguard.state.sqlite import (
    AppPasswordRecord,
    SqliteStore,
    UserRecord,
    open_reader,
    open_store,
)

__all__ = ["AppPasswordRecord", "SqliteStore", "UserRecord", "open_reader", "open_store"]
