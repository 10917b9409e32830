"""Real PostgreSQL for the tests: a fresh database per test, or a private instance.

Where PostgreSQL is unreachable the test skips, or fails when `CI=true` (`.ci/run` starts it).

`fresh_database` creates a database on the shared cluster (127.0.0.1:5432, user postgres,
trust auth) and drops it afterwards. `PrivateInstance` runs a PostgreSQL of its own (initdb +
pg_ctl in a temporary directory, on a free port), for tests that stop or restart it without
disturbing anyone else's tests on the shared cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from testkit.harness import free_port
from testkit.prerequisites import unavailable

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def database_url(port: int, database: str) -> str:
    return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{port}/{database}"


async def admin(port: int, statement: str, database: str = "postgres") -> None:
    """Run one statement as the superuser (CREATE DATABASE cannot run in a transaction)."""
    connection = await asyncpg.connect(
        user=PG_USER, host=PG_HOST, port=port, database=database, timeout=5
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def fresh_database(port: int = PG_PORT) -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database, dropped at the end."""
    name = f"jo_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(admin(port, f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        unavailable(
            f"PostgreSQL not reachable as {PG_USER}@{PG_HOST}:{port} (trust auth expected): "
            f"{error!r}"
        )
    try:
        yield database_url(port, name)
    finally:
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            asyncio.run(admin(port, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class PrivateInstance:
    """A PostgreSQL server of this test alone, run as the postgres user when we are root."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: its parents are private to root, and the postgres
        # user must reach this directory.
        self.root = Path(tempfile.mkdtemp(prefix="jo-test-pg-"))
        self.data = self.root / "pgdata"
        self.port = free_port()
        self.log = self.root / "postgres.log"

    def _run(self, *command: str) -> None:
        as_postgres = os.geteuid() == 0
        subprocess.run(
            list(command),
            check=True,
            capture_output=True,
            user="postgres" if as_postgres else None,
            cwd=self.root,
        )

    def init(self) -> None:
        if not (PG_BIN / "initdb").exists():
            unavailable(f"PostgreSQL 15 binaries not installed in {PG_BIN}")
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            shutil.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", PG_USER, "-A", "trust")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses={PG_HOST} -k {self.root} -c fsync=off"
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", options, "-w", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs, and delete its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return database_url(self.port, database)

    def create_database(self, name: str) -> str:
        asyncio.run(admin(self.port, f'CREATE DATABASE "{name}"'))
        return self.url(name)
