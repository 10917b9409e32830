"""Server storage: the Store interface (and its read views) and its implementations: SQL
(SQLite, PostgreSQL) and memory (a double for tests of the engine)."""

from __future__ import annotations

from job_orchestrator.server.storage.base import JobRecord, ServerStore, Store, StoreViews
from job_orchestrator.server.storage.changes import KEEP, NO_CHANGES, JobChanges
from job_orchestrator.server.storage.memory import MemoryDatabase, MemoryStore
from job_orchestrator.server.storage.sql import SqlStore, open_store

__all__ = [
    "KEEP",
    "NO_CHANGES",
    "JobChanges",
    "JobRecord",
    "MemoryDatabase",
    "MemoryStore",
    "ServerStore",
    "SqlStore",
    "Store",
    "StoreViews",
    "open_store",
]
