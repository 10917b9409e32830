"""The rows of `service_users` written outside a dispatch decision's reads: a service's user
becoming known with its first job (and that job's insert: `new_job_statement`, `NewJob`),
and its turn stamped when a dispatch serves it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from job_orchestrator.server.storage._unit import JoinableWork
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


_JOINED_NEW_JOBS = sa.text(
    f"""
WITH new_job AS (
    INSERT INTO jobs ({", ".join(_JOB_COLUMNS)})
    SELECT * FROM unnest(
        CAST(:user_id AS INTEGER[]), CAST(:service AS TEXT[]), CAST(:loc AS TEXT[]),
        CAST(:status AS TEXT[]), CAST(:queued_at AS FLOAT[]), CAST(:updated_at AS FLOAT[]),
        CAST(:token_name AS TEXT[])
    )
    RETURNING id, user_id, service, loc
), new_user AS (
    INSERT INTO service_users (service, user_id, first_job_id)
    SELECT service, user_id, min(id) FROM new_job
    WHERE NOT EXISTS (
        SELECT 1 FROM service_users AS known
        WHERE known.service = new_job.service AND known.user_id = new_job.user_id
    )
    GROUP BY service, user_id
    ON CONFLICT (service, user_id) DO NOTHING
)
SELECT id, loc FROM new_job
"""
)


@dataclass(eq=False)
class NewJob(JoinableWork[int | None]):
    """create_job's unit for a job with no queue limit to check and no callback: alone, what
    `alone` does; on PostgreSQL, the batch's new jobs in one statement, their users made known
    (`first_job_id`: the least new id of each), each unit given its own id by its `loc`."""

    values: dict[str, Any]
    alone: Callable[[Connection], int | None]
    #: Called in the transaction with the new job's id (the Store's announcements).
    created: Callable[[Connection, int], None]

    @property
    def join_key(self) -> Hashable:
        return "new job"

    @property
    def row(self) -> Hashable:
        return str(self.values["loc"])

    def __call__(self, connection: Connection) -> int | None:
        return self.alone(connection)

    def run_joined(self, connection: Connection, new_jobs: Sequence[NewJob]) -> list[int | None]:
        params = {column: [job.values[column] for job in new_jobs] for column in _JOB_COLUMNS}
        ids = {row.loc: int(row.id) for row in connection.execute(_JOINED_NEW_JOBS, params)}
        for job in new_jobs:
            job.created(connection, ids[job.values["loc"]])
        return [ids[job.values["loc"]] for job in new_jobs]
