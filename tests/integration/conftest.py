"""The Store fixtures (SQLite and PostgreSQL backends, testkit.stores) for every module here."""

from testkit.stores import db_url, pg_database, reopen, store

__all__ = ["db_url", "pg_database", "reopen", "store"]
