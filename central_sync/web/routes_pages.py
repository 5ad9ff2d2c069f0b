"""Server-rendered pages: the live incident queue, one incident, the post overview."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from central_sync.web.auth import Principal, optional_principal
from central_sync.web.context import ctx_of
from central_sync.web.policy import can_command_posts, can_see_incident
from central_sync.web.posts import post_rows

router = APIRouter(include_in_schema=False)


def _page(request: Request, who: Principal, name: str, **extra: object) -> Response:
    ctx = ctx_of(request)
    return ctx.templates.TemplateResponse(request, name, {
        "user": who.user, "csrf": who.csrf, "can_command": can_command_posts(who.user),
        **extra})


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request) -> Response:
    who = optional_principal(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    ctx = ctx_of(request)
    nodes = ctx.desk.nodes()
    incidents = [ctx.desk.summary(i, nodes.get(i.node_id)) for i in ctx.desk.visible(who, nodes)]
    return _page(request, who, "dashboard.html", incidents=incidents,
                 warnings=ctx.desk.warnings() if who.user.is_staff else [])


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
    return _page(request, who, "incident.html", inc=ctx.desk.detail(who, incident, node))


@router.get("/posts", response_class=HTMLResponse)
def posts_page(request: Request) -> Response:
    who = optional_principal(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    return _page(request, who, "posts.html", posts=post_rows(ctx_of(request), who))


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
