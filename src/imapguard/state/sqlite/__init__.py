"""The SQLite state store, split by job: `connection` (the file, its mode,
transactions), `schema` (tables and migrations), `counters` (the defense's
store protocol) and `store` (the class that joins them to the store protocols of
`imapguard.state.sql`, and how to open it)."""

from imapguard.state.accounts import (
    MAX_PENDING_DEVICES,
    AppPasswordRecord,
    DeviceKey,
    DeviceRecord,
    TotpRecord,
    UserRecord,
)
from imapguard.state.sqlite.schema import MIGRATIONS
from imapguard.state.sqlite.store import SqliteStore, open_reader, open_store

__all__ = [
    "MAX_PENDING_DEVICES",
    "MIGRATIONS",
    "AppPasswordRecord",
    "DeviceKey",
    "DeviceRecord",
    "SqliteStore",
    "TotpRecord",
    "UserRecord",
    "open_reader",
    "open_store",
]
