"""Supervision on the desk: central's link banner (``/api/central-link``, polled by
``static/link.js`` and rendered into every page), and one post's page with its path availability
and event transmission time (``/posts/{node_id}``, ``/api/nodes/{node_id}/supervision``)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment

from central_sync.web.auth import optional_principal
from central_sync.web.context import ctx_of
from central_sync.web.desk import Desk
from central_sync.web.policy import can_see_node
from central_sync.web.routes_pages import page

router = APIRouter()
NodeId = Annotated[str, Path(max_length=80, pattern=r"^[A-Za-z0-9_.:-]{1,80}$")]


def install(env: Environment, desk: Desk) -> None:
    """``central_link()`` for the banner partial (the state of the last sweep)."""
    env.globals["central_link"] = lambda: desk.supervisor.link


@router.get("/api/central-link")
def central_link(request: Request) -> Response:
    """Central's own sight of the broker: ``blind`` (and why), live ingest processes."""
    who = optional_principal(request)
    if who is None:
        return JSONResponse({"detail": "login required"}, status_code=401)
    link = ctx_of(request).desk.supervisor.link
    return JSONResponse(link.as_dict(), headers={"Cache-Control": "no-store"})


def _figures(request: Request, node_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    ctx = ctx_of(request)
    node = ctx.desk.nodes().get(node_id)
    if node is None:
        return None, None
    return dict(node), ctx.desk.supervisor.path_figures(node_id).as_dict()


@router.get("/api/nodes/{node_id}/supervision", responses={404: {"description": "no such post"}})
async def node_supervision(request: Request, node_id: NodeId) -> Response:
    """One post's status, supervised flag, 7-day availability and transmission time."""
    who = optional_principal(request)
    if who is None:
        return JSONResponse({"detail": "login required"}, status_code=401)
    node, figures = await asyncio.to_thread(_figures, request, node_id)
    if node is None or figures is None or not can_see_node(who.user, node):
        return JSONResponse({"detail": "not found"}, status_code=404)
    settings = ctx_of(request).settings.supervision
    return JSONResponse({"node_id": node_id, "status": node.get("status"),
                         "supervised": settings.is_supervised(node_id),
                         "availability_threshold": settings.availability_threshold, **figures})


@router.get("/posts/{node_id}", response_class=HTMLResponse, include_in_schema=False)
async def post_page(request: Request, node_id: NodeId) -> Response:
    who = optional_principal(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    node, figures = await asyncio.to_thread(_figures, request, node_id)
    if node is None or figures is None or not can_see_node(who.user, node):
        return HTMLResponse("Not found", status_code=404)
    settings = ctx_of(request).settings.supervision
    return page(request, who, "post.html", post=node, fig=figures,
                supervised=settings.is_supervised(node_id),
                threshold=settings.availability_threshold, days=settings.availability_days)
