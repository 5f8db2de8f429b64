"""The schema of the store as the migrations before Alembic left it (SQLite's
user_version 6): users, app passwords, TOTP, devices, notices, the portal's
records; on SQLite also the defense's counters.

Revision ID: 0001_baseline
"""

from alembic import op

from imapguard.state.versions import statements

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in statements(op.get_bind().dialect.name, revision):
        op.execute(statement)
