"""One status channel per client (server/feeds.py), in the engine tier: the server follows
every payload on a client through that client's change feed, so what it sends grows with
clients, not with running jobs; a client without a feed is followed per job, as before; and
the feed never renews the lease of a payload this server gave up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from job_orchestrator.status import Status
from tests.engine.engines import Engine, let_time_pass, running, until
from tests.engine.fake_nodes import FakeNode, FakePayload, completes, waits

pytestmark = [pytest.mark.timeout(60), pytest.mark.looptime]

JOBS = 60
#: Ten long-polls of LONG_POLL (25 s) each: a per-job follower asks ten times in this span.
SPAN_S = 250.0


async def start_jobs(engine: Engine, count: int) -> list[int]:
    job_ids = [await engine.upload(user_id=user) for user in range(1, count + 1)]

    async def all_running() -> bool:
        jobs = [await engine.job(job_id) for job_id in job_ids]
        return all(job.status is Status.RUNNING for job in jobs)

    await until(all_running, within_s=120)
    return job_ids


def finish_all(*nodes: FakeNode) -> None:
    for node in nodes:
        for payload in node.running():
            node.finish(payload.id, Status.COMPLETED, {"out.txt": b"done"})


def calls(engine: Engine, call: str) -> int:
    return sum(node.calls[call] for node in engine.nodes.nodes.values())


async def test_running_jobs_cost_the_server_requests_per_client_not_per_job(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, script=None, SERVICE_EXAMPLE_MAX_RUNS="1000") as engine:
        job_ids = await start_jobs(engine, JOBS)
        retrieves, feeds = calls(engine, "retrieve"), calls(engine, "changes")
        await let_time_pass(SPAN_S)
        # Nothing per job while they run: each was asked about by id once, when its
        # following began; the feeds' requests are a few per client, whatever the jobs.
        assert calls(engine, "retrieve") == retrieves == JOBS
        fed = calls(engine, "changes") - feeds
        assert 0 < fed <= 2 * (SPAN_S / 25 + 1)
        finish_all(engine.node_a, engine.node_b)
        for job_id in job_ids:
            job = await engine.final(job_id, timeout_s=60)
            assert job.status is Status.COMPLETED, job
        # Each result fetched once, by id: two requests per job in all.
        assert calls(engine, "retrieve") == 2 * JOBS


async def test_a_client_without_a_feed_is_followed_per_job(tmp_path: Path) -> None:
    async with running(tmp_path, script=None, SERVICE_EXAMPLE_MAX_RUNS="1000") as engine:
        engine.node_a.feed = engine.node_b.feed = False
        job_ids = await start_jobs(engine, 6)
        retrieves = calls(engine, "retrieve")
        await let_time_pass(SPAN_S)
        # The original's way: each job long-polls its client, again every LONG_POLL.
        assert calls(engine, "retrieve") - retrieves >= 6 * (SPAN_S / 25 - 1)
        finish_all(engine.node_a, engine.node_b)
        for job_id in job_ids:
            assert (await engine.final(job_id, timeout_s=60)).status is Status.COMPLETED


async def test_a_job_that_ends_at_once_is_collected_through_the_feed(tmp_path: Path) -> None:
    async with running(tmp_path) as engine:  # every payload completes as it is taken
        job_ids = [await engine.upload(user_id=user) for user in range(1, 11)]
        for job_id in job_ids:
            job = await engine.final(job_id, timeout_s=60)
            assert job.status is Status.COMPLETED, job
        assert calls(engine, "retrieve") <= 2 * len(job_ids)


async def test_the_feed_kills_what_was_revoked_before_it_renews_anything(
    tmp_path: Path,
) -> None:
    """A job failed over while its node was down must not start there when the node comes
    back: the node's feed renews the leases of what this server holds, so the revoked
    payload is killed before the first /changes after the outage. (A job still running
    there keeps the feed wanted.)"""
    async with running(tmp_path, script=first_waits) as engine:
        engine.node_b.script = completes
        engine.node_b.down = True  # both jobs go to node a: the first waits, the second runs
        waiting_id = await engine.upload(user_id=1)
        await until(lambda: has_payload(engine.node_a), within_s=30)
        running_id = await engine.upload(user_id=2)
        await until(lambda: job_is(engine, running_id, Status.RUNNING), within_s=30)
        waiting = engine.node_a.payloads[1]
        engine.node_a.down, engine.node_b.down = True, False
        await until(lambda: moved_to(engine, waiting_id), within_s=300)
        back_at = len(engine.node_a.history)
        # A slow kill: the first health check finds the node up and is still killing.
        engine.node_a.kill_takes_s = 20.0
        engine.node_a.down = False
        await until(lambda: killed(engine.node_a), within_s=120)
        await let_time_pass(30)
        after = [call for call, _ in engine.node_a.history[back_at:]]
        assert "changes" in after, after
        assert after.index("killed") < after.index("changes"), after
        assert not waiting.started
        # The running job was followed on through the outage and ends there.
        engine.node_a.finish(2, Status.COMPLETED, {"out.txt": b"done"})
        assert (await engine.final(running_id, timeout_s=60)).status is Status.COMPLETED


def first_waits(node: FakeNode, payload: FakePayload) -> None:
    """The node's first payload waits for a slot; the others run."""
    if payload.id == 1:
        waits(node, payload)


async def job_is(engine: Engine, job_id: int, status: Status) -> bool:
    return (await engine.job(job_id)).status is status


async def has_payload(node: FakeNode) -> bool:
    return bool(node.payloads)


async def killed(node: FakeNode) -> bool:
    return any(p.status is Status.KILLED for p in node.payloads.values())


async def moved_to(engine: Engine, job_id: int) -> bool:
    job = await engine.job(job_id)
    return job.node == engine.node_b.url
