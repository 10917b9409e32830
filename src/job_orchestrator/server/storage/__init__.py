"""Server storage: the Store interface and its implementations (SQL: SQLite and PostgreSQL;
memory: a double for tests)."""

from __future__ import annotations

from job_orchestrator.server.storage.base import JobRecord, ServerStore, Store, StoreViews
from job_orchestrator.server.storage.sql import SqlStore, open_store

__all__ = ["JobRecord", "ServerStore", "SqlStore", "Store", "StoreViews", "open_store"]
