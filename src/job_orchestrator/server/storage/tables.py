"""The server's schema as SQLAlchemy Core tables (the migrations create it)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# The first seven columns are the original's, so an upstream database upgrades in place.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Integer, nullable=False),
    sa.Column("service", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("loc", sa.Text, nullable=False),
    sa.Column("dest_id", sa.Integer, nullable=True),
    sa.Column("created_at", sa.DateTime, server_default=sa.func.current_timestamp()),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
    sa.Column("node", sa.Text, nullable=True),
    sa.Column("dispatch_key", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("not_before", sa.Float, nullable=True),
    sa.Column("failing_since", sa.Float, nullable=True),
    sa.Column("queued_at", sa.Float, nullable=True),
    sa.Column("dispatched_at", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sqlite_autoincrement=True,
)

sa.Index("ix_jobs_status_service_user", jobs.c.status, jobs.c.service, jobs.c.user_id, jobs.c.id)
sa.Index("ix_jobs_finished_at", jobs.c.finished_at)
sa.Index("ix_jobs_loc", jobs.c.loc)
sa.Index("ix_jobs_node_status", jobs.c.node, jobs.c.status)
sa.Index("ix_jobs_status_service_id", jobs.c.status, jobs.c.service, jobs.c.id)
sa.Index("ix_jobs_status_not_before", jobs.c.status, jobs.c.not_before)

revocations = sa.Table(
    "revocations",
    metadata,
    sa.Column("node", sa.Text, primary_key=True),
    sa.Column("payload_id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
