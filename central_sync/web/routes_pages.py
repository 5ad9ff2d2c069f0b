"""Server-rendered pages: the live incident queue, one incident, the post overview, the map,
and the fragments the live scripts fetch (one queue row, the whole queue)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from central_sync.web.attention import AttentionBody
from central_sync.web.auth import Principal, optional_principal
from central_sync.web.cached_views import queue_rows as cached_queue_rows
from central_sync.web.context import ctx_of
from central_sync.web.policy import can_command_posts, can_see_incident
from central_sync.web.posts import post_rows, rollout_overview, security_events
from central_sync.web.present import POST_STATUS, post_status

router = APIRouter(include_in_schema=False)


def page(request: Request, who: Principal, name: str, **extra: object) -> Response:
    ctx = ctx_of(request)
    settings = ctx.settings
    head = extra.get("stream_head")
    config = {"stream_head": head if isinstance(head, int) else ctx.hub.head,
              "targets": {str(k): v for k, v in settings.response_target_s.items()},
              "post_status": {k: post_status(k) for k in POST_STATUS}}
    return ctx.templates.TemplateResponse(request, name, {
        "user": who.user, "csrf": who.csrf, "can_command": can_command_posts(who.user),
        "desk_config": config, **extra})


@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request) -> Response:
    """Async: the session and warnings are read in one worker-thread hop, the queue rows come
    from their cache (built off the loop), and only the page around them is rendered here."""
    ctx = ctx_of(request)

    def session_and_warnings() -> tuple[Principal | None, list[dict[str, Any]]]:
        who = optional_principal(request)
        return who, ctx.desk.warnings() if who is not None and who.user.is_staff else []

    who, warnings = await asyncio.to_thread(session_and_warnings)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    rows = await cached_queue_rows(ctx, who)  # rendered once per change; as new as its stream id at least
    return page(request, who, "dashboard.html", queue_rows=rows.value.html, has_incidents=rows.value.count > 0,
                stream_head=rows.value.head, warnings=warnings)


def _lookup(ctx: Any, who: Any, incident_id: str) -> tuple[Any, Any, bool]:
    """(incident, its node, whether ``who`` may see it): one rule for page and fragment."""
    incident = ctx.desk.book.get(incident_id)
    node = ctx.desk.nodes().get(incident.node_id) if incident else None
    return incident, node, incident is not None and can_see_incident(who.user, incident, node)


@router.get("/incidents/{incident_id}", response_class=HTMLResponse)
def incident_page(request: Request,
                  incident_id: Annotated[str, Path(max_length=80)]) -> Response:
    who = optional_principal(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    ctx = ctx_of(request)
    incident, node, visible = _lookup(ctx, who, incident_id)
    if not visible:
        if incident is not None:
            ctx.access.record(who, "view_report", "incident", incident_id, allowed=False)
        return HTMLResponse("Not found", status_code=404)
    ctx.access.record(who, "view_report", "incident", incident_id)
    return page(request, who, "incident.html", inc=ctx.desk.detail(who, incident, node),
                 can_unseal=ctx.unsealer is not None)


@router.get("/posts", response_class=HTMLResponse)
def posts_page(request: Request) -> Response:
    who = optional_principal(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    ctx = ctx_of(request)
    rollout = rollout_overview(ctx)
    security = {e["node_id"]: e for e in security_events(ctx, who)}
    return page(request, who, "posts.html", posts=post_rows(ctx, who, rollout), rollout=rollout,
                security=security)


@router.get("/fragments/incidents/{incident_id}", response_class=HTMLResponse)
def incident_row(request: Request,
                 incident_id: Annotated[str, Path(max_length=80)]) -> Response:
    """One queue row, server-rendered, for the live update script."""
    who = optional_principal(request)
    if who is None:
        return HTMLResponse("login required", status_code=401)
    ctx = ctx_of(request)
    incident, node, visible = _lookup(ctx, who, incident_id)
    if not visible:
        return HTMLResponse("Not found", status_code=404)
    return ctx.templates.TemplateResponse(request, "row_fragment.html",
                                          {"i": ctx.desk.summary(incident, node)})


@router.get("/fragments/queue", response_class=HTMLResponse)
async def queue_rows(request: Request, at: int | None = None) -> Response:
    """Every queue row, server-rendered: what the page re-reads after a gap in its stream.
    ``X-Stream-Head`` is the stream id the rows are at least as new as; ``?at=<stream id>`` (the
    id the page's stream has reached) makes sure they are at least that new."""
    who = await asyncio.to_thread(optional_principal, request)
    if who is None:
        return HTMLResponse("login required", status_code=401)
    rows = await cached_queue_rows(ctx_of(request), who, at)
    response = HTMLResponse(rows.value.html)
    response.headers["X-Stream-Head"] = str(rows.value.head)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/fragments/attention")
async def attention(request: Request) -> Response:
    """Unacknowledged P1 incidents visible to you, oldest first, in words for the banner; kept
    up to date change by change (``attention.py``), with an ``ETag`` the page revalidates."""
    ctx = ctx_of(request)

    def read() -> tuple[Principal | None, AttentionBody | None]:  # one worker-thread hop
        who = optional_principal(request)
        return who, ctx.attention.get(ctx, who) if who is not None else None

    who, body = await asyncio.to_thread(read)
    if who is None or body is None:
        return JSONResponse({"detail": "login required"}, status_code=401)
    headers = {"ETag": body.etag, "Cache-Control": "private, no-cache"}
    if request.headers.get("if-none-match") == body.etag:
        return Response(status_code=304, headers=headers)
    return Response(body.body, media_type="application/json", headers=headers)
