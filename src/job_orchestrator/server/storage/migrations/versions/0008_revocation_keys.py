"""Revocations carry the job's dispatch key, so the kill spares another job's payload.

Revision ID: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for revocations recorded before: killed as before, by node and payload id alone.
    with op.batch_alter_table("revocations") as batch:
        batch.add_column(sa.Column("dispatch_key", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("revocations") as batch:
        batch.drop_column("dispatch_key")
