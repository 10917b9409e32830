"""What GET /jobs/{id} tells besides the original's columns: when run.sh started, its exit status.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("started_at", sa.Float, nullable=True))
    op.add_column("jobs", sa.Column("exit_code", sa.Integer, nullable=True))
    # GET /jobs?user_id= walks one user's jobs newest first; without a user it walks the
    # primary key.
    op.create_index("ix_jobs_user_id", "jobs", ["user_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_user_id", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("exit_code")
        batch.drop_column("started_at")
