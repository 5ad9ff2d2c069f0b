"""The JSON API under /api (OpenAPI at /openapi.json): incidents, lifecycle, posts, snapshots."""

from __future__ import annotations

import base64
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from central_sync.incidents import Incident, IncidentError, State
from central_sync.routing import RT_NOTICE_TYPES
from central_sync.snapshot_policy import SNAPSHOT_HEADERS, disposition, servable_image
from central_sync.users import Role
from central_sync.web.auth import Principal, check_csrf, principal, require_roles
from central_sync.web.cached_views import nodes_json
from central_sync.web.context import WebContext, ctx_of
from central_sync.web.desk import as_dict
from central_sync.web.policy import can_command_posts, can_see_incident, can_see_node
from central_sync.web.posts import security_events
from edge.errors import SecurityError
from edge.logs import log_event

log = logging.getLogger("central.web.api")
router = APIRouter(prefix="/api")

Who = Annotated[Principal, Depends(principal)]
IncidentId = Annotated[str, Path(min_length=1, max_length=80)]
NodeId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")]


async def csrf_principal(request: Request) -> Principal:
    who = principal(request)
    await check_csrf(request, who)
    return who


Writer = Annotated[Principal, Depends(csrf_principal)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such incident (or not visible to you)"}}


class NoteIn(BaseModel):
    note: str = Field("", max_length=1000)


class NoticeIn(BaseModel):
    incident_type: Literal["LELAYU", "KUMPUL", "AMAN"]


def _visible_incident(ctx: WebContext, who: Principal, incident_id: str,
                      action: str) -> tuple[Incident, dict[str, Any] | None]:
    """The incident if this user may see it; 404 (not 403: existence is not revealed)."""
    incident = ctx.desk.book.get(incident_id)
    node = ctx.desk.nodes().get(incident.node_id) if incident else None
    if incident is None or not can_see_incident(who.user, incident, node):
        if incident is not None:
            ctx.access.record(who, action, "incident", incident_id, allowed=False)
        raise HTTPException(404, "no such incident")
    return incident, node


@router.get("/incidents")
def list_incidents(request: Request, who: Who, open_only: bool = False) -> list[dict[str, Any]]:
    """Incidents visible to you: open first, then most urgent, then newest."""
    ctx = ctx_of(request)
    nodes = ctx.desk.nodes()
    return [ctx.desk.summary(i, nodes.get(i.node_id))
            for i in ctx.desk.visible(who, nodes, open_only=open_only)]


@router.get("/incidents/{incident_id}", responses=_NOT_FOUND)
def get_incident(request: Request, who: Who, incident_id: IncidentId) -> dict[str, Any]:
    """One incident with its events, snapshots and log (this view is access-logged)."""
    ctx = ctx_of(request)
    incident, node = _visible_incident(ctx, who, incident_id, "view_report")
    ctx.access.record(who, "view_report", "incident", incident_id)
    return ctx.desk.detail(who, incident, node)


async def _step(request: Request, who: Principal, incident_id: str, to: State,
                note: str) -> dict[str, Any]:
    ctx = ctx_of(request)
    _visible_incident(ctx, who, incident_id, to.value)
    try:
        if to is State.ACKNOWLEDGED:
            return await ctx.desk.acknowledge(who, incident_id, note)
        return await ctx.desk.close(who, incident_id, to, note)
    except IncidentError as exc:
        raise HTTPException(404 if exc.not_found else 409, str(exc)) from None


_STEP_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND, 409: {"description": "step not allowed from the incident's state"}}


@router.post("/incidents/{incident_id}/ack", responses=_STEP_RESPONSES)
async def acknowledge(request: Request, who: Writer, incident_id: IncidentId,
                      body: NoteIn) -> dict[str, Any]:
    """Acknowledge: the post is told (``incident_ack`` command)."""
    return await _step(request, who, incident_id, State.ACKNOWLEDGED, body.note)


@router.post("/incidents/{incident_id}/resolve", responses=_STEP_RESPONSES)
async def resolve(request: Request, who: Writer, incident_id: IncidentId,
                  body: NoteIn) -> dict[str, Any]:
    return await _step(request, who, incident_id, State.RESOLVED, body.note)


@router.post("/incidents/{incident_id}/false-alarm", responses=_STEP_RESPONSES)
async def false_alarm(request: Request, who: Writer, incident_id: IncidentId,
                      body: NoteIn) -> dict[str, Any]:
    """Mark a false alarm; past the threshold the post's panic hold is raised."""
    return await _step(request, who, incident_id, State.FALSE_ALARM, body.note)


@router.get("/nodes", response_model=list[dict[str, Any]])
async def list_nodes(request: Request, who: Who) -> Response:
    """Posts visible to you, grouped order: kelurahan, RW, RT, name. Serialised once per change
    (at most about a second behind the posts' state: ``cached_views``), with an ``ETag``.
    Async: a stored body is sent from the loop; only a first build goes to a worker thread."""
    body = await nodes_json(ctx_of(request), who)
    etag = '"n' + str(hash(body.version) & 0xFFFFFFFFFFFF) + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body.value, media_type="application/json", headers=headers)


def _visible_node(ctx: WebContext, who: Principal, node_id: str) -> dict[str, Any]:
    node = ctx.desk.nodes().get(node_id)
    if node is None or not can_see_node(who.user, node):
        raise HTTPException(404, "no such post")
    return node


@router.post("/nodes/{node_id}/notice", responses={403: {"description": "not your RT"},
                                                   404: {"description": "no such post"}})
async def send_notice(request: Request, who: Writer, node_id: NodeId,
                      body: NoticeIn) -> dict[str, Any]:
    """An RT notice (LELAYU, KUMPUL, AMAN) to one of your RT's posts."""
    ctx = ctx_of(request)
    require_roles(who, Role.RT_ADMIN, Role.ADMIN)
    _visible_node(ctx, who, node_id)
    assert body.incident_type in RT_NOTICE_TYPES
    result = await ctx.desk.send(who, node_id, "sound", {"incident_type": body.incident_type,
                                                         "operator": who.user.name})
    _audit(ctx, who, "command_sound", node_id, incident_type=body.incident_type)
    return result


@router.post("/nodes/{node_id}/{action}", responses={403: {"description": "not allowed"},
                                                     404: {"description": "no such post"}})
async def node_command(request: Request, who: Writer, node_id: NodeId,
                       action: Literal["test", "stop"]) -> dict[str, Any]:
    """Test chirp or stop siren (operators and admins)."""
    ctx = ctx_of(request)
    if not can_command_posts(who.user):
        raise HTTPException(403, "only operators and admins")
    _visible_node(ctx, who, node_id)
    result = await ctx.desk.send(who, node_id, action, {"operator": who.user.name})
    _audit(ctx, who, f"command_{action}", node_id)
    return result


def _audit(ctx: WebContext, who: Principal, action: str, target: str, **detail: Any) -> None:
    """Record a command sent from the desk in the admin audit log (central_sync.audit)."""
    ctx.audit.record(who.user.name, action, target, {"role": who.user.role.value, **detail},
                     who.client)


@router.get("/snapshots/{snapshot_id}", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}, "image/png": {}}},
                       404: {"description": "not found"},
                       409: {"description": "cannot be unsealed here"},
                       415: {"description": "not an image: never served"}})
def get_snapshot(request: Request, who: Who,
                 snapshot_id: Annotated[str, Path(min_length=1, max_length=80)],
                 download: bool = False) -> Response:
    """A snapshot image, unsealed at central (access-logged). Only bytes that are a JPEG or PNG
    are served, under the type found in the bytes, sandboxed (central_sync.snapshot_policy)."""
    ctx = ctx_of(request)
    row = as_dict(ctx.store.get_snapshot(snapshot_id))
    incident = None
    if row:
        inc_id = ctx.desk.book.incident_of_event(str(row.get("event_id")), str(row.get("node_id")))
        incident = ctx.desk.book.get(inc_id) if inc_id else None
    node = ctx.desk.nodes().get(str(row.get("node_id"))) if row else None
    allowed = bool(row) and (
        who.user.is_staff if incident is None
        else can_see_incident(who.user, incident, node) and (
            who.user.is_staff or not incident.crime))
    if not row or not allowed:
        if row:
            ctx.access.record(who, "view_snapshot", "snapshot", snapshot_id, allowed=False)
        raise HTTPException(404, "no such snapshot", headers=SNAPSHOT_HEADERS)
    data = row.get("data") or b""
    if isinstance(data, str):
        data = base64.b64decode(data)
    if row.get("sealed"):
        if ctx.unsealer is None:
            raise HTTPException(409, "snapshot is sealed and no unseal key is configured",
                                headers=SNAPSHOT_HEADERS)
        try:
            data = ctx.unsealer.open(bytes(data))
        except SecurityError as exc:
            log_event(log, "unseal_failed", logging.WARNING, snapshot_id=snapshot_id,
                      reason=exc.reason)
            raise HTTPException(409, f"snapshot cannot be unsealed: {exc.reason}",
                                headers=SNAPSHOT_HEADERS) from None
    try:
        kind = servable_image(bytes(data))
    except SecurityError as exc:
        log_event(log, "snapshot_refused", logging.WARNING, snapshot_id=snapshot_id,
                  node_id=row.get("node_id"), reason=exc.reason,
                  declared=str(row.get("content_type"))[:60])
        ctx.access.record(who, "view_snapshot", "snapshot", snapshot_id, allowed=False)
        raise HTTPException(415, "not an image: snapshot refused",
                            headers=SNAPSHOT_HEADERS) from None
    ctx.access.record(who, "view_snapshot", "snapshot", snapshot_id)
    return Response(bytes(data), media_type=kind, headers={
        **SNAPSHOT_HEADERS,
        "Content-Disposition": disposition(snapshot_id, kind, download=download)})


@router.get("/warnings")
def warnings(request: Request, who: Who) -> list[dict[str, Any]]:
    """Staff warnings such as posts past the false-alarm threshold."""
    if not who.user.is_staff:
        return []
    return ctx_of(request).desk.warnings()


@router.get("/security-events")
def list_security_events(request: Request, who: Who) -> list[dict[str, Any]]:
    """Posts whose messages claimed another place than their enrolment (never applied): per
    post, what it claimed, where it is enrolled, how often and when last (admins only)."""
    require_roles(who, Role.ADMIN)
    return security_events(ctx_of(request), who)


@router.get("/access-log")
def access_log(request: Request, who: Who,
               limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
    """Who viewed which report or snapshot (admins only)."""
    require_roles(who, Role.ADMIN)
    return ctx_of(request).access.recent(limit)


# GET /api/stream (the live stream with replay) is in routes_live.py.
