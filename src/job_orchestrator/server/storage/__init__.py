"""Server storage: the Store interface and its SQL implementation (SQLite today)."""

from __future__ import annotations

from job_orchestrator.server.storage.base import JobRecord, Store
from job_orchestrator.server.storage.sql import SqlStore, open_store

__all__ = ["JobRecord", "SqlStore", "Store", "open_store"]
