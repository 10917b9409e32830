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
    sa.Column("owner", sa.Text, nullable=True),
    sqlite_autoincrement=True,
)

sa.Index("ix_jobs_status_service_user", jobs.c.status, jobs.c.service, jobs.c.user_id, jobs.c.id)
sa.Index("ix_jobs_finished_at", jobs.c.finished_at)
sa.Index("ix_jobs_loc", jobs.c.loc)
sa.Index("ix_jobs_node_status", jobs.c.node, jobs.c.status)
sa.Index("ix_jobs_status_service_id", jobs.c.status, jobs.c.service, jobs.c.id)
sa.Index("ix_jobs_status_not_before", jobs.c.status, jobs.c.not_before)

# One row per (service, user) that ever queued a job there: who was served least recently.
# `served_turn` is the service's dispatch counter at the user's latest claim (NULL: never served);
# `first_job_id` is no greater than any job of the user that can still be queued, so a walk in
# its order finds never-served users in the order of their oldest queued job. create_job and
# claim keep it; a job inserted into `jobs` by other means must add its row too.
service_users = sa.Table(
    "service_users",
    metadata,
    sa.Column("service", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Integer, primary_key=True),
    sa.Column("first_job_id", sa.Integer, nullable=False),
    sa.Column("served_turn", sa.BigInteger, nullable=True),
)

sa.Index(
    "ix_service_users_turn",
    service_users.c.service,
    service_users.c.served_turn,
    service_users.c.user_id,
)
sa.Index(
    "ix_service_users_first_job",
    service_users.c.service,
    service_users.c.served_turn,
    service_users.c.first_job_id,
)

revocations = sa.Table(
    "revocations",
    metadata,
    sa.Column("node", sa.Text, primary_key=True),
    sa.Column("payload_id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# One row per server replica (REPLICA_ID): its heartbeat is the lease on the jobs it owns.
replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("services_digest", sa.Text, nullable=False),
    sa.Column("incarnation", sa.Text, nullable=False, server_default=""),
)
