"""The PostgreSQL state store, split by job: `connection` (the pool,
transactions, the schema check, PostgreSQL's spellings and locks), `schema`
(tables by revision) and `store` (the class that joins the connection to the
store protocols of `imapguard.state.sql`, and how to open it)."""

from imapguard.state.postgres.store import PgStore, open_store

__all__ = ["PgStore", "open_store"]
