"""Running `job-orchestrator server | client | migrate`: logging, settings, uvicorn.

Imported only for those commands: the user commands (`submit`, `status`, ...) and the SDK
install without the server's dependencies (`pip install job-orchestrator`; the server is
the `server` extra), so nothing here may be imported by cli.py at module level.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from types import FrameType
from typing import Literal

import uvicorn
from fastapi import FastAPI

from job_orchestrator import __version__
from job_orchestrator._descriptors import raise_open_files_limit
from job_orchestrator._logging import (
    JsonFormatter,
    RedactingFormatter,
    display_url,
    environment_secrets,
    masked,
    settings_secrets,
)
from job_orchestrator.errors import ConfigError
from job_orchestrator.exposure import client_warnings, server_warnings

logger = logging.getLogger("job_orchestrator")

GRACEFUL_SHUTDOWN_S = 10


def _configure_logging(
    level: str, log_format: str = "text", secrets: set[str] | None = None
) -> None:
    """Log lines to stdout; `secrets` (default: those of the environment) masked in each."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    masked = environment_secrets(os.environ) if secrets is None else secrets
    for handler in logging.getLogger().handlers:
        inner = JsonFormatter() if log_format == "json" else handler.formatter
        handler.setFormatter(RedactingFormatter(inner or logging.Formatter(), masked))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # One line per server->client call would drown the log; failures are logged by us.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level)))


class DrainingServer(uvicorn.Server):
    """Tells the app the moment a stop signal arrives, before uvicorn waits for connections.

    Long-polling requests then answer at once instead of holding the graceful shutdown.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        draining: asyncio.Event | None = getattr(self._app.state, "draining", None)
        loop: asyncio.AbstractEventLoop | None = getattr(self._app.state, "loop", None)
        if draining is not None and loop is not None:
            loop.call_soon_threadsafe(draining.set)
        super().handle_exit(sig, frame)


def _engine_problem(settings: object) -> str | None:
    """With EXECUTOR=docker or podman: why the engine cannot be used, or None.

    An engine that does not answer at start is a missing dependency, like a missing sbatch
    (exit status 2); one that stops answering later only makes payloads wait Prepared.
    """
    executor = getattr(settings, "executor", "local")
    if executor not in ("docker", "podman"):
        return None
    from job_orchestrator.client.executors.engine import Engine, EngineError

    try:
        Engine(executor).ping_sync()
    except EngineError as error:
        return f"the {executor} engine does not answer: {error}"
    return None


def serve(command: Literal["server", "client", "migrate"]) -> int:
    from job_orchestrator.config import load_client_settings, load_server_settings

    # Logging first, so warnings about the configuration go to the log, not to stderr.
    _configure_logging("INFO")
    if command == "migrate":
        return _migrate()
    try:
        settings = load_server_settings() if command == "server" else load_client_settings()
    except ConfigError as error:
        reason = masked(str(error), environment_secrets(os.environ))
        print(f"job-orchestrator: invalid setting {reason}", file=sys.stderr)
        return 2
    if command == "client" and (problem := _engine_problem(settings)) is not None:
        print(f"job-orchestrator: invalid setting EXECUTOR: {problem}", file=sys.stderr)
        return 2
    _configure_logging(
        settings.log_level,
        settings.log_format,
        settings_secrets(settings) | environment_secrets(os.environ),
    )
    # Said on stderr too: the log may go where nobody looks before the first incident.
    warnings = (
        server_warnings(settings)  # type: ignore[arg-type]
        if command == "server"
        else client_warnings(settings)  # type: ignore[arg-type]
    )
    for warning in warnings:
        warn_on_stderr(warning, settings.log_format)
    # Every held request costs a descriptor: take all the hard limit allows (logged).
    raise_open_files_limit()
    app: FastAPI
    if command == "server":
        from job_orchestrator.server.app import create_app as create_server

        app = create_server(settings)  # type: ignore[arg-type]
    else:
        from job_orchestrator.client.app import create_app as create_client

        app = create_client(settings)  # type: ignore[arg-type]
    logger.info(
        "job-orchestrator %s %s listening on %s:%d",
        __version__,
        command,
        settings.host,
        settings.port,
    )
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            lifespan="on",
            http="httptools",
            # uvloop for the server's HTTP-heavy work; the client keeps asyncio's own loop,
            # whose subprocess support has the options the runner needs (user=, group=).
            loop="uvloop" if command == "server" else "asyncio",
        ),
        app,
    )
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully, which
    # would make a clean SIGTERM stop look like a crash (exit -15); a no-op handler for it to
    # restore and re-raise lets a graceful stop exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    server.run()
    return 0 if server.started else 1


def _migrate() -> int:
    """Apply the migrations to DB_PATH (what a server also does when it starts)."""
    from job_orchestrator.config import server_db_path
    from job_orchestrator.errors import StoreError
    from job_orchestrator.server.storage import open_store

    try:
        db_path = server_db_path(os.environ)
    except ConfigError as error:
        print(f"job-orchestrator: invalid setting {error}", file=sys.stderr)
        return 2

    async def migrate() -> str:
        store = await open_store(db_path)
        try:
            return await store.schema_revision()
        finally:
            await store.close()

    try:
        revision = asyncio.run(migrate())
    except StoreError as error:
        print(f"job-orchestrator: {error}", file=sys.stderr)
        return 1
    logger.info("database %s is at schema revision %s", display_url(db_path), revision)
    return 0


def warn_on_stderr(warning: str, log_format: str) -> None:
    """Log a warning and print it on stderr, as a JSON log object if the log is JSON lines."""
    logger.warning("%s", warning)
    if log_format == "json":
        record = logger.makeRecord(logger.name, logging.WARNING, __file__, 0, warning, (), None)
        line = JsonFormatter().format(record)
    else:
        line = f"job-orchestrator: warning: {warning}"
    print(line, file=sys.stderr, flush=True)
