"""How rows of the jobs table become JobRecords (shared by the Store and its dispatch)."""

from __future__ import annotations

import datetime
from typing import Any

from job_orchestrator.server.storage.base import JobRecord
from job_orchestrator.status import Status


def job_record(row: Any) -> JobRecord:
    return JobRecord(
        id=row.id,
        user_id=row.user_id,
        service=row.service,
        status=Status.from_db(row.status),
        loc=row.loc,
        dest_id=row.dest_id or 0,
        message=row.message or "",
        node=row.node,
        dispatch_key=row.dispatch_key,
        attempts=row.attempts or 0,
        not_before=row.not_before,
        failing_since=row.failing_since,
        queued_at=row.queued_at,
        dispatched_at=row.dispatched_at,
        finished_at=row.finished_at,
        created_at=row.queued_at if row.queued_at is not None else _timestamp(row.created_at),
        started_at=row.started_at,
        exit_code=row.exit_code,
        owner=row.owner,
        token_name=row.token_name,
    )


def _timestamp(value: datetime.datetime | None) -> float | None:
    """The original's created_at column: CURRENT_TIMESTAMP, which is UTC, without a zone."""
    if value is None:
        return None
    return value.replace(tzinfo=datetime.UTC).timestamp()
