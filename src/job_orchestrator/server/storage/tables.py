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
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("owner", sa.Text, nullable=True),
    # The name (never the value) of the token or JWT key that uploaded the job; NULL: none.
    sa.Column("token_name", sa.Text, nullable=True),
    sqlite_autoincrement=True,
)

sa.Index("ix_jobs_status_service_user", jobs.c.status, jobs.c.service, jobs.c.user_id, jobs.c.id)
sa.Index("ix_jobs_finished_at", jobs.c.finished_at)
sa.Index("ix_jobs_loc", jobs.c.loc)
sa.Index("ix_jobs_node_status", jobs.c.node, jobs.c.status)
sa.Index("ix_jobs_status_service_id", jobs.c.status, jobs.c.service, jobs.c.id)
sa.Index("ix_jobs_status_not_before", jobs.c.status, jobs.c.not_before)
sa.Index("ix_jobs_user_id", jobs.c.user_id, jobs.c.id)

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
    # The job's dispatch key, sent with the kill: another job's payload of that id is spared.
    sa.Column("dispatch_key", sa.Text, nullable=True),
)

# One completion callback per job that asked for one (the `callback_url` of its upload).
# `state` is pending until a 2xx answer (delivered) or the deadline (expired). A delivery
# attempt is claimed by raising `attempts` with a compare-and-set and holding a lease
# (`lease_token`, `lease_until`), so no two loops or replicas send the same attempt; a lease
# whose holder died runs out and the attempt is made again. `body` is fixed at the first
# attempt, so every retry sends (and signs) the same bytes.
callbacks = sa.Table(
    "callbacks",
    metadata,
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

sa.Index("ix_callbacks_state_next", callbacks.c.state, callbacks.c.next_attempt_at)
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
