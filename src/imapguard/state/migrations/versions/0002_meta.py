"""The `meta` table: named values the store keeps about itself (the check
value of the server key the store's secrets are sealed with).

Revision ID: 0002_meta
"""

from alembic import op

from imapguard.state.versions import statements

revision = "0002_meta"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in statements(op.get_bind().dialect.name, revision):
        op.execute(statement)
