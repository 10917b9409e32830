"""Who was served least recently, per (service, user): the fairness rule's stored half.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_users",
        sa.Column("service", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Integer, primary_key=True),
        sa.Column("first_job_id", sa.Integer, nullable=False),
        sa.Column("served_turn", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_service_users_turn", "service_users", ["service", "served_turn", "user_id"])
    op.create_index(
        "ix_service_users_first_job", "service_users", ["service", "served_turn", "first_job_id"]
    )
    # Every user with a job that is queued or may return to the queue gets a row, as never
    # served: the first decision after the upgrade is the old one (oldest queued job first),
    # later ones rotate. Ended jobs never return to the queue, so they do not count.
    op.execute(
        "INSERT INTO service_users (service, user_id, first_job_id) "
        "SELECT service, user_id, MIN(id) FROM jobs WHERE LOWER(status) IN "
        "('queued','processing','submitted','prepared','running','locked') "
        "GROUP BY service, user_id"
    )


def downgrade() -> None:
    op.drop_index("ix_service_users_first_job", "service_users")
    op.drop_index("ix_service_users_turn", "service_users")
    op.drop_table("service_users")
