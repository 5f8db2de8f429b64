"""The account and portal stores written once for SQLite and PostgreSQL:
`dialect` (the seam: how a statement runs, the locks, the spellings that
differ), `accounts`, `portal` and `portal_records` (the store protocols). A
backend's store class joins its connection class to them
(`state.sqlite.store`, `state.postgres.store`)."""
