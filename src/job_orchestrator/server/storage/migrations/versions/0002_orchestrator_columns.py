"""Columns for compare-and-set dispatch, retries, messages, retention; revocations; indexes.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("message", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("node", sa.Text, nullable=True))
        batch.add_column(sa.Column("dispatch_key", sa.Text, nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("not_before", sa.Float, nullable=True))
        batch.add_column(sa.Column("failing_since", sa.Float, nullable=True))
        batch.add_column(sa.Column("queued_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("dispatched_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("updated_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("finished_at", sa.Float, nullable=True))
    op.create_index("ix_jobs_status_service_user", "jobs", ["status", "service", "user_id", "id"])
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    op.create_index("ix_jobs_loc", "jobs", ["loc"])
    op.create_index("ix_jobs_node_status", "jobs", ["node", "status"])
    # Payloads given to another client while theirs was down: killed when it comes back.
    op.create_table(
        "revocations",
        sa.Column("node", sa.Text, primary_key=True),
        sa.Column("payload_id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    # Upstream jobs that already ended have no finish time: count retention from now.
    op.execute(
        "UPDATE jobs SET finished_at = CAST(strftime('%s','now') AS REAL) "
        "WHERE status IN ('completed','failed','invalid','killed','unknown')"
        if op.get_bind().dialect.name == "sqlite"
        else "UPDATE jobs SET finished_at = EXTRACT(EPOCH FROM now()) "
        "WHERE status IN ('completed','failed','invalid','killed','unknown')"
    )


def downgrade() -> None:
    op.drop_table("revocations")
    op.drop_index("ix_jobs_node_status", "jobs")
    op.drop_index("ix_jobs_loc", "jobs")
    op.drop_index("ix_jobs_finished_at", "jobs")
    op.drop_index("ix_jobs_status_service_user", "jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in (
            "finished_at",
            "updated_at",
            "dispatched_at",
            "queued_at",
            "failing_since",
            "not_before",
            "attempts",
            "dispatch_key",
            "node",
            "message",
        ):
            batch.drop_column(column)
