"""Jobs record which token uploaded them, by name (API_TOKENS_FILE's, or `jwt:<key>`).

Revision ID: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for jobs uploaded before, and for every job of a server without authentication.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("token_name", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("token_name")
