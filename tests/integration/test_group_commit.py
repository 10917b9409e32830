"""Group commit on SQLite (storage/backend.py SqliteThread): units queued together share one
transaction, each in its own savepoint, and their callers hear back only after the commit.

SQLite only, not in the contract suite: PostgreSQL and MemoryStore have no batches to share."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from job_orchestrator.errors import StoreError, StoreUnavailableError
from job_orchestrator.server.storage import open_store
from job_orchestrator.server.storage.backend import SqliteThread, open_backend
from job_orchestrator.server.storage.changes import JobChanges
from job_orchestrator.status import Status

NOTES = sa.text("CREATE TABLE notes (name TEXT PRIMARY KEY)")


class UnitFailedError(Exception):
    pass


def committed_notes(path: Path) -> set[str]:
    """What another connection (another process) sees: committed rows only."""
    with sqlite3.connect(path) as reader:
        return {row[0] for row in reader.execute("SELECT name FROM notes")}


async def sqlite_backend(path: Path) -> SqliteThread:
    backend, _listen = await open_backend(str(path))
    assert isinstance(backend, SqliteThread)
    await backend.run(lambda connection: connection.execute(NOTES))
    return backend


async def hold(backend: SqliteThread) -> tuple[asyncio.Future[None], threading.Event]:
    """Keep the store thread busy until the event is set: units queued meanwhile make up
    its next batch."""
    started, release = threading.Event(), threading.Event()

    def wait(_connection: Connection) -> None:
        started.set()
        release.wait(10)

    holding = asyncio.ensure_future(backend.run(wait))
    assert await asyncio.to_thread(started.wait, 10)
    return holding, release


def add(name: str, *, fail: bool = False) -> Callable[[Connection], str]:
    def work(connection: Connection) -> str:
        connection.execute(sa.text("INSERT INTO notes VALUES (:name)"), {"name": name})
        if fail:
            raise UnitFailedError(name)
        return name

    return work


async def test_a_failing_unit_rolls_back_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    backend = await sqlite_backend(path)
    try:
        commits = backend.commits
        holding, release = await hold(backend)
        units = [
            asyncio.ensure_future(backend.run(add("a"))),
            asyncio.ensure_future(backend.run(add("b", fail=True))),
            asyncio.ensure_future(backend.run(add("a"))),  # duplicate
            asyncio.ensure_future(backend.run(add("c"))),
        ]
        await asyncio.sleep(0)  # one turn of the loop: each has queued its unit
        release.set()
        await holding
        seen_at_answer: dict[int, set[str]] = {}
        outcomes: list[object] = []
        for index, unit in enumerate(units):
            try:
                outcomes.append(await unit)
            except Exception as error:
                outcomes.append(error)
            seen_at_answer[index] = committed_notes(path)
        assert outcomes[0] == "a"
        assert isinstance(outcomes[1], UnitFailedError)  # its own exception, not the batch's
        assert isinstance(outcomes[2], sa.exc.IntegrityError)  # the database's refusal
        assert outcomes[3] == "c"
        # One commit for the whole batch (and one for `hold`), seen by another connection
        # before any answer.
        assert backend.commits == commits + 2
        assert all(seen == {"a", "c"} for seen in seen_at_answer.values())
    finally:
        await backend.close()


async def test_results_are_answered_only_after_the_commit(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    backend = await sqlite_backend(path)
    try:
        answered_before_commit: list[bool] = []
        holding, release = await hold(backend)
        first = asyncio.ensure_future(backend.run(add("first")))

        def look(_connection: Connection) -> None:
            # In the same batch, after `first` ran: not committed, so nobody heard back yet.
            answered_before_commit.append(first.done() or "first" in committed_notes(path))

        second = asyncio.ensure_future(backend.run(look))
        await asyncio.sleep(0)  # one turn of the loop: each has queued its unit
        release.set()
        await asyncio.gather(holding, first, second)
        assert answered_before_commit == [False]
        assert committed_notes(path) == {"first"}
    finally:
        await backend.close()


async def test_close_runs_every_accepted_unit_then_refuses(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    backend = await sqlite_backend(path)
    units = [asyncio.ensure_future(backend.run(add(f"n{i}"))) for i in range(20)]
    await asyncio.sleep(0)  # each has queued its unit
    await backend.close()
    assert sorted(await asyncio.gather(*units)) == sorted(f"n{i}" for i in range(20))
    assert committed_notes(path) == {f"n{i}" for i in range(20)}
    with pytest.raises(StoreUnavailableError):
        await backend.run(add("late"))


async def test_concurrent_store_calls_with_one_bad_one(tmp_path: Path) -> None:
    """Through the Store: a call that fails (a value the database cannot take) among many at
    once fails alone, with a StoreError; the others all take effect."""
    store = await open_store(str(tmp_path / "db.sqlite"))
    try:
        ids = [
            await store.create_job(user_id=1, service="example", loc=f"/j{i}") for i in range(30)
        ]
        calls = [store.transition(job_id, [Status.QUEUED], Status.PROCESSING) for job_id in ids]
        unbindable = JobChanges(dest_id=cast(int, object()))
        calls.insert(7, store.transition(ids[0], [Status.QUEUED], changes=unbindable))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(outcomes.pop(7), StoreError)
        assert outcomes == [True] * 30
        for job_id in ids:
            job = await store.get_job(job_id)
            assert job is not None
            assert job.status is Status.PROCESSING
    finally:
        await store.close()
