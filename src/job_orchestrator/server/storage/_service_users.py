"""The rows of `service_users` written outside a dispatch decision's reads: a service's user
becoming known with its first job, and its turn stamped when a dispatch serves it."""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from job_orchestrator.server.storage.tables import jobs, service_users
from job_orchestrator.status import Status

_KEYS = ["service", "user_id"]
_SERVICE = sa.bindparam("service", type_=sa.Text)
_USER_ID = sa.bindparam("user_id", type_=sa.Integer)
# A plain ON CONFLICT DO NOTHING on a known user waits for any transaction updating that
# user's row (a replica's dispatch stamping its turn), which was most of three replicas'
# database waits (bench/README.md); this snapshot read waits for nothing. ON CONFLICT stays
# for two uploads of a new user at once.
_KNOWN = (
    sa.select(service_users.c.user_id)
    .where(service_users.c.service == _SERVICE, service_users.c.user_id == _USER_ID)
    .exists()
)


@functools.cache
def user_inserts(dialect: str) -> tuple[Any, Any]:
    """For the dialect: (add a service's user unless known, add it or set its served turn),
    built once and executed with the columns' values as parameters."""
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(service_users)
    new_user = sa.select(_SERVICE, _USER_ID, sa.bindparam("first_job_id", type_=sa.Integer))
    return (
        insert.from_select(
            [*_KEYS, "first_job_id"], new_user.where(~_KNOWN)
        ).on_conflict_do_nothing(index_elements=_KEYS),
        insert.on_conflict_do_update(
            index_elements=_KEYS, set_={"served_turn": insert.excluded.served_turn}
        ),
    )


_JOB_COLUMNS = ("user_id", "service", "loc", "status", "queued_at", "updated_at", "token_name")
#: How many of a user's jobs are Queued, in every service.
QUEUED_OF_USER = sa.select(sa.func.count()).where(
    jobs.c.status == Status.QUEUED.db, jobs.c.user_id == _USER_ID
)


@functools.cache
def new_job_statement(limited: bool) -> Any:
    """On PostgreSQL, a new job and its user made known, in one statement returning the job's
    id: one round trip where two statements took two (SQLite runs them one after another).

    `limited`: no row is inserted (none returned) if the user has `queue_max` jobs Queued,
    counted in the same statement (the upload's separate read was a round trip of its own)."""
    row = sa.select(*(sa.bindparam(column, type_=jobs.c[column].type) for column in _JOB_COLUMNS))
    if limited:
        row = row.where(
            QUEUED_OF_USER.scalar_subquery() < sa.bindparam("queue_max", type_=sa.Integer)
        )
    job = jobs.insert().from_select(list(_JOB_COLUMNS), row).returning(jobs.c.id).cte("new_job")
    unless_known = sa.select(_SERVICE, _USER_ID, job.c.id).where(~_KNOWN)
    user = (
        postgresql.insert(service_users)
        .from_select([*_KEYS, "first_job_id"], unless_known)
        .on_conflict_do_nothing(index_elements=_KEYS)
        .cte("new_user")
    )
    return sa.select(job.c.id).add_cte(user)
