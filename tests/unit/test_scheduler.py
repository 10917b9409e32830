from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from job_orchestrator.server.scheduler import (
    NodeSlot,
    Occupancy,
    Placement,
    ServiceLimits,
    UserQueue,
    assign_nodes,
    free_slots,
    plan_dispatch,
)

SVC = "svc"


def occupancy(per_user: Mapping[tuple[str, int], int]) -> Occupancy:
    """Occupancy as the store computes it: service counts are the sums of the user counts."""
    per_service: Counter[str] = Counter()
    for (service, _), count in per_user.items():
        per_service[service] += count
    return Occupancy(per_user=dict(per_user), per_service=dict(per_service))


def user_queues(service: str, users: int, jobs_each: int) -> list[UserQueue]:
    """`users` users with `jobs_each` queued jobs each, submitted one user after the other."""
    return [
        UserQueue(service, user, tuple(range(user * 100 + 1, user * 100 + 1 + jobs_each)))
        for user in range(1, users + 1)
    ]


def owners(queues: Iterable[UserQueue]) -> dict[int, tuple[str, int]]:
    return {job: (q.service, q.user_id) for q in queues for job in q.job_ids}


# --- free_slots -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_runs", "active", "expected"), [(10, 0, 10), (10, 7, 3), (10, 10, 0), (2, 5, 0), (0, 0, 0)]
)
def test_free_slots(max_runs: int, active: int, expected: int) -> None:
    assert free_slots(ServiceLimits(runs_per_user=5, max_runs=max_runs), active) == expected


# --- upstream examples ------------------------------------------------------------------------


def test_one_job_per_user_when_slots_are_scarce() -> None:
    queues = user_queues(SVC, users=3, jobs_each=5)
    chosen = plan_dispatch(queues, occupancy({}), {SVC: ServiceLimits(5, 3)})
    assert sorted(chosen) == [101, 201, 301]


def test_service_over_its_limit_starts_nothing() -> None:
    queues = user_queues(SVC, users=3, jobs_each=5)
    busy = occupancy({(SVC, 9): 5})
    assert plan_dispatch(queues, busy, {SVC: ServiceLimits(5, 2)}) == []


def test_two_free_slots_go_to_two_users() -> None:
    queues = user_queues(SVC, users=3, jobs_each=5)
    chosen = plan_dispatch(queues, occupancy({}), {SVC: ServiceLimits(5, 2)})
    assert len(chosen) == 2
    assert len({owners(queues)[job] for job in chosen}) == 2


def test_user_at_quota_is_skipped() -> None:
    queues = user_queues(SVC, users=2, jobs_each=5)
    chosen = plan_dispatch(queues, occupancy({(SVC, 1): 2}), {SVC: ServiceLimits(2, 10)})
    assert chosen == [201, 202]


@pytest.mark.parametrize("limits", [ServiceLimits(0, 10), ServiceLimits(5, 0), ServiceLimits(0, 0)])
def test_zero_limits_start_nothing(limits: ServiceLimits) -> None:
    assert plan_dispatch(user_queues(SVC, 3, 5), occupancy({}), {SVC: limits}) == []


def test_unknown_service_waits() -> None:
    queues = user_queues("unknown", 3, 5)
    assert plan_dispatch(queues, occupancy({}), {SVC: ServiceLimits(5, 10)}) == []


def test_services_are_independent_and_in_name_order() -> None:
    zeta = [UserQueue("zeta", 1, (1, 2, 3))]
    alpha = [UserQueue("alpha", 1, (4, 5, 6))]
    limits = {"zeta": ServiceLimits(2, 10), "alpha": ServiceLimits(5, 1)}
    busy_zeta = occupancy({("zeta", 1): 1})
    # alpha's single slot does not constrain zeta, zeta's busy user does not constrain alpha.
    assert plan_dispatch(zeta + alpha, busy_zeta, limits) == [4, 1]


def test_empty_input() -> None:
    assert plan_dispatch([], occupancy({}), {SVC: ServiceLimits(5, 10)}) == []
    assert plan_dispatch([UserQueue(SVC, 1, ())], occupancy({}), {SVC: ServiceLimits(5, 10)}) == []


# --- fairness and determinism -----------------------------------------------------------------


def test_freed_slot_goes_to_least_served_user() -> None:
    # A's jobs are all older than B's, yet B holds fewer slots.
    queues = [UserQueue(SVC, 1, (1, 2, 3)), UserQueue(SVC, 2, (10, 11))]
    busy = occupancy({(SVC, 1): 2, (SVC, 2): 0})
    assert plan_dispatch(queues, busy, {SVC: ServiceLimits(5, 3)}) == [10]


def test_tie_goes_to_user_who_waited_longest() -> None:
    queues = [UserQueue(SVC, 1, (7, 8)), UserQueue(SVC, 2, (3, 9)), UserQueue(SVC, 3, (5,))]
    busy = occupancy({(SVC, 1): 1, (SVC, 2): 1, (SVC, 3): 1})
    assert plan_dispatch(queues, busy, {SVC: ServiceLimits(5, 4)}) == [3]
    assert plan_dispatch(queues, busy, {SVC: ServiceLimits(5, 5)}) == [3, 5]


def test_round_robin_order_within_a_decision() -> None:
    queues = [UserQueue(SVC, 1, (1, 2, 3)), UserQueue(SVC, 2, (4, 5)), UserQueue(SVC, 3, (6,))]
    chosen = plan_dispatch(queues, occupancy({}), {SVC: ServiceLimits(5, 10)})
    assert chosen == [1, 4, 6, 2, 5, 3]


def test_freed_slot_goes_to_user_served_least_recently() -> None:
    # Issue 14's flood: user 1 queued 5 jobs before user 2's one and was served first.
    queues = [UserQueue(SVC, 1, (2, 3, 4, 5), last_served=1), UserQueue(SVC, 2, (6,))]
    assert plan_dispatch(queues, occupancy({}), {SVC: ServiceLimits(5, 1)}) == [6]
    # Both served: the one served earlier goes first, whoever has the oldest job.
    queues = [UserQueue(SVC, 1, (2, 3), last_served=4), UserQueue(SVC, 2, (6,), last_served=3)]
    assert plan_dispatch(queues, occupancy({}), {SVC: ServiceLimits(5, 2)}) == [6, 2]


def test_fewest_slots_still_come_before_least_recently_served() -> None:
    queues = [UserQueue(SVC, 1, (1,), last_served=1), UserQueue(SVC, 2, (2,), last_served=9)]
    busy = occupancy({(SVC, 1): 1})
    assert plan_dispatch(queues, busy, {SVC: ServiceLimits(5, 2)}) == [2]


def test_ties_on_turn_go_to_the_oldest_job_then_the_user_id() -> None:
    # Two replicas may stamp the same turn.
    queues = [
        UserQueue(SVC, 3, (9,), last_served=2),
        UserQueue(SVC, 2, (7,), last_served=2),
        UserQueue(SVC, 1, (8,), last_served=2),
    ]
    assert plan_dispatch(queues, occupancy({}), {SVC: ServiceLimits(5, 3)}) == [7, 8, 9]
    assert plan_dispatch(
        [UserQueue(SVC, 1, (), 1), *queues], occupancy({}), {SVC: ServiceLimits(5, 3)}
    ) == [7, 8, 9]


def test_users_served_in_this_decision_go_behind_the_others() -> None:
    queues = [UserQueue(SVC, 1, (1, 2), last_served=None), UserQueue(SVC, 2, (3, 4), 5)]
    assert plan_dispatch(queues, occupancy({}), {SVC: ServiceLimits(5, 4)}) == [1, 3, 2, 4]


def test_same_input_in_any_order_gives_same_output() -> None:
    queues = [*user_queues("a", 4, 3), *user_queues("b", 3, 4)]
    counts = {("a", 1): 1, ("a", 3): 2, ("b", 2): 1}
    limits = {"a": ServiceLimits(3, 6), "b": ServiceLimits(2, 5)}
    expected = plan_dispatch(queues, occupancy(counts), limits)
    rng = random.Random(0)
    for _ in range(20):
        shuffled = rng.sample(queues, len(queues))
        reordered = dict(rng.sample(list(counts.items()), len(counts)))
        assert plan_dispatch(shuffled, occupancy(reordered), limits) == expected


def test_duplicate_queues_of_one_user_are_merged() -> None:
    queues = [UserQueue(SVC, 1, (5, 6)), UserQueue(SVC, 1, (2, 5))]
    limits = {SVC: ServiceLimits(2, 10)}
    assert plan_dispatch(queues, occupancy({}), limits) == [2, 5]
    assert plan_dispatch(queues[::-1], occupancy({}), limits) == [2, 5]


# --- properties -------------------------------------------------------------------------------

SERVICES = ("alpha", "beta")
USERS = tuple(range(3))
keys = st.tuples(st.sampled_from(SERVICES), st.sampled_from(USERS))


@dataclass(frozen=True)
class Scenario:
    queues: list[UserQueue]
    occupancy: Occupancy
    limits: dict[str, ServiceLimits]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    # Job i + 1 belongs to the i-th drawn key, so each queue is ascending and users interleave
    # at random; drawing owners is much cheaper for hypothesis than drawing unique ids.
    queued = draw(st.integers(0, 24))
    job_owners = draw(st.lists(keys, min_size=queued, max_size=queued))
    jobs: dict[tuple[str, int], list[int]] = {}
    for job, key in enumerate(job_owners, start=1):
        jobs.setdefault(key, []).append(job)
    # Stored turns, ties included (two replicas can stamp the same turn); None: never served.
    turn = st.one_of(st.none(), st.integers(1, 6))
    queues = [
        UserQueue(service, user, tuple(ids), draw(turn)) for (service, user), ids in jobs.items()
    ]
    # Drawn job by job like the queues, so most users hold few slots and services are rarely
    # all full; users without a slot are absent, as from a GROUP BY query.
    running = draw(st.integers(0, 8))
    active = Counter(draw(st.lists(keys, min_size=running, max_size=running)))
    unconfigured = draw(st.sampled_from((None, *SERVICES)))
    # Hypothesis favours the first value; a limit of 0 makes a service trivial, so it goes last.
    size = st.sampled_from((1, 2, 3, 4, 5, 6, 0))
    limit = st.builds(ServiceLimits, size, size)
    limits = {service: draw(limit) for service in SERVICES if service != unconfigured}
    return Scenario(queues, occupancy(active), limits)


def reference_plan(scenario: Scenario) -> list[int]:
    """The fairness rule, spelled out as slowly and plainly as possible."""
    chosen: list[int] = []
    for service in sorted(scenario.limits):
        limits = scenario.limits[service]
        mine = [q for q in scenario.queues if q.service == service]
        queues = {q.user_id: list(q.job_ids) for q in mine}
        served = {q.user_id: q.last_served for q in mine}
        counts = {user: scenario.occupancy.per_user.get((service, user), 0) for user in queues}
        slots = limits.max_runs - scenario.occupancy.per_service.get(service, 0)
        now = max([t for t in served.values() if t is not None], default=0)
        while slots > 0:
            eligible = [u for u in queues if queues[u] and counts[u] < limits.runs_per_user]
            if not eligible:
                break
            fewest = min(counts[u] for u in eligible)
            least = [u for u in eligible if counts[u] == fewest]
            never = [u for u in least if served[u] is None]
            if never:
                user = min(never, key=lambda u: (queues[u][0], u))
            else:
                user = min(least, key=lambda u: (served[u] or 0, queues[u][0], u))
            chosen.append(queues[user].pop(0))
            counts[user] += 1
            now += 1
            served[user] = now
            slots -= 1
    return chosen


@dataclass(frozen=True)
class Outcome:
    """Per (service, user): jobs active before, chosen now, and queued but left waiting."""

    active: dict[tuple[str, int], int]
    chosen: dict[tuple[str, int], list[int]]
    waiting: dict[tuple[str, int], int]

    def final(self, service: str, user: int) -> int:
        return self.active[service, user] + len(self.chosen[service, user])


def outcome(scenario: Scenario, chosen: list[int]) -> Outcome:
    owner = owners(scenario.queues)
    picked: dict[tuple[str, int], list[int]] = {}
    for job in chosen:
        picked.setdefault(owner[job], []).append(job)
    everyone = {(q.service, q.user_id) for q in scenario.queues} | set(scenario.occupancy.per_user)
    return Outcome(
        active={key: scenario.occupancy.per_user.get(key, 0) for key in everyone},
        chosen={key: picked.get(key, []) for key in everyone},
        waiting={
            (q.service, q.user_id): len(q.job_ids) - len(picked.get((q.service, q.user_id), []))
            for q in scenario.queues
        },
    )


@given(scenarios())
def test_matches_reference_rule(scenario: Scenario) -> None:
    assert plan_dispatch(scenario.queues, scenario.occupancy, scenario.limits) == reference_plan(
        scenario
    )


# The invariants share one generated input: drawing scenarios costs more than checking them.
@given(scenarios())
def test_invariants(scenario: Scenario) -> None:
    chosen = plan_dispatch(scenario.queues, scenario.occupancy, scenario.limits)
    result = outcome(scenario, chosen)
    check_known_jobs_once_each_services_in_order(scenario, chosen)
    check_service_limit(scenario, result)
    check_user_quota(scenario, result)
    check_prefix_of_each_queue(scenario, result)
    check_work_conserving(scenario, result)
    check_max_min_fair(scenario, result)


def check_known_jobs_once_each_services_in_order(scenario: Scenario, chosen: list[int]) -> None:
    owner = owners(scenario.queues)
    assert len(set(chosen)) == len(chosen)
    services = [owner[job][0] for job in chosen]
    assert all(service in scenario.limits for service in services)
    assert services == sorted(services)


def check_service_limit(scenario: Scenario, result: Outcome) -> None:
    started: Counter[str] = Counter()
    for (service, _), jobs in result.chosen.items():
        started[service] += len(jobs)
    for service, count in started.items():
        if count:
            active = scenario.occupancy.per_service.get(service, 0)
            assert count + active <= scenario.limits[service].max_runs


def check_user_quota(scenario: Scenario, result: Outcome) -> None:
    for (service, user), jobs in result.chosen.items():
        if jobs:
            limits = scenario.limits[service]
            assert result.active[service, user] + len(jobs) <= limits.runs_per_user


def check_prefix_of_each_queue(scenario: Scenario, result: Outcome) -> None:
    for queue in scenario.queues:
        jobs = result.chosen[queue.service, queue.user_id]
        assert tuple(jobs) == queue.job_ids[: len(jobs)]


def check_work_conserving(scenario: Scenario, result: Outcome) -> None:
    """While a service has a free slot, nobody with quota to spare is left waiting."""
    for service, limits in scenario.limits.items():
        started = sum(len(jobs) for (s, _), jobs in result.chosen.items() if s == service)
        if scenario.occupancy.per_service.get(service, 0) + started >= limits.max_runs:
            continue
        for (s, user), waiting in result.waiting.items():
            if s == service and waiting:
                assert result.final(s, user) >= limits.runs_per_user, f"user {user} left waiting"


def check_max_min_fair(scenario: Scenario, result: Outcome) -> None:
    """A user left waiting with quota to spare holds at most one slot fewer than anyone served
    in this decision: a served user can only be further ahead if it was ahead before."""
    for (service, user), waiting in result.waiting.items():
        limits = scenario.limits.get(service)
        if limits is None or not waiting or result.final(service, user) >= limits.runs_per_user:
            continue
        for (other_service, other), jobs in result.chosen.items():
            if other_service == service and jobs:
                assert result.final(service, other) <= result.final(service, user) + 1


@st.composite
def submissions(draw: st.DrawFn) -> list[list[int]]:
    """Per tick, the users who submit one job each (in that order) before the decision."""
    users = draw(st.integers(2, 5))
    ticks = draw(st.integers(1, 40))
    return draw(
        st.lists(st.lists(st.integers(1, users), max_size=6), min_size=ticks, max_size=ticks)
    )


@given(submissions(), st.integers(1, 3))
def test_rotation_over_many_ticks(arrivals: list[list[int]], quota: int) -> None:
    """MAX_RUNS=1 and one slot freed per tick, with turns stamped as the store does on claim:
    a user's next dispatch comes only after every other user with a queued job got one."""
    queued: dict[int, list[int]] = {}
    owner: dict[int, int] = {}
    turns: dict[int, int] = {}
    dispatched: list[int] = []  # user of each dispatch, in order
    previous: dict[int, int] = {}  # user -> index of its latest dispatch in `dispatched`
    drain = sum(len(tick) for tick in arrivals)
    for arriving in [*arrivals, *([[]] * drain)]:
        for user in arriving:
            owner[len(owner) + 1] = user
            queued.setdefault(user, []).append(len(owner))
        queues = [
            UserQueue(SVC, user, tuple(jobs[:quota]), turns.get(user))
            for user, jobs in queued.items()
            if jobs
        ]
        chosen = plan_dispatch(queues, occupancy({}), {SVC: ServiceLimits(quota, 1)})
        assert len(chosen) == min(1, len(queues))
        if not chosen:
            continue
        user = owner[chosen[0]]
        assert queued[user].pop(0) == chosen[0]
        waiting = {other for other, jobs in queued.items() if jobs and other != user}
        if user in previous:
            skipped = waiting - set(dispatched[previous[user] + 1 :])
            assert not skipped, f"user {user} served again before {sorted(skipped)}"
        previous[user] = len(dispatched)
        dispatched.append(user)
        turns[user] = len(dispatched)
    assert not any(queued.values())


@given(scenarios(), st.integers(0, 2**32))
def test_input_order_does_not_matter(scenario: Scenario, seed: int) -> None:
    rng = random.Random(seed)
    expected = plan_dispatch(scenario.queues, scenario.occupancy, scenario.limits)
    per_user = list(scenario.occupancy.per_user.items())
    shuffled = Occupancy(
        per_user=dict(rng.sample(per_user, len(per_user))),
        per_service=scenario.occupancy.per_service,
    )
    queues = rng.sample(scenario.queues, len(scenario.queues))
    assert plan_dispatch(queues, shuffled, scenario.limits) == expected


# --- simulation -------------------------------------------------------------------------------


def submission_order(layout: str) -> dict[int, list[int]]:
    """Job ids of 4 users x 50 jobs, oldest first, for three ways of submitting them."""
    if layout == "one user after the other":
        owner_of = [job // 50 for job in range(200)]
    elif layout == "interleaved":
        owner_of = [job % 4 for job in range(200)]
    else:
        owner_of = random.Random(layout).sample([job // 50 for job in range(200)], 200)
    jobs: dict[int, list[int]] = {user: [] for user in range(4)}
    for job, user in enumerate(owner_of):
        jobs[user].append(job)
    return jobs


@pytest.mark.parametrize("layout", ["one user after the other", "interleaved", "random 1", "rnd 2"])
def test_simulation_interleaves_users(layout: str) -> None:
    limits = ServiceLimits(runs_per_user=2, max_runs=4)
    queued = submission_order(layout)
    owner = {job: user for user, jobs in queued.items() for job in jobs}
    running: list[int] = []  # in start order, so the oldest is first
    started_by: list[int] = []
    turns: dict[int, int] = {}  # as the store stamps them on claim

    while len(started_by) < 200:
        counts = Counter(owner[job] for job in running)
        queues = [
            UserQueue(SVC, user, tuple(jobs[:2]), turns.get(user))
            for user, jobs in queued.items()
            if jobs
        ]
        now = occupancy({(SVC, user): count for user, count in counts.items()})
        chosen = plan_dispatch(queues, now, {SVC: limits})
        assert chosen or running, "nothing running and nothing started: stuck"
        for job in chosen:
            assert queued[owner[job]].pop(0) == job
        running.extend(chosen)
        started_by.extend(owner[job] for job in chosen)
        turns.update(
            (owner[job], len(started_by) - len(chosen) + n) for n, job in enumerate(chosen)
        )
        assert len(running) <= limits.max_runs
        assert max(Counter(owner[job] for job in running).values()) <= limits.runs_per_user
        running.pop(0)

    for start in range(len(started_by) - 8 + 1):
        assert set(started_by[start : start + 8]) == {0, 1, 2, 3}, f"window at {start}"


def test_assign_nodes_fills_the_freest_node_first_counting_each_pick() -> None:
    placement = Placement((NodeSlot("a", 2, 0.0), NodeSlot("b", 2, 0.0)))
    before = {"a": 1}
    assert assign_nodes([7, 8, 9], before, placement) == {7: "b", 8: "a", 9: "b"}
    assert before == {"a": 1}  # the caller's counts are not changed


def test_assign_nodes_breaks_ties_by_load_and_stops_at_the_bound() -> None:
    placement = Placement((NodeSlot("a", None, 80.0), NodeSlot("b", None, 10.0)), at_most=1)
    assert assign_nodes([7, 8, 9], {}, placement) == {7: "b"}


def test_assign_nodes_without_nodes_assigns_nothing() -> None:
    assert assign_nodes([7, 8], {}, Placement(())) == {}
