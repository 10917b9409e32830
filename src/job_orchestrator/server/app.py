"""The server application: create_app(settings) wires the store, the gateway and the loops.

The lifespan builds the engine, then the one context the routes use (context.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from job_orchestrator import __version__
from job_orchestrator._descriptors import exhausted_now, is_exhaustion
from job_orchestrator.config import ServerSettings
from job_orchestrator.errors import OutOfDescriptorsError, StoreError, StoreUnavailableError
from job_orchestrator.http_common import (
    UNAUTHORIZED,
    bearer_matches,
    install_conventions,
    json_response,
    out_of_descriptors,
    status_body,
)
from job_orchestrator.server import api, logs, services_view, status_page, views
from job_orchestrator.server.auth import Authenticator
from job_orchestrator.server.context import AppContext, app_context
from job_orchestrator.server.delivery import CallbackDeliverer
from job_orchestrator.server.disclosure import DisclosureMiddleware
from job_orchestrator.server.dispatcher import Orchestrator
from job_orchestrator.server.gateway import NodeGateway
from job_orchestrator.server.log_keeper import LogKeeper
from job_orchestrator.server.log_stream import LogSources
from job_orchestrator.server.metrics import ServerMetrics
from job_orchestrator.server.openapi import COMPONENTS
from job_orchestrator.server.queue_view import QueuePositions
from job_orchestrator.server.requesting import database_unavailable
from job_orchestrator.server.storage import open_store
from job_orchestrator.server.upload_service import UploadService
from job_orchestrator.server.waiting import HeldRequests
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)


def create_app(settings: ServerSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_path.mkdir(parents=True, exist_ok=True)
        store = await open_store(settings.db_path)
        metrics = ServerMetrics()
        gateway = NodeGateway(timeout_s=settings.client_timeout_s, metrics=metrics)
        orchestrator = Orchestrator(settings, store, gateway, metrics)
        log_keeper = LogKeeper(settings, store, gateway)
        store.on_final(log_keeper.job_final, log_keeper.job_final_elsewhere)
        callbacks = CallbackDeliverer(settings, store)
        context = AppContext(
            settings=settings,
            store=store,
            authenticator=Authenticator(settings),
            engine=orchestrator,
            fleet=orchestrator.fleet,
            uploads=UploadService(
                settings, store, orchestrator.uploads, callbacks, orchestrator.wake_dispatch
            ),
            logs=LogSources(
                settings, store, gateway, orchestrator.wait_final, orchestrator.draining
            ),
            queue_positions=QueuePositions(store),  # GET /jobs/{id}
            waits=HeldRequests(
                "waits",
                settings.wait_max_per_user,
                settings.wait_max_total,
                ("WAIT_MAX_PER_USER", "WAIT_MAX_TOTAL"),
            ),
            follows=HeldRequests(
                "log follows",
                settings.log_follow_max_per_user,
                settings.log_follow_max_total,
                ("LOG_FOLLOW_MAX_PER_USER", "LOG_FOLLOW_MAX_TOTAL"),
            ),
            metrics=metrics,
        )
        app.state.context = context
        # For DrainingServer (_serve.py), not the routes: it sets `draining` on SIGTERM so
        # held requests answer at once, from the signal handler through `loop`.
        app.state.draining = orchestrator.draining
        app.state.loop = asyncio.get_running_loop()
        if settings.admin_users and not context.authenticator.enabled:
            logger.warning(
                "ADMIN_USERS has no effect without API_TOKENS_FILE or JWT_PUBLIC_KEYS: "
                "/status is open"
            )
        await orchestrator.start()
        await callbacks.start()
        try:
            yield
        finally:
            await orchestrator.stop()
            await callbacks.stop()
            await log_keeper.close()
            await gateway.close()
            await store.close()

    app = FastAPI(
        title="job-orchestrator",
        version=__version__,
        description="Fair job queue for scientific web portals",
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: see swagger_ui below
        redoc_url=None,
        openapi_url="/api-docs/openapi.json",
        openapi_tags=[
            {"name": "files", "description": "File management endpoints"},
            {"name": "health", "description": "Health check endpoints"},
        ],
        lifespan=lifespan,
    )
    app.include_router(api.router)
    app.include_router(views.router)  # tag "jobs", not declared at the top (the original's are)
    app.include_router(status_page.router)  # HTML for people: not in the OpenAPI document
    app.include_router(logs.router)
    app.include_router(services_view.router)  # tag "services", ours like "jobs"

    @app.get("/swagger", include_in_schema=False)
    async def swagger_redirect() -> RedirectResponse:
        return RedirectResponse("/swagger/", status_code=303)

    @app.get(
        "/metrics",
        summary="Prometheus metrics (not in the original)",
        tags=["monitoring"],  # not declared at the top: those are the original's, exactly
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            401: {"description": "No valid bearer token (only when METRICS_TOKEN is set)"},
        },
    )
    async def metrics(request: Request) -> Response:
        token = settings.metrics_token
        if token and not bearer_matches(request.headers.get("authorization"), token):
            return json_response(UNAUTHORIZED, 401, headers={"WWW-Authenticate": "Bearer"})
        context = app_context(request.app)
        body = await context.metrics.exposition(context.store, context.fleet.snapshot())
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/swagger/", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        # Assets come from the pinned fastapi-offline wheel, so the page works with no
        # Internet access; they sit under /swagger/ like the original's.
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/swagger/swagger-ui.css",
            swagger_favicon_url=f"{root}/swagger/favicon.png",
        )

    # After the two routes above, so the mount serves only the files under /swagger/.
    app.mount("/swagger", StaticFiles(packages=[("fastapi_offline", "static")]), name="swagger")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
            app.openapi_schema = schema
        return app.openapi_schema

    async def store_failed(_request: Request, error: Exception) -> Response:
        if isinstance(error, StoreUnavailableError):
            logger.warning("request answered 503: %s", error)
            return database_unavailable()
        if is_exhaustion(error) or exhausted_now():
            # SQLite says "unable to open database file" without an errno.
            logger.warning("request answered 503: no file descriptor left (%s)", error)
            return out_of_descriptors()
        logger.error("database error: %s", error, exc_info=error)
        return status_body(0, Status.UNKNOWN, "Internal server error", 500)

    async def system_failed(_request: Request, error: Exception) -> Response:
        if not is_exhaustion(error):
            raise error  # a 500, as before: a bug or a broken disk
        logger.warning("request answered 503: %s", error)
        return out_of_descriptors()

    # One JSON shape for a failed database, whatever route met it (no traceback page).
    app.add_exception_handler(StoreError, store_failed)
    # Running out of descriptors anywhere in a request (opening a file, connecting to a
    # client) is a 503 with Retry-After, never a 500.
    app.add_exception_handler(OSError, system_failed)
    app.add_exception_handler(OutOfDescriptorsError, system_failed)

    app.openapi = openapi  # type: ignore[method-assign]
    app.router.redirect_slashes = False  # the original does no slash normalisation
    install_conventions(app)
    # Users who are not admins see clients by name and no payload ids (server/disclosure.py).
    app.add_middleware(DisclosureMiddleware, settings=settings)
    return app
