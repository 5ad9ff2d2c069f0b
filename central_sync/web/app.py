"""The command-centre web app: ``create_app(cfg, store, commands)`` and ``serve(cfg, store, ingest)``.

``commands`` is anything with ``async send_command(cmd, *, issued_by)`` (central's IngestService).
Feed incidents by passing ``app.state.ctx.desk.on_events`` as IngestService's ``on_events``
(``serve`` wires it when the ingest service exposes an ``on_events`` attribute).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from central_sync.errors import AuthError, CentralError
from central_sync.retention import Retention
from central_sync.web import (
    i18n,
    present,
    routes_api,
    routes_auth,
    routes_cap,
    routes_live,
    routes_map,
    routes_ops,
    routes_pages,
)
from central_sync.web.context import HERE, WebContext, build_context
from central_sync.web.desk import CommandSender
from central_sync.web.metrics import registry_for
from central_sync.web.places import Places
from central_sync.web.server import DeskServer
from central_sync.web.settings import WebSettings
from edge.logs import log_event

log = logging.getLogger("central.web")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "frame-ancestors 'none'",
}


def create_app(cfg: Any, store: Any, commands: CommandSender | None,
               settings: WebSettings | None = None) -> FastAPI:
    """Build the app; groups events already in the store when it starts."""
    ctx = build_context(cfg, store, commands, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.desk.loop = asyncio.get_running_loop()
        count = ctx.desk.catch_up()
        log_event(log, "web_started", caught_up=count)
        yield
        await ctx.desk.aclose()

    app = FastAPI(title="Kentongan command centre", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.ctx = ctx
    # Desk presentation (issue 11): languages, readable words, places, metrics, live stream.
    app.state.places = Places.load(ctx.settings.places_file)
    app.state.metrics = registry_for(ctx)
    i18n.install(ctx.templates.env)
    present.install(ctx.templates.env, ctx.settings, app.state.places)
    app.add_middleware(i18n.LanguageMiddleware, default=ctx.settings.language,
                       secure=ctx.settings.cookie_secure)
    app.include_router(routes_auth.router)
    app.include_router(routes_live.router)
    app.include_router(routes_api.router)
    app.include_router(routes_map.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_cap.router)
    app.include_router(routes_pages.router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=401)

    @app.exception_handler(CentralError)
    async def central_error(request: Request, exc: CentralError) -> JSONResponse:
        log_event(log, "request_failed", logging.WARNING, path=request.url.path, error=str(exc))
        return JSONResponse({"detail": str(exc)}, status_code=409)

    return app


def context_of(app: FastAPI) -> WebContext:
    ctx: WebContext = app.state.ctx
    return ctx


async def serve(cfg: Any, store: Any, ingest: Any) -> None:
    """Serve the web app and run retention until cancelled (the ``kentongan-central run`` hook).

    Incidents are fed from ingest: ``ingest.on_events`` is set to the desk's callback when the
    ingest service has that attribute and it is unset or already ours.
    """
    settings = WebSettings.from_config(cfg)
    if not settings.enabled:
        return
    app = create_app(cfg, store, ingest, settings)
    ctx = context_of(app)
    if ingest is not None and hasattr(ingest, "on_events"):
        current = ingest.on_events
        if current is None:
            ingest.on_events = ctx.desk.on_events
        elif current is not ctx.desk.on_events:
            def both(rows: list[dict[str, Any]], _first: Any = current) -> None:
                _first(rows)
                ctx.desk.on_events(rows)
            ingest.on_events = both
    server = DeskServer(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=2, lifespan="on"), ctx.hub)
    retention = Retention(ctx.db, store, settings)
    task = asyncio.create_task(retention.run_forever(), name="retention")
    try:
        await server.serve()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
