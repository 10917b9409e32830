"""The client (executor node) application: its state and loops for the process's life (the
lifespan), the routes the server drives (routes.py, logs.py), and the guard in front.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from job_orchestrator import __version__
from job_orchestrator.client import changes, logs, routes
from job_orchestrator.client.state import ClientState
from job_orchestrator.config import ClientSettings
from job_orchestrator.http_common import BearerGuard, install_conventions

logger = logging.getLogger(__name__)


def create_app(settings: ClientSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ClientState(settings)
        app.state.client = state  # read through state.py `client_state`
        app.state.draining = state.draining
        app.state.loop = asyncio.get_running_loop()
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="job-orchestrator client",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api-docs/openapi.json",
        lifespan=lifespan,
    )
    app.include_router(routes.router)
    app.include_router(logs.router)
    app.include_router(changes.router)
    app.router.redirect_slashes = False  # the original does no slash normalisation
    install_conventions(app)
    _warn_about(settings)
    if settings.client_token:
        app.add_middleware(
            BearerGuard, token=settings.client_token, open_paths=frozenset({"/", "/health"})
        )
    else:
        logger.warning(
            "CLIENT_TOKEN is not set: this client runs whatever any caller sends it; "
            "set CLIENT_TOKEN here and on the server"
        )
    return app


def _warn_about(settings: ClientSettings) -> None:
    """Settings that weaken what the client promises its jobs' hosts."""
    contained = settings.executor in ("docker", "podman")  # the engine sets the limits
    if (
        settings.sandbox == "none"
        and not contained
        and any(
            (
                settings.job_max_memory_mb,
                settings.job_max_processes,
                settings.job_max_file_mb,
                settings.job_max_cpu_seconds,
            )
        )
    ):
        logger.warning("JOB_MAX_* limits are ignored with SANDBOX=none; use rlimits or bwrap")
    if not settings.validate_scripts:
        logger.warning("VALIDATE_SCRIPTS=0: run.sh is run without the validator's screen")
