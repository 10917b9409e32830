"""The dispatch decision inside the database: the part of the Store that chooses (the claim
itself is in _claim.py).

`claim_service` is one service's whole decision in one transaction; `service_candidates` reads
only the queues the scheduler needs for an exact decision (see its docstring), so the cost of a
decision grows with free slots, not with queued jobs.
"""

from __future__ import annotations

import bisect
from collections import Counter
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
from job_orchestrator.server.storage._claim import claim_rows
from job_orchestrator.server.storage.base import JobRecord
from job_orchestrator.server.storage.tables import jobs, service_users
from job_orchestrator.status import SLOT_HOLDING, Status

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


def _tagged(walk: int, statement: sa.Select[Any]) -> sa.Select[Any]:
    """The statement's rows, each led by `walk`; a subquery, so its ORDER BY and LIMIT hold
    inside a UNION on SQLite too."""
    rows = statement.subquery()
    return sa.select(sa.literal(walk).label("walk"), *rows.c)


# The busy users and the first batch of each walk, in one statement (a round trip on
# PostgreSQL, about 6 ms on a busy server, where three statements took three): (walk, user,
# turn or first_job_id, oldest due job), in no particular order.
_BUSY, _NEVER_SERVED, _SERVED = 0, 1, 2
_FIRST_ROWS = sa.union_all(
    _tagged(_BUSY, _BUSY_USERS),
    _tagged(_NEVER_SERVED, _NEVER_SERVED_WALK),
    _tagged(_SERVED, _SERVED_WALK),
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
    # Each row read costs one index probe for its oldest job: read about as many as needed.
    first_batch = max(free, 8)
    first: dict[int, list[Any]] = {_BUSY: [], _NEVER_SERVED: [], _SERVED: []}
    first_params = {**where, "users": busy, "after": 0, "turn": 0, "user": 0}
    for walk, *row in connection.execute(_FIRST_ROWS, {**first_params, "batch": first_batch}):
        first[walk].append(row)
    for user, turn, oldest in first[_BUSY]:
        if oldest is not None:
            bisect.insort(ranked, (fairness_key(active[user], turn, oldest, user), active[user]))

    def enough(bound: FairnessKey) -> bool:
        # No later row of this walk can beat the free-th best user found so far.
        return len(ranked) >= free and ranked[free - 1][0] < bound

    batch, after = first_batch, 0  # job ids start at 1
    rows: list[Any] | None = sorted(first[_NEVER_SERVED], key=lambda row: row[1])
    # A later row's first_job_id, hence its user's oldest queued job, is above `after`.
    while not enough((0, 0, 0, after + 1, _LOWEST)):
        if rows is None:
            params = {**where, "after": after, "batch": batch}
            rows = list(connection.execute(_NEVER_SERVED_WALK, params))
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
        batch, rows = min(2 * batch, _SCAN_BATCH), None

    batch, turn_after, user_after = first_batch, 0, 0  # turns start at 1
    rows = sorted(first[_SERVED], key=lambda row: (row[1], row[0]))
    while not enough((0, 1, turn_after, _LOWEST, _LOWEST)):
        if rows is None:
            params = {**where, "turn": turn_after, "user": user_after, "batch": batch}
            rows = list(connection.execute(_SERVED_WALK, params))
        read = 0
        for user, turn, oldest in rows:
            read += 1
            if enough((0, 1, turn, _LOWEST, _LOWEST)):
                break
            if oldest is not None and user not in active:
                bisect.insort(ranked, (fairness_key(0, turn, oldest, user), 0))
            turn_after, user_after = turn, user
        if read < batch:
            break
        batch, rows = min(2 * batch, _SCAN_BATCH), None

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


_SLOT_HOLDING_OF_SERVICE = sa.and_(
    jobs.c.service == sa.bindparam("service"), jobs.c.status.in_([s.db for s in SLOT_HOLDING])
)
# The slots a service's jobs hold, per user and node: one read for both occupancies.
_SLOTS_HELD = (
    sa.select(jobs.c.user_id, jobs.c.node, sa.func.count())
    .where(_SLOT_HOLDING_OF_SERVICE)
    .group_by(jobs.c.user_id, jobs.c.node)
)


def _slots_held(connection: Connection, service: str) -> tuple[Occupancy, dict[str, int]]:
    """The service's occupancy, per user and per node (jobs without a node count only for
    their user)."""
    per_user: Counter[tuple[str, int]] = Counter()
    per_node: Counter[str] = Counter()
    for user_id, node, count in connection.execute(_SLOTS_HELD, {"service": service}):
        per_user[(service, user_id)] += count
        if node is not None:
            per_node[node] += count
    occupancy = Occupancy(per_user=dict(per_user), per_service={service: per_user.total()})
    return occupancy, dict(per_node)


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
    on it was 29 % of three replicas' database time (bench/README.md). The claim skips rows
    another transaction has locked (SKIP LOCKED), so a row a terminate is moving is left for
    the next decision instead of waited on; the node chosen for it goes unused. SQLite's
    single writer already serialises them. Each statement is a round trip on PostgreSQL,
    which the decision waits for while dispatch waits for it (about 6 ms each on a busy
    server), hence the fewest: the lock, the slots held, the candidates, the claim, the turns.
    """
    if connection.dialect.name == "postgresql":
        name = f"job-orchestrator:dispatch:{service}"
        if not connection.execute(_DISPATCH_LOCK, {"name": name}).scalar():
            return []
    occupancy, per_node = _slots_held(connection, service)
    candidates = service_candidates(connection, service, limit, occupancy, now)
    planned = plan_dispatch(candidates, occupancy, {service: limit})
    if not planned:
        return []
    node_by_job = assign_nodes(planned, per_node, placement)
    return claim_rows(connection, list(node_by_job), node_by_job, owner)


_DISPATCH_LOCK = sa.text("SELECT pg_try_advisory_xact_lock(hashtext(:name))")
