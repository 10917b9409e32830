"""The store fixtures of test_store.py (MemoryStore, SQLite and PostgreSQL) for every module
here."""

from tests.integration.test_store import backend, db_url, pg_database, reopen, sql_url, store

__all__ = ["backend", "db_url", "pg_database", "reopen", "sql_url", "store"]
