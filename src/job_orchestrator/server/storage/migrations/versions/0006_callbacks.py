"""Completion callbacks: one stored delivery per job that gave a callback_url.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "callbacks",
        sa.Column("job_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float, nullable=True),
        sa.Column("lease_token", sa.Text, nullable=True),
        sa.Column("lease_until", sa.Float, nullable=True),
        sa.Column("body", sa.Text, nullable=True),
        sa.Column("first_attempt_at", sa.Float, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("delivered_at", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_callbacks_state_next", "callbacks", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_callbacks_state_next", "callbacks")
    op.drop_table("callbacks")
