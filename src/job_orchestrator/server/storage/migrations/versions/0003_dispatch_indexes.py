"""Indexes for dispatch decisions whose cost grows with free slots, not with queued jobs.

Revision ID: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Queued jobs of a service in job order: finds the users who waited longest.
    op.create_index("ix_jobs_status_service_id", "jobs", ["status", "service", "id"])
    # The earliest retry of a backed-off job.
    op.create_index("ix_jobs_status_not_before", "jobs", ["status", "not_before"])


def downgrade() -> None:
    op.drop_index("ix_jobs_status_not_before", "jobs")
    op.drop_index("ix_jobs_status_service_id", "jobs")
