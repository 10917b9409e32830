"""How rows of the jobs table become JobRecords (shared by the Store and its dispatch)."""

from __future__ import annotations

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
        owner=row.owner,
    )
