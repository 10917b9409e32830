"""PostgreSQL's backend (storage/postgres_backend.py): group commit of writes, each caller's
own outcome, answers only after the commit, and connections the database closed replaced at
checkout without a pre-ping's round trips.

Real PostgreSQL: a fresh database on the shared cluster per test (testkit/pg.py)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from job_orchestrator.errors import StoreError, StoreUnavailableError
from job_orchestrator.server.storage import open_store
from job_orchestrator.server.storage._notify import CHECK_INTERVAL_S, announce
from job_orchestrator.server.storage._unit import PreparedRead
from job_orchestrator.server.storage.backend import open_backend
from job_orchestrator.server.storage.postgres_backend import WRITERS, PostgresBackend
from job_orchestrator.status import Status
from testkit.pg import PG_HOST, PG_PORT, PG_USER, fresh_database
from testkit.waiting import eventually_async
from tests.integration.test_group_commit import UnitFailedError, add
from tests.moves import move_to

pytestmark = pytest.mark.postgres

NOTES = sa.text("CREATE TABLE notes (name TEXT PRIMARY KEY)")


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
async def backend(database: str) -> AsyncIterator[PostgresBackend]:
    opened, _listen = await open_backend(database)
    assert isinstance(opened, PostgresBackend)
    await opened.run(lambda connection: connection.execute(NOTES))
    yield opened
    await opened.close()


async def committed_notes(database: str) -> set[str]:
    """What another connection sees: committed rows only."""
    name = database.rsplit("/", 1)[1]
    reader = await asyncpg.connect(user=PG_USER, host=PG_HOST, port=PG_PORT, database=name)
    try:
        return {row[0] for row in await reader.fetch("SELECT name FROM notes")}
    finally:
        await reader.close()


async def test_units_queued_together_share_one_commit(
    backend: PostgresBackend, database: str
) -> None:
    commits = backend.commits
    names = [f"n{i}" for i in range(20)]
    # Queued in one turn of the loop, before the writer runs: one batch.
    assert await asyncio.gather(*(backend.run(add(name)) for name in names)) == names
    assert backend.commits == commits + 1
    assert await committed_notes(database) == set(names)


async def test_a_failing_unit_fails_alone_with_its_own_exception(
    backend: PostgresBackend, database: str
) -> None:
    outcomes = await asyncio.gather(
        backend.run(add("a")),
        backend.run(add("b", fail=True)),
        backend.run(add("a")),  # duplicate: the database refuses it
        backend.run(add("c")),
        return_exceptions=True,
    )
    assert outcomes[0] == "a"
    assert isinstance(outcomes[1], UnitFailedError)
    assert isinstance(outcomes[2], sa.exc.IntegrityError)
    assert outcomes[3] == "c"
    assert await committed_notes(database) == {"a", "c"}


async def test_results_are_answered_only_after_the_commit(
    backend: PostgresBackend, database: str
) -> None:
    first = asyncio.ensure_future(backend.run(add("first")))
    seen_in_batch: list[tuple[int, bool]] = []

    def look(connection: Connection) -> None:
        # In the same transaction, after `first` ran: its row is there, but not committed,
        # so its caller has not heard back yet.
        rows = connection.execute(sa.text("SELECT count(*) FROM notes")).scalar_one()
        seen_in_batch.append((rows, first.done()))

    await asyncio.gather(first, backend.run(look))
    assert seen_in_batch == [(1, False)]
    assert await committed_notes(database) == {"first"}


async def test_a_caller_cancelled_while_queued_is_skipped(
    backend: PostgresBackend, database: str
) -> None:
    kept = asyncio.ensure_future(backend.run(add("kept")))
    dropped = asyncio.ensure_future(backend.run(add("dropped")))
    await asyncio.sleep(0)  # both queued; the writer has not taken them yet
    dropped.cancel()
    assert await kept == "kept"
    assert await committed_notes(database) == {"kept"}


async def test_close_runs_every_accepted_unit_then_refuses(database: str) -> None:
    backend, _listen = await open_backend(database)
    await backend.run(lambda connection: connection.execute(NOTES))
    units = [asyncio.ensure_future(backend.run(add(f"n{i}"))) for i in range(20)]
    await asyncio.sleep(0)  # each has queued its unit
    await backend.close()
    assert sorted(await asyncio.gather(*units)) == sorted(f"n{i}" for i in range(20))
    assert await committed_notes(database) == {f"n{i}" for i in range(20)}
    with pytest.raises(StoreUnavailableError):
        await backend.run(add("late"))


async def test_a_unit_run_alone_does_not_wait_for_the_writers(
    backend: PostgresBackend, database: str
) -> None:
    """Every writer is held (each batch waits for a row another session is inserting); a unit
    run alone (a dispatch decision) commits meanwhile, in a transaction of its own."""
    name = database.rsplit("/", 1)[1]
    holder = await asyncpg.connect(user=PG_USER, host=PG_HOST, port=PG_PORT, database=name)
    held = holder.transaction()
    await held.start()
    await holder.execute("INSERT INTO notes VALUES ('held')")
    blocked = []
    try:
        for count in range(1, WRITERS + 1):
            blocked.append(asyncio.ensure_future(backend.run(add("held"))))

            async def waiting(count: int = count) -> bool:
                return await holder_waits(database) >= count

            # One batch per writer: the next unit is queued once this one waits.
            await eventually_async(waiting, f"{count} writers waiting for the held row")
        # A hang guard, not a timing goal: queued behind the writers, it would never return.
        assert await asyncio.wait_for(backend.run(add("alone"), alone=True), 30) == "alone"
        assert "alone" in await committed_notes(database)
        assert not any(unit.done() for unit in blocked)
    finally:
        await held.rollback()
        await holder.close()
        outcomes = await asyncio.gather(*blocked, return_exceptions=True)
    assert outcomes.count("held") == 1  # the others found it inserted
    assert await committed_notes(database) == {"held", "alone"}


async def holder_waits(database: str) -> int:
    """How many of the database's sessions wait for a lock."""
    name = database.rsplit("/", 1)[1]
    admin = await asyncpg.connect(user=PG_USER, host=PG_HOST, port=PG_PORT, database="postgres")
    try:
        return int(
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND wait_event_type = 'Lock'",
                name,
            )
        )
    finally:
        await admin.close()


async def test_a_prepared_read_answers_by_name_and_by_position(backend: PostgresBackend) -> None:
    await backend.run(add("a"))
    await backend.run(add("b"))
    rows = await backend.fetch(NAMES_AFTER, {"after": "a"})
    assert [(row.name, row[0], *row) for row in rows] == [("b", "b", "b")]
    assert await backend.fetch(NAMES_AFTER, {"after": "b"}) == []


async def test_connections_the_database_closed_are_replaced(
    backend: PostgresBackend, database: str
) -> None:
    """Without a pre-ping: asyncpg saw the sockets close, so each pool connects anew instead
    of failing the next unit."""
    sleep = sa.text("SELECT pg_sleep(0.05)")
    await asyncio.gather(*(backend.fetch(sleep) for _ in range(3)))  # pooled now
    await asyncio.gather(*(backend.fetch(NAMES_AFTER, {"after": ""}) for _ in range(3)))
    name = database.rsplit("/", 1)[1]
    admin = await asyncpg.connect(user=PG_USER, host=PG_HOST, port=PG_PORT, database="postgres")
    try:
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
            name,
        )
    finally:
        await admin.close()
    assert ended >= 2
    await asyncio.sleep(0.5)  # the loop reads each closed socket's end
    assert await backend.fetch(sa.text("SELECT 1")) == [(1,)]
    assert await backend.run(add("after")) == "after"
    assert [row.name for row in await backend.fetch(NAMES_AFTER, {"after": ""})] == ["after"]
    assert await committed_notes(database) == {"after"}


async def test_a_read_the_database_refuses_is_a_store_error(backend: PostgresBackend) -> None:
    with pytest.raises(StoreError):
        await backend.fetch(PreparedRead(sa.select(sa.column("nothing")).select_from(NOWHERE)))


async def test_a_batch_announces_each_channel_and_payload_once_at_commit(
    backend: PostgresBackend, database: str
) -> None:
    heard: list[tuple[str, str]] = []
    name = database.rsplit("/", 1)[1]
    listener = await asyncpg.connect(user=PG_USER, host=PG_HOST, port=PG_PORT, database=name)
    try:
        for channel in ("wake", "done"):
            await listener.add_listener(
                channel, lambda _c, _p, ch, payload: heard.append((ch, payload))
            )

        def announcing(payload: str, *, fail: bool = False) -> Callable[[Connection], None]:
            def work(connection: Connection) -> None:
                announce(connection, "wake")
                announce(connection, "done", payload)
                if fail:
                    raise UnitFailedError(payload)

            return work

        outcomes = await asyncio.gather(
            backend.run(announcing("1")),
            backend.run(announcing("2", fail=True)),  # rolled back: never announced
            backend.run(announcing("1")),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], UnitFailedError)
        for _ in range(50):
            if len(heard) >= 3:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # nothing more comes
    finally:
        await listener.close()
    # The batch failed and ran again unit by unit: one commit each for "1" and "1" again.
    assert sorted(heard) == sorted([("wake", ""), ("done", "1")] * 2)


async def test_round_trips_count_each_request_to_the_database(database: str) -> None:
    """Store.round_trips (/metrics, the bench's replicas case): a hot read is one request, a
    lone unit of one statement three (BEGIN, the statement, COMMIT)."""
    store = await open_store(database)
    try:
        # No job: nothing changes, so no wake-up for the other replicas is sent meanwhile.
        before = store.round_trips()
        assert await store.get_job(404) is None
        assert store.round_trips() == before + 1
        assert not await store.transition(404, [Status.QUEUED], Status.PROCESSING)
        assert store.round_trips() == before + 4
    finally:
        await store.close()


async def test_moves_of_one_shape_in_a_batch_run_as_one_statement(database: str) -> None:
    """storage/_move.py: each caller is still told whether its own row moved (a job moved
    away meanwhile, or moved twice in the batch, is not), its own row when it asked for it,
    and each job that moved is announced to the other replicas."""
    store, other = await open_store(database), await open_store(database)
    heard: list[int] = []
    try:
        other.on_final(heard.append)
        other.subscribe(lambda: None)
        job_ids = [await store.create_job(user_id=1, service="svc", loc=f"/{n}") for n in range(20)]
        taken = job_ids[::2]
        for job_id in taken:
            assert await store.transition(job_id, [Status.QUEUED], Status.PROCESSING)
        await asyncio.sleep(0.5)  # the listener is in place, and nothing is pending
        before = store.round_trips()
        # Queued in one turn of the loop: one writer's batch holds them all.
        kills = [store.transition(job_id, [Status.QUEUED], Status.KILLED) for job_id in job_ids]
        again = store.transition(job_ids[1], [Status.QUEUED], Status.KILLED)
        rows = [
            store.transition_returning(job_id, [Status.PROCESSING], Status.FAILED)
            for job_id in taken
        ]
        outcomes = await asyncio.gather(*kills, again, *rows)
        killed, killed_again = outcomes[: len(kills)], outcomes[len(kills)]
        failed = outcomes[len(kills) + 1 :]
        round_trips = store.round_trips() - before
        assert killed == [job_id not in taken for job_id in job_ids]
        assert killed_again is False  # the batch's second move of that row came after
        assert [record.id if record else None for record in failed] == taken
        assert all(record and record.status is Status.FAILED for record in failed)
        # 31 moves of 2 shapes, a row twice, one batch: BEGIN, a statement per shape, one
        # more for the row moved twice, COMMIT, and the announcements' NOTIFY after it (sent
        # by now or not). Not 31 statements.
        assert round_trips in (5, 6), round_trips
        await eventually_async(
            lambda: asyncio.sleep(0, len(heard) >= len(job_ids)), "every final job announced"
        )
        assert sorted(heard) == sorted(job_ids)
    finally:
        await store.close()
        await other.close()


async def test_new_jobs_of_a_batch_run_as_one_statement(database: str) -> None:
    """storage/_service_users.py NewJob: each upload gets its own job (by its loc), a new user
    is made known with the least of its new jobs' ids, a known one keeps its row, and a job
    with a callback or a queue limit still runs alone in the same batch."""
    store = await open_store(database)
    try:
        known = await store.create_job(user_id=1, service="svc", loc="/known")
        await asyncio.sleep(0.2)  # its announcement is sent: nothing pending
        before = store.round_trips()
        # Queued in one turn of the loop: one writer's batch holds them all.
        plain = [
            store.create_job(user_id=user, service="svc", loc=f"/{user}/{n}")
            for n in range(4)
            for user in (1, 2, 3)
        ]
        limited = store.create_job(user_id=4, service="svc", loc="/limited", queue_max=5)
        called = store.create_job(
            user_id=5, service="svc", loc="/called", callback_url="http://127.0.0.1:9/x"
        )
        *ids, limited_id, called_id = await asyncio.gather(*plain, limited, called)
        round_trips = store.round_trips() - before
        locs = [f"/{user}/{n}" for n in range(4) for user in (1, 2, 3)]
        for job_id, loc in zip(ids, locs, strict=True):
            record = await store.get_job(job_id)
            assert record is not None
            assert (record.loc, record.status) == (loc, Status.QUEUED)
        assert len({*ids, limited_id, called_id, known}) == len(ids) + 3
        # BEGIN, the 12 plain uploads in one statement, the limited one, the called one and
        # its callback row, COMMIT, the NOTIFY after it (sent by now or not). 18 before.
        assert round_trips in (6, 7), round_trips
        connection = await asyncpg.connect(database.replace("+asyncpg", ""))
        try:
            rows = await connection.fetch(
                "SELECT user_id, first_job_id FROM service_users WHERE service = 'svc'"
            )
        finally:
            await connection.close()
        first = {row["user_id"]: row["first_job_id"] for row in rows}
        assert first[1] == known
        for user in (2, 3):
            assert first[user] == min(ids[index] for index in range(user - 1, 12, 3))
        assert (first[4], first[5]) == (limited_id, called_id)
    finally:
        await store.close()


async def test_tls_settings_in_the_url_reach_every_connection(database: str) -> None:
    """`?ssl=` as SQLAlchemy takes it for asyncpg: the engine, the hot reads' pool and the
    listener all connect with it (asyncpg's DSN spells it `sslmode`)."""
    store, other = await open_store(f"{database}?ssl=disable"), await open_store(database)
    woken = asyncio.Event()
    try:
        store.subscribe(woken.set)
        await asyncio.wait_for(woken.wait(), 10)  # listening: it wakes once on connecting
        woken.clear()
        job_id = await store.create_job(user_id=1, service="svc", loc="/x")
        job = await store.get_job(job_id)  # a PreparedRead, on the asyncpg pool
        assert job is not None
        assert job.status is Status.QUEUED
        await other.create_job(user_id=1, service="svc", loc="/y")
        await asyncio.wait_for(woken.wait(), 10)  # the other's NOTIFY, heard
    finally:
        await store.close()
        await other.close()


async def test_a_replica_hears_the_others_announcements_not_its_own(database: str) -> None:
    """It acted on its own when it made them: heard again, each final job was read and its
    log copied from the client twice, and every new or final job woke its dispatch twice."""
    here, there = await open_store(database), await open_store(database)
    heard: dict[str, list[object]] = {"here": [], "there": []}
    try:
        for name, store in (("here", here), ("there", there)):
            store.on_final(functools.partial(heard[name].append))
            store.subscribe(functools.partial(heard[name].append, "wake"))
        await eventually_async(
            lambda: asyncio.sleep(0, heard["here"] and heard["there"]), "both to listen"
        )
        heard["here"].clear()
        heard["there"].clear()
        job_id = await here.create_job(user_id=1, service="svc", loc="/x")
        assert await move_to(here, job_id, Status.COMPLETED)
        await eventually_async(
            lambda: asyncio.sleep(0, job_id in heard["there"]), "the other replica to hear"
        )
        await asyncio.sleep(0.5)  # its own would have come by now
        assert heard["here"] == [job_id]  # the Store's own final listeners, called once
        # The other: the final job, and its dispatch woken (once or twice: announcements
        # waiting to be sent together are sent once).
        assert heard["there"].count(job_id) == 1
        assert set(heard["there"]) == {job_id, "wake"}
    finally:
        await here.close()
        await there.close()


async def test_one_replica_at_a_time_leads_dispatch(database: str) -> None:
    """The holder of a session lock on the listener's connection dispatches for every
    replica; when its connection ends (its process died or closed) another takes the lead
    at its next check, and is woken to decide at once."""
    first, second, bystander = [await open_store(database) for _ in range(3)]
    woken: dict[str, int] = {"first": 0, "second": 0}

    def wake(name: str) -> None:
        woken[name] += 1

    try:
        first.subscribe(functools.partial(wake, "first"))
        await eventually_async(lambda: asyncio.sleep(0, first.leads_dispatch()), "a leader")
        second.subscribe(functools.partial(wake, "second"))
        await eventually_async(lambda: asyncio.sleep(0, woken["second"]), "the second listens")
        await asyncio.sleep(CHECK_INTERVAL_S + 1)  # it has tried to lead since, in vain
        assert (first.leads_dispatch(), second.leads_dispatch()) == (True, False)
        assert bystander.leads_dispatch()  # it never subscribed: no wake-ups, no election
        before = woken["second"]
        await first.close()
        await eventually_async(
            lambda: asyncio.sleep(0, second.leads_dispatch()),
            "the second to lead",
            timeout_s=CHECK_INTERVAL_S * 5,
        )
        assert woken["second"] == before + 1
    finally:
        for store in (first, second, bystander):
            await store.close()


NAMES_AFTER = PreparedRead(
    sa.select(sa.column("name"))
    .select_from(sa.table("notes"))
    .where(sa.column("name") > sa.bindparam("after"))
    .order_by(sa.column("name"))
)
NOWHERE = sa.table("no_such_table")
