"""The original's jobs table, created only when absent (an upstream database is kept as is).

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # Exactly the original's DDL, so its databases are recognised and kept.
        op.execute(
            """
            CREATE TABLE IF NOT EXISTS jobs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                user_id INTEGER NOT NULL,
                service TEXT NOT NULL,
                status TEXT NOT NULL,
                loc TEXT NOT NULL,
                dest_id INTEGER,
                created_at DATETIME DEFAULT CURRENT_TIMESTAMP
            )
            """
        )
        return
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("service", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("loc", sa.Text, nullable=False),
        sa.Column("dest_id", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime, server_default=sa.func.current_timestamp()),
    )


def downgrade() -> None:
    op.execute("DROP TABLE jobs")
