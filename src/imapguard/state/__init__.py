"""Where imapguard keeps what must outlive a connection: users, factors, last use.

`accounts` defines the account store's protocols and records, `portal` those of
the portal's records; `sqlite` implements them, and the defense's `CounterStore`,
on one file; `writebehind` batches the bookkeeping writes of a login;
`on_thread` runs a store call on the store's thread from async code."""

from imapguard.state.accounts import (
    AccountStore,
    AppPasswordRecord,
    DeviceKey,
    DeviceRecord,
    TotpRecord,
    UserRecord,
)
from imapguard.state.sqlite import SqliteStore, open_reader, open_store

__all__ = [
    "AccountStore",
    "AppPasswordRecord",
    "DeviceKey",
    "DeviceRecord",
    "SqliteStore",
    "TotpRecord",
    "UserRecord",
    "open_reader",
    "open_store",
]
