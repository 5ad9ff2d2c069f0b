"""The command-centre web app: ``create_app(cfg, store, commands)`` and ``serve(cfg, store, commands)``.

``commands`` is anything with ``async send_command(cmd, *, issued_by)`` (central's IngestService,
or a publisher of its own in a separate web process). The desk learns of new events and post
state from the store's change feed (``store.change_feed()``), whichever process committed them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import uvicorn
from argon2 import PasswordHasher
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from central_sync.errors import AuthError, CentralError
from central_sync.retention import Retention
from central_sync.store import Store
from central_sync.users import DEFAULT_HASHER
from central_sync.web import (
    cached_views,
    i18n,
    present,
    routes_api,
    routes_auth,
    routes_cap,
    routes_live,
    routes_map,
    routes_ops,
    routes_pages,
    routes_sirens,
    routes_supervision,
)
from central_sync.web.context import HERE, ConfigSource, WebContext, build_context
from central_sync.web.desk import CommandSender
from central_sync.web.metrics import registry_for
from central_sync.web.places import Places
from central_sync.web.server import DeskServer, serve_until_cancelled
from central_sync.web.supervision_loop import run_supervision
from central_sync.web_listen import open_listener
from central_sync.web_settings import WebSettings
from edge.logs import log_event

log = logging.getLogger("central.web")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "frame-ancestors 'none'",
}


class SecurityHeaders:
    """Pure ASGI middleware adding ``SECURITY_HEADERS`` to every response that lacks them (not
    ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs each request through a
    task group and memory streams, work on the event loop for every request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _v in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in self.headers if k not in have)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(cfg: ConfigSource, store: Store, commands: CommandSender | None,
               settings: WebSettings | None = None, *, follow_changes: bool = True,
               hasher: PasswordHasher = DEFAULT_HASHER) -> FastAPI:
    """Build the app; groups events already in the store when it starts, then follows the
    store's change feed (``follow_changes=False``: only what ``desk.on_events`` is given).
    ``hasher``: the accounts' password hasher (``UserStore``; only tests pass another)."""
    ctx = build_context(cfg, store, commands, settings, hasher=hasher)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.desk.loop = asyncio.get_running_loop()
        feed = store.change_feed() if follow_changes else None
        mark = await asyncio.to_thread(feed.head) if feed is not None else None
        ctx.desk.posts.load(await asyncio.to_thread(store.list_nodes))
        count = await asyncio.to_thread(ctx.desk.catch_up)
        log_event(log, "web_started", caught_up=count, posts=len(ctx.desk.posts))
        warming = asyncio.create_task(_warm(ctx), name="desk-warm")
        follower = (asyncio.create_task(ctx.desk.follow(feed, mark), name="desk-change-feed")
                    if feed is not None and mark is not None else None)
        supervision = asyncio.create_task(run_supervision(ctx.desk), name="desk-supervision")
        try:
            yield
        finally:
            warming.cancel()
            supervision.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervision
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            if feed is not None:
                feed.close()
            await ctx.desk.aclose()

    app = FastAPI(title="Kentongan command centre", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.ctx = ctx
    # Desk presentation (issue 11): languages, readable words, places, metrics, live stream.
    app.state.places = Places.load(ctx.settings.places_file)
    app.state.metrics = registry_for(ctx)
    i18n.install(ctx.templates.env)
    present.install(ctx.templates.env, ctx.settings, app.state.places)
    routes_sirens.install(ctx.templates.env)
    app.add_middleware(i18n.LanguageMiddleware, default=ctx.settings.language,
                       secure=ctx.settings.cookie_secure)
    app.include_router(routes_auth.router)
    app.include_router(routes_live.router)
    app.include_router(routes_api.router)
    app.include_router(routes_map.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_cap.router)
    app.include_router(routes_supervision.router)
    app.include_router(routes_pages.router)
    routes_supervision.install(ctx.templates.env, ctx.desk)
    app.include_router(routes_sirens.router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    app.add_middleware(SecurityHeaders)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=401)

    @app.exception_handler(CentralError)
    async def central_error(request: Request, exc: CentralError) -> JSONResponse:
        log_event(log, "request_failed", logging.WARNING, path=request.url.path, error=str(exc))
        return JSONResponse({"detail": str(exc)}, status_code=409)

    return app


async def _warm(ctx: WebContext) -> None:
    """``cached_views.warm`` in a worker thread; a failure only costs the first page its speed."""
    try:
        rows = await asyncio.to_thread(cached_views.warm, ctx)
    except Exception as exc:
        log_event(log, "warm_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}"[:200])
        return
    log_event(log, "web_warm", rows=rows)


def context_of(app: FastAPI) -> WebContext:
    ctx: WebContext = app.state.ctx
    return ctx


async def serve(cfg: ConfigSource, store: Store, commands: CommandSender | None) -> None:
    """Serve the web app and run retention until cancelled (the ``kentongan-central run`` and
    ``web`` hook). Incidents come from the store's change feed, not from a callback on ingest."""
    settings = WebSettings.from_config(cfg)
    if not settings.enabled:
        return
    app = create_app(cfg, store, commands, settings)
    ctx = context_of(app)
    server = DeskServer(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=2, lifespan="on"), ctx.hub)
    retention = Retention(ctx.tables, settings)
    task = asyncio.create_task(retention.run_forever(), name="retention")
    try:
        await serve_until_cancelled(server, [open_listener(settings.host, settings.port, settings.ready_file)])
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
