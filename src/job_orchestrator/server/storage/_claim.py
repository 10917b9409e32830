"""The claim of a dispatch decision: the chosen Queued jobs moved to Processing on their
nodes, and their users' turns stamped, in the caller's transaction (`claim_service` decides,
and `SqlStore.claim` claims jobs chosen by its caller)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from job_orchestrator.server.storage._rows import job_record
from job_orchestrator.server.storage._service_users import user_inserts
from job_orchestrator.server.storage.base import JobRecord
from job_orchestrator.server.storage.tables import jobs, service_users
from job_orchestrator.status import SERVER_MOVES, Status, check_move

# The claim's move, as the transition table has it (checked once, at import).
check_move(SERVER_MOVES, [Status.QUEUED], Status.PROCESSING)
_CLAIM = (
    jobs.update()
    .where(jobs.c.id == sa.bindparam("job_id"), jobs.c.status == Status.QUEUED.db)
    .values(
        status=Status.PROCESSING.db,
        # A dispatch that may have reached a node is only ever resent there, with its key,
        # so that node can recognise it.
        node=sa.func.coalesce(jobs.c.node, sa.bindparam("chosen_node", type_=sa.Text)),
        dispatch_key=sa.func.coalesce(jobs.c.dispatch_key, sa.bindparam("new_key", type_=sa.Text)),
        owner=sa.bindparam("new_owner", type_=sa.Text),
        updated_at=sa.bindparam("now", type_=sa.Float),
    )
    .returning(*jobs.c)
)
# On PostgreSQL the same claim for every chosen job in one statement.
_CHOSEN = (
    sa.func.unnest(
        sa.bindparam("ids", type_=postgresql.ARRAY(sa.Integer)),
        sa.bindparam("nodes", type_=postgresql.ARRAY(sa.Text)),
        sa.bindparam("keys", type_=postgresql.ARRAY(sa.Text)),
    )
    .table_valued("id", "node", "dispatch_key")
    .render_derived(name="chosen")
)
# Rows another transaction is moving (a terminate) are left for the next decision, not
# waited on.
_UNLOCKED = jobs.alias("unlocked")
_UNLOCKED_QUEUED = (
    sa.select(_UNLOCKED.c.id)
    .where(
        _UNLOCKED.c.id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.Integer))),
        _UNLOCKED.c.status == Status.QUEUED.db,
    )
    .with_for_update(skip_locked=True)
)
_CLAIM_ALL = (
    jobs.update()
    .where(
        jobs.c.id == _CHOSEN.c.id,
        jobs.c.status == Status.QUEUED.db,
        jobs.c.id.in_(_UNLOCKED_QUEUED),
    )
    .values(
        status=Status.PROCESSING.db,
        node=sa.func.coalesce(jobs.c.node, _CHOSEN.c.node),
        dispatch_key=sa.func.coalesce(jobs.c.dispatch_key, _CHOSEN.c.dispatch_key),
        owner=sa.bindparam("new_owner", type_=sa.Text),
        updated_at=sa.bindparam("now", type_=sa.Float),
    )
    .returning(*jobs.c)
)
_LATEST_TURN = sa.select(sa.func.max(service_users.c.served_turn)).where(
    service_users.c.service == sa.bindparam("service")
)
# On PostgreSQL every stamp in one statement, each service's latest turn read in it.
_STAMPS = (
    sa.func.unnest(
        sa.bindparam("services", type_=postgresql.ARRAY(sa.Text)),
        sa.bindparam("users", type_=postgresql.ARRAY(sa.Integer)),
        sa.bindparam("first_job_ids", type_=postgresql.ARRAY(sa.Integer)),
        sa.bindparam("offsets", type_=postgresql.ARRAY(sa.Integer)),
    )
    .table_valued("service", "user_id", "first_job_id", "turn_offset")
    .render_derived(name="stamp")
)
_PREVIOUS = service_users.alias("previous")
_STAMP_ALL = (
    postgresql.insert(service_users)
    .from_select(
        ["service", "user_id", "first_job_id", "served_turn"],
        sa.select(
            _STAMPS.c.service,
            _STAMPS.c.user_id,
            _STAMPS.c.first_job_id,
            sa.select(sa.func.coalesce(sa.func.max(_PREVIOUS.c.served_turn), 0))
            .where(_PREVIOUS.c.service == _STAMPS.c.service)
            .scalar_subquery()
            + _STAMPS.c.turn_offset,
        ),
    )
    .on_conflict_do_update(
        index_elements=["service", "user_id"],
        set_={"served_turn": postgresql.insert(service_users).excluded.served_turn},
    )
)


def claim_rows(
    connection: Connection,
    wanted: list[int],
    node_by_job: Mapping[int, str],
    owner: str | None,
) -> list[JobRecord]:
    now = time.time()
    # A dispatch key survives a restart, so a re-dispatch is recognised.
    keys = [f"job-{job_id}-{time.time_ns()}" for job_id in wanted]
    if connection.dialect.name == "postgresql":
        params = {
            "ids": wanted,
            "nodes": [node_by_job[job_id] for job_id in wanted],
            "keys": keys,
            "new_owner": owner,
            "now": now,
        }
        by_id = {row.id: job_record(row) for row in connection.execute(_CLAIM_ALL, params)}
        claimed = [by_id[job_id] for job_id in wanted if job_id in by_id]  # in claim order
    else:
        claimed = []
        for job_id, key in zip(wanted, keys, strict=True):
            params = {
                "job_id": job_id,
                "chosen_node": node_by_job[job_id],
                "new_key": key,
                "new_owner": owner,
                "now": now,
            }
            row = connection.execute(_CLAIM, params).first()
            if row is not None:
                claimed.append(job_record(row))
    stamp_turns(connection, claimed)
    return claimed


def stamp_turns(connection: Connection, claimed: list[JobRecord]) -> None:
    """Each claimed job's user becomes the most recently served of its service, in claim
    order (the order plan_dispatch chose them), as the scheduler assumes within a decision:
    the n-th job claimed of a service gets its latest turn + n, and a user keeps the turn of
    its last job claimed."""
    claimed_so_far: Counter[str] = Counter()
    offsets: dict[tuple[str, int], tuple[int, int]] = {}  # (service, user): (job, offset)
    for job in claimed:
        claimed_so_far[job.service] += 1
        offsets[(job.service, job.user_id)] = (job.id, claimed_so_far[job.service])
    if not offsets:
        return
    if connection.dialect.name == "postgresql":  # one statement, the latest turns read in it
        keys, values = list(offsets), list(offsets.values())
        params = {
            "services": [service for service, _user in keys],
            "users": [user for _service, user in keys],
            "first_job_ids": [job_id for job_id, _offset in values],
            "offsets": [offset for _job_id, offset in values],
        }
        connection.execute(_STAMP_ALL, params)
        return
    latest = {
        service: int(connection.execute(_LATEST_TURN, {"service": service}).scalar() or 0)
        for service in claimed_so_far
    }
    stamps = [
        {
            "service": service,
            "user_id": user,
            "first_job_id": job_id,
            "served_turn": latest[service] + offset,
        }
        for (service, user), (job_id, offset) in offsets.items()
    ]
    connection.execute(user_inserts(connection.dialect.name)[1], stamps)
