"""Alembic's environment: run the migrations on the connection that
`imapguard.state.migrations` hands over, in its transaction. Imported outside a
migration (a walk over imapguard's modules), it does nothing: Alembic's
`context` has no configuration then."""

from alembic import context


def _run() -> None:
    context.configure(connection=context.config.attributes["connection"], target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


try:
    _migrating = context.config is not None
except (AttributeError, NameError):
    _migrating = False
if _migrating:
    _run()
