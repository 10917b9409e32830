"""The dispatch decision inside the database: the part of the Store that chooses and claims.

`claim_service` is one service's whole decision in one transaction; `service_candidates` reads
only the queues the scheduler needs for an exact decision (see its docstring), so the cost of a
decision grows with free slots, not with queued jobs.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from job_orchestrator.server.scheduler import (
    FairnessKey,
    Occupancy,
    Placement,
    ServiceLimits,
    UserQueue,
    assign_nodes,
    fairness_key,
    plan_dispatch,
)
from job_orchestrator.server.storage._rows import job_record
from job_orchestrator.server.storage._service_users import user_inserts
from job_orchestrator.server.storage.base import JobRecord
from job_orchestrator.server.storage.tables import jobs, service_users
from job_orchestrator.status import SERVER_MOVES, SLOT_HOLDING, Status, check_move

_SCAN_BATCH = 256


# The statements of a dispatch decision, built once: executing the same statement object again
# skips SQLAlchemy's per-statement construction and cache-key work, which is most of the cost
# of a decision that reads a few index entries.
_DUE_QUEUED = sa.and_(
    jobs.c.status == Status.QUEUED.db,
    jobs.c.service == sa.bindparam("service"),
    sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= sa.bindparam("now")),
)
_OLDEST_DUE = (
    sa.select(sa.func.min(jobs.c.id))
    .where(_DUE_QUEUED, jobs.c.user_id == service_users.c.user_id)
    .correlate(service_users)
    .scalar_subquery()
)
# In the walks' WHERE, so the database (not a round trip per batch) skips the rows of users
# with nothing due.
_HAS_DUE = (
    sa.select(jobs.c.id)
    .where(_DUE_QUEUED, jobs.c.user_id == service_users.c.user_id)
    .correlate(service_users)
    .exists()
)
_OF_SERVICE = service_users.c.service == sa.bindparam("service")

_BUSY_USERS = sa.select(service_users.c.user_id, service_users.c.served_turn, _OLDEST_DUE).where(
    _OF_SERVICE, service_users.c.user_id.in_(sa.bindparam("users", expanding=True))
)
_NEVER_SERVED_WALK = (
    sa.select(service_users.c.user_id, service_users.c.first_job_id, _OLDEST_DUE)
    .where(
        _OF_SERVICE,
        service_users.c.served_turn.is_(None),
        service_users.c.first_job_id > sa.bindparam("after"),
        _HAS_DUE,
    )
    .order_by(service_users.c.first_job_id)
    .limit(sa.bindparam("batch"))
)
_SERVED_WALK = (
    sa.select(service_users.c.user_id, service_users.c.served_turn, _OLDEST_DUE)
    .where(
        _OF_SERVICE,
        # Keyset after (turn, user): the first condition alone bounds the index range.
        service_users.c.served_turn >= sa.bindparam("turn"),
        sa.or_(
            service_users.c.served_turn > sa.bindparam("turn"),
            service_users.c.user_id > sa.bindparam("user"),
        ),
        _HAS_DUE,
    )
    .order_by(service_users.c.served_turn, service_users.c.user_id)
    .limit(sa.bindparam("batch"))
)
_USER_HEAD = (
    sa.select(jobs.c.id)
    .where(_DUE_QUEUED, jobs.c.user_id == sa.bindparam("user"))
    .order_by(jobs.c.id)
    .limit(sa.bindparam("depth"))
)
# On PostgreSQL, every chosen user's head in one statement (each statement is a round trip).
_WANTED = (
    sa.func.unnest(
        sa.bindparam("users", type_=postgresql.ARRAY(sa.Integer)),
        sa.bindparam("depths", type_=postgresql.ARRAY(sa.Integer)),
    )
    .table_valued("user_id", "depth")
    .render_derived(name="wanted")
)
_HEAD = (
    sa.select(jobs.c.id)
    .where(_DUE_QUEUED, jobs.c.user_id == _WANTED.c.user_id)
    .order_by(jobs.c.id)
    .limit(_WANTED.c.depth)
    .lateral("head")
)
_USER_HEADS = (
    sa.select(_WANTED.c.user_id, _HEAD.c.id)
    .select_from(_WANTED.join(_HEAD, sa.true()))
    .order_by(_WANTED.c.user_id, _HEAD.c.id)
)
_LOWEST = -(2**63)  # below any user id, job id or turn, in a bound (never sent to the database)


def service_candidates(
    connection: Connection, service: str, limit: ServiceLimits, occupancy: Occupancy, now: float
) -> list[UserQueue]:
    """The queues plan_dispatch needs to decide exactly as if it saw every user's queue.

    The users plan_dispatch picks in one decision are a prefix, no longer than the free slots,
    of the users sorted by `fairness_key`; this finds that prefix without reading every queue.
    Users holding slots are few (at most max_runs) and looked up one by one. Idle users come
    before them: first the never-served, walked in `first_job_id` order (a lower bound of their
    oldest queued job), then the served, walked in turn order; each walk stops once it has
    `free` users that no later row could beat. Cost grows with slots, not with queued jobs,
    plus one index probe (in the database) for each user the walks pass with nothing due:
    users served before the waiting ones whose queues are empty now. Rows are never deleted,
    since a returning user must rank by its old turn, so that part grows with the service's
    history of users.
    """
    free = limit.max_runs - occupancy.per_service.get(service, 0)
    quota = limit.runs_per_user
    if free <= 0 or quota <= 0:
        return []
    active = {
        user: count
        for (name, user), count in occupancy.per_user.items()
        if name == service and count > 0
    }
    where = {"service": service, "now": now}
    ranked: list[tuple[FairnessKey, int]] = []  # (key, slots held), sorted
    busy = [user for user, count in active.items() if count < quota]
    if busy:
        for user, turn, oldest in connection.execute(_BUSY_USERS, {**where, "users": busy}):
            if oldest is not None:
                bisect.insort(
                    ranked, (fairness_key(active[user], turn, oldest, user), active[user])
                )

    def enough(bound: FairnessKey) -> bool:
        # No later row of this walk can beat the free-th best user found so far.
        return len(ranked) >= free and ranked[free - 1][0] < bound

    # Each row read costs one index probe for its oldest job: read about as many as needed.
    batch, after = max(free, 8), 0  # job ids start at 1
    # A later row's first_job_id, hence its user's oldest queued job, is above `after`.
    while not enough((0, 0, 0, after + 1, _LOWEST)):
        rows = connection.execute(_NEVER_SERVED_WALK, {**where, "after": after, "batch": batch})
        read = 0
        for user, first_job_id, oldest in rows:
            read += 1
            if enough((0, 0, 0, first_job_id, _LOWEST)):
                break
            if oldest is not None and user not in active:
                bisect.insort(ranked, (fairness_key(0, None, oldest, user), 0))
            after = first_job_id
        if read < batch:
            break
        batch = min(2 * batch, _SCAN_BATCH)

    batch, turn_after, user_after = max(free, 8), 0, 0  # turns start at 1
    while not enough((0, 1, turn_after, _LOWEST, _LOWEST)):
        params = {**where, "turn": turn_after, "user": user_after, "batch": batch}
        read = 0
        for user, turn, oldest in connection.execute(_SERVED_WALK, params):
            read += 1
            if enough((0, 1, turn, _LOWEST, _LOWEST)):
                break
            if oldest is not None and user not in active:
                bisect.insort(ranked, (fairness_key(0, turn, oldest, user), 0))
            turn_after, user_after = turn, user
        if read < batch:
            break
        batch = min(2 * batch, _SCAN_BATCH)

    chosen = ranked[:free]
    depths = {key[4]: quota - count for key, count in chosen}
    heads = _user_heads(connection, where, depths)
    return [
        UserQueue(
            service=service,
            user_id=key[4],
            job_ids=heads.get(key[4], ()),
            last_served=key[2] if key[1] else None,
        )
        for key, _count in chosen
    ]


def _user_heads(
    connection: Connection, where: dict[str, Any], depths: dict[int, int]
) -> dict[int, tuple[int, ...]]:
    """Each user's oldest due jobs, as many as its depth: one statement on PostgreSQL (a
    LATERAL join), one per user on SQLite (a statement there costs no round trip)."""
    if connection.dialect.name != "postgresql":
        return {
            user: tuple(
                connection.execute(_USER_HEAD, {**where, "user": user, "depth": depth}).scalars()
            )
            for user, depth in depths.items()
        }
    heads: dict[int, list[int]] = {}
    params = {**where, "users": list(depths), "depths": list(depths.values())}
    for user, job_id in connection.execute(_USER_HEADS, params):
        heads.setdefault(user, []).append(job_id)
    return {user: tuple(job_ids) for user, job_ids in heads.items()}


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
_CLAIM_ALL = (
    jobs.update()
    .where(jobs.c.id == _CHOSEN.c.id, jobs.c.status == Status.QUEUED.db)
    .values(
        status=Status.PROCESSING.db,
        node=sa.func.coalesce(jobs.c.node, _CHOSEN.c.node),
        dispatch_key=sa.func.coalesce(jobs.c.dispatch_key, _CHOSEN.c.dispatch_key),
        owner=sa.bindparam("new_owner", type_=sa.Text),
        updated_at=sa.bindparam("now", type_=sa.Float),
    )
    .returning(*jobs.c)
)
_SLOT_HOLDING_OF_SERVICE = sa.and_(
    jobs.c.service == sa.bindparam("service"), jobs.c.status.in_([s.db for s in SLOT_HOLDING])
)
_SERVICE_OCCUPANCY = (
    sa.select(jobs.c.user_id, sa.func.count())
    .where(_SLOT_HOLDING_OF_SERVICE)
    .group_by(jobs.c.user_id)
)
_NODE_OCCUPANCY = (
    sa.select(jobs.c.node, sa.func.count()).where(_SLOT_HOLDING_OF_SERVICE).group_by(jobs.c.node)
)
_LATEST_TURN = sa.select(sa.func.max(service_users.c.served_turn)).where(
    service_users.c.service == sa.bindparam("service")
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


def _service_occupancy(connection: Connection, service: str) -> Occupancy:
    rows = connection.execute(_SERVICE_OCCUPANCY, {"service": service})
    per_user = {(service, user_id): count for user_id, count in rows}
    return Occupancy(per_user=per_user, per_service={service: sum(per_user.values())})


def _node_occupancy(connection: Connection, service: str) -> dict[str, int]:
    rows = connection.execute(_NODE_OCCUPANCY, {"service": service})
    return {node: count for node, count in rows if node is not None}


def claim_service(
    service: str,
    limit: ServiceLimits,
    now: float,
    placement: Placement,
    owner: str | None,
    connection: Connection,
) -> list[JobRecord]:
    """One service's whole dispatch decision in one transaction: occupancy, candidates, the
    scheduler's choice, the nodes and the compare-and-set claim.

    On PostgreSQL a transaction-scoped advisory lock per service serialises the decisions of
    every replica, so each reads the occupancy the previous one left and no quota is ever
    exceeded. A replica that finds it taken claims nothing instead of queueing for it: the
    holder is deciding for every replica's queued jobs, and whatever it could not see yet
    (an upload committed meanwhile) wakes every replica again (the queue's NOTIFY). Waiting
    on it was 29 % of three replicas' database time (bench/README.md). The claimed rows are
    locked with SKIP LOCKED, so a row a terminate is moving is left for the next decision
    instead of waited on. SQLite's single writer already serialises them.
    """
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        name = f"job-orchestrator:dispatch:{service}"
        if not connection.execute(_DISPATCH_LOCK, {"name": name}).scalar():
            return []
    occupancy = _service_occupancy(connection, service)
    candidates = service_candidates(connection, service, limit, occupancy, now)
    planned = plan_dispatch(candidates, occupancy, {service: limit})
    if not planned:
        return []
    if postgres:
        lockable = set(
            connection.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.id.in_(planned), jobs.c.status == Status.QUEUED.db)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        planned = [job_id for job_id in planned if job_id in lockable]
    node_by_job = assign_nodes(planned, _node_occupancy(connection, service), placement)
    return claim_rows(connection, list(node_by_job), node_by_job, owner)


_DISPATCH_LOCK = sa.text("SELECT pg_try_advisory_xact_lock(hashtext(:name))")


def stamp_turns(connection: Connection, claimed: list[JobRecord]) -> None:
    """Each claimed job's user becomes the most recently served of its service, in claim
    order (the order plan_dispatch chose them), as the scheduler assumes within a decision."""
    turns: dict[str, int] = {}
    stamps: dict[tuple[str, int], dict[str, Any]] = {}  # a user's last turn is what stays
    for job in claimed:
        if job.service not in turns:
            latest = connection.execute(_LATEST_TURN, {"service": job.service}).scalar()
            turns[job.service] = int(latest or 0)
        turns[job.service] += 1
        stamps[(job.service, job.user_id)] = {
            "service": job.service,
            "user_id": job.user_id,
            "first_job_id": job.id,
            "served_turn": turns[job.service],
        }
    if stamps:  # one executemany: one statement on PostgreSQL
        connection.execute(user_inserts(connection.dialect.name)[1], list(stamps.values()))
