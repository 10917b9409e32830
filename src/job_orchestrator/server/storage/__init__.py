"""Server storage: the Store interface and its SQL implementation (SQLite today)."""

from __future__ import annotations

from job_orchestrator.server.storage.base import JobRecord, Store
from job_orchestrator.server.storage.changes import KEEP, NO_CHANGES, JobChanges
from job_orchestrator.server.storage.sql import SqlStore, open_store

__all__ = ["KEEP", "NO_CHANGES", "JobChanges", "JobRecord", "SqlStore", "Store", "open_store"]
