"""The Store fixtures (MemoryStore, SQLite and PostgreSQL: testkit.stores) for every module
here."""

from testkit.stores import backend, db_url, pg_database, reopen, sql_url, store

__all__ = ["backend", "db_url", "pg_database", "reopen", "sql_url", "store"]
