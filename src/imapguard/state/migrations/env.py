"""Alembic's environment: run the migrations on the connection that
`imapguard.state.migrations` hands over, in its transaction. On PostgreSQL the
transaction first takes the lock a new store's creation takes, so that two nodes
upgrading (or creating) at once take turns and the second finds nothing to do.
Imported outside a migration (a walk over imapguard's modules), it does nothing:
Alembic's `context` has no configuration then."""

from alembic import context
from sqlalchemy import text

from imapguard.state.postgres.connection import LOCK_SCHEMA


def _run() -> None:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_SCHEMA})
        context.run_migrations()


try:
    _migrating = context.config is not None
except (AttributeError, NameError):
    _migrating = False
if _migrating:
    _run()
