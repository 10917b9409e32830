"""The store fixtures of test_store.py (SQLite and PostgreSQL backends) for every module here."""

from tests.integration.test_store import db_url, pg_database, reopen, store

__all__ = ["db_url", "pg_database", "reopen", "store"]
