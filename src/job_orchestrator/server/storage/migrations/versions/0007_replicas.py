"""Server replicas on one database: a heartbeat per replica, an owner per job in flight.

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        # A digest of the SERVICE_* limits and nodes: replicas that disagree are refused.
        sa.Column("services_digest", sa.Text, nullable=False),
        # A random id per process: another process beating under the same id is seen.
        sa.Column("incarnation", sa.Text, nullable=False, server_default=""),
    )
    # The replica whose lease (its heartbeat) covers the job's work in flight; NULL: nobody's,
    # as for every job of a database from before this revision (the first replica takes them).
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("owner")
    op.drop_table("replicas")
