"""The PostgreSQL state store, split by job: `connection` (the pool,
transactions, the schema check), `schema` (tables by revision), `accounts`,
`portal` and `portal_records` (the store protocols) and `store` (the class that
joins them, and how to open it)."""

from imapguard.state.postgres.store import PgStore, open_store

__all__ = ["PgStore", "open_store"]
