"""The Alembic revisions, one file each (named by `imapguard.state.versions`)."""
