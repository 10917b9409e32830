"""`job-orchestrator server | client`: read the environment, then serve until SIGTERM/SIGINT.

The user commands (`submit`, `status`, ...) live in `usercli`; they only talk to a server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

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
from job_orchestrator.usercli import USER_COMMANDS, add_user_commands, run_user_command

logger = logging.getLogger("job_orchestrator")

GRACEFUL_SHUTDOWN_S = 10


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="job-orchestrator",
        description="Fair job queue (server) and executor (client) for scientific web portals. "
        "Configured through environment variables; see the README.",
    )
    parser.add_argument("--version", action="version", version=f"job-orchestrator {__version__}")
    commands = parser.add_subparsers(
        dest="command",
        metavar=f"{{server,client,migrate,{','.join(USER_COMMANDS)}}}",
        required=True,
    )
    for program, summary in (
        ("server", "Run orchestrator server (user API, queue, dispatch)"),
        ("client", "Run orchestrator client (executes run.sh payloads)"),
    ):
        command = commands.add_parser(program, help=summary)
        command.add_argument(
            "--help-settings",
            action="store_true",
            help=f"list the environment settings the {program} reads, with defaults, and exit",
        )
    commands.add_parser(
        "migrate", help="Bring the server's database (DB_PATH) to the current schema, then exit"
    )
    add_user_commands(commands)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    if arguments.command in USER_COMMANDS:
        return run_user_command(arguments)
    if getattr(arguments, "help_settings", False):
        from job_orchestrator.settings_table import SETTINGS, describe

        print(describe(SETTINGS, arguments.command), end="")
        return 0
    from job_orchestrator.config import load_client_settings, load_server_settings

    # Logging first, so warnings about the configuration go to the log, not to stderr.
    _configure_logging("INFO")
    if arguments.command == "migrate":
        return _migrate()
    try:
        settings = (
            load_server_settings() if arguments.command == "server" else load_client_settings()
        )
    except ConfigError as error:
        reason = masked(str(error), environment_secrets(os.environ))
        print(f"job-orchestrator: invalid setting {reason}", file=sys.stderr)
        return 2
    if arguments.command == "client" and (problem := _engine_problem(settings)) is not None:
        print(f"job-orchestrator: invalid setting EXECUTOR: {problem}", file=sys.stderr)
        return 2
    _configure_logging(
        settings.log_level,
        settings.log_format,
        settings_secrets(settings) | environment_secrets(os.environ),
    )
    # Every held request costs a descriptor: take all the hard limit allows (logged).
    raise_open_files_limit()
    app: FastAPI
    if arguments.command == "server":
        from job_orchestrator.server.app import create_app as create_server

        app = create_server(settings)  # type: ignore[arg-type]
    else:
        from job_orchestrator.client.app import create_app as create_client

        app = create_client(settings)  # type: ignore[arg-type]
    logger.info(
        "job-orchestrator %s %s listening on %s:%d",
        __version__,
        arguments.command,
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
            loop="uvloop" if arguments.command == "server" else "asyncio",
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


if __name__ == "__main__":
    sys.exit(main())
