"""Siren control from the desk (docs/desk.md, "Siren control"): group activation of an RT, an
RW, a kelurahan or the whole city, each siren's confirmation, and stopping a group.

* operators and admins may sound an RT, RW or kelurahan; only admins the whole city, and only
  with ``confirm: true`` (the page asks first);
* every start and stop is recorded in the audit log;
* ``GET /api/sirens/activations/{id}`` is what the activation page polls: counts confirmed /
  failed / pending and the per-post rows (``answered_after`` for only what changed).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment
from pydantic import BaseModel, ConfigDict, Field

from central_sync.siren_control import Scope, SirenControlError
from central_sync.users import Role
from central_sync.web.auth import Principal, optional_principal, principal, require_roles
from central_sync.web.context import WebContext, ctx_of
from central_sync.web.i18n import _
from central_sync.web.policy import can_command_posts, can_see_incident
from central_sync.web.present import N_
from central_sync.web.routes_api import csrf_principal
from central_sync.web.routes_pages import page
from edge.incidents import IncidentType

router = APIRouter()

Who = Annotated[Principal, Depends(principal)]
Writer = Annotated[Principal, Depends(csrf_principal)]
ActivationId = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")]


class GroupIn(BaseModel):
    """A group activation request."""

    model_config = ConfigDict(extra="forbid")

    scope: Literal["rt", "rw", "kelurahan", "city"] = Field(description="How far it reaches.")
    kelurahan_code: str | None = Field(None, max_length=20, description="For rt, rw, kelurahan.")
    rw: int | None = Field(None, ge=0, le=999, description="For rt and rw.")
    rt: int | None = Field(None, ge=0, le=999, description="For rt.")
    incident_type: IncidentType = Field(IncidentType.BENCANA, description="Whose pattern sounds.")
    confirm: bool = Field(False, description="Required for the whole city.")
    incident_id: str | None = Field(None, max_length=80, description="An open incident this is "
                                    "for: resolving it (or marking it a false alarm) stops "
                                    "these sirens too.")


def _staff(who: Principal) -> None:
    if not can_command_posts(who.user):
        raise HTTPException(403, "only operators and admins")


def _status(ctx: WebContext, activation_id: str, answered_after: float | None = None) -> dict[str, Any]:
    found = ctx.desk.sirens.status(activation_id, answered_after=answered_after)
    if found is None:
        raise HTTPException(404, "no such activation")
    nodes = ctx.desk.nodes()
    for p in found["posts"]:
        node = nodes.get(p["node_id"])
        p["post_name"] = (node or {}).get("display_name") or p["node_id"]
    return found


@router.post("/api/sirens/groups", responses={403: {"description": "not allowed"},
                                             409: {"description": "not confirmed, or no posts"},
                                             503: {"description": "no broker connection"}})
async def start_group(request: Request, who: Writer, body: GroupIn) -> dict[str, Any]:
    """Sound every post of an RT, an RW, a kelurahan or the whole city."""
    ctx = ctx_of(request)
    _staff(who)
    if body.scope == "city":
        require_roles(who, Role.ADMIN)
        if not body.confirm:
            raise HTTPException(409, "a city-wide activation must be confirmed")
    try:
        scope = Scope(body.scope, body.kelurahan_code, body.rw, body.rt)
    except SirenControlError as exc:
        raise HTTPException(422, str(exc)) from None
    if body.incident_id is not None:
        incident = ctx.desk.book.get(body.incident_id)
        node = ctx.desk.nodes().get(incident.node_id) if incident else None
        if incident is None or not can_see_incident(who.user, incident, node):
            raise HTTPException(404, "no such incident")
        if incident.state.value not in ("new", "acknowledged"):
            raise HTTPException(409, "the incident is closed")
    try:
        out = await ctx.desk.sirens.activate(scope, body.incident_type.value, ctx.desk.nodes(),
                                             by=who.user.name, label=scope.key, incident_id=body.incident_id)
    except SirenControlError as exc:
        raise HTTPException(409 if "no posts" in str(exc) else 503, str(exc)) from None
    except Exception as exc:  # the broker dropped midway: what went out is recorded
        raise HTTPException(503, f"not all commands were published: {str(exc)[:200]}") from None
    ctx.audit.record(who.user.name, "siren_group_start", scope.key,
                     {"role": who.user.role.value, "incident_type": body.incident_type.value,
                      "posts": out["posts"], "activation_id": out["activation_id"],
                      "incident_id": body.incident_id}, who.client)
    return out


@router.post("/api/sirens/activations/{activation_id}/stop",
             responses={403: {"description": "not allowed"}, 404: {"description": "no such activation"}})
async def stop_group(request: Request, who: Writer, activation_id: ActivationId) -> dict[str, Any]:
    """Stop what an activation sounded (a targeted stop per post)."""
    ctx = ctx_of(request)
    _staff(who)
    try:
        out = await ctx.desk.sirens.stop(activation_id, who.user.name)
    except SirenControlError as exc:
        raise HTTPException(404 if "no activation" in str(exc) else 503, str(exc)) from None
    ctx.audit.record(who.user.name, "siren_group_stop", activation_id,
                     {"role": who.user.role.value, "posts": out["stops"]}, who.client)
    return out


@router.get("/api/sirens/activations")
def list_activations(request: Request, who: Who,
                     limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
    """Recent activations (groups and incident warnings), newest first."""
    _staff(who)
    return ctx_of(request).desk.sirens.recent(limit)


@router.get("/api/sirens/activations/{activation_id}", responses={404: {"description": "no such activation"}})
def activation_status(request: Request, who: Who, activation_id: ActivationId,
                      answered_after: Annotated[float | None, Query(ge=0)] = None) -> dict[str, Any]:
    """Counts confirmed / failed / pending and per-post rows (only answers received after
    ``answered_after`` when given: the page polls with the ``now`` of its previous answer)."""
    _staff(who)
    return _status(ctx_of(request), activation_id, answered_after)


@router.get("/sirens", response_class=HTMLResponse, include_in_schema=False)
def sirens_page(request: Request) -> Response:
    who = optional_principal(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    if not can_command_posts(who.user):
        return HTMLResponse("Forbidden", status_code=403)
    ctx = ctx_of(request)
    areas = sorted({(str(p.get("kelurahan_code")), int(p["rw"]), int(p["rt"]))
                    for p in ctx.desk.nodes().values()
                    if p.get("kelurahan_code") and p.get("rw") is not None and p.get("rt") is not None})
    return page(request, who, "sirens.html", activations=ctx.desk.sirens.recent(30), areas=areas,
                types=[t.value for t in IncidentType], is_admin=who.user.role is Role.ADMIN)


@router.get("/sirens/{activation_id}", response_class=HTMLResponse, include_in_schema=False)
def activation_page(request: Request, activation_id: ActivationId) -> Response:
    who = optional_principal(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    if not can_command_posts(who.user):
        return HTMLResponse("Forbidden", status_code=403)
    try:
        found = _status(ctx_of(request), activation_id)
    except HTTPException:
        return HTMLResponse("Not found", status_code=404)
    return page(request, who, "activation.html", act=found)


#: A post's confirmation of a siren command, in words.
CONFIRMATIONS = {"confirmed": N_("sounding (confirmed)"), "failed": N_("failed"),
                 "pending": N_("waiting for the post"), "no_answer": N_("no answer (expired)"),
                 "stopping": N_("Stop sent to posts"),
                 "merged": N_("merged with another incident's warning"),
                 "cancelled": N_("cancelled: the incident was closed before it was sent")}


def confirmation_text(state: str) -> str:
    return _(CONFIRMATIONS[state]) if state in CONFIRMATIONS else state


def scope_text(env: Environment, scope: str) -> str:
    """An activation's reach in words: "RW 5, Tembalang", "The whole city"..."""
    kind, _sep, rest = str(scope).partition(":")
    parts = rest.split("/") if rest else []
    area = env.filters["area_name"](parts[0]) if parts else ""
    if kind == "city":
        return _("The whole city")
    if kind == "kelurahan" and len(parts) == 1:
        return str(area)
    if kind == "rw" and len(parts) == 2:
        return f"RW {parts[1]}, {area}"
    if kind == "rt" and len(parts) == 3:
        return f"RT {parts[2]} / RW {parts[1]}, {area}"
    if kind == "incident":
        return _("Warnings of incident %(id)s") % {"id": rest}
    return str(scope)


def install(env: Environment) -> None:
    """The activation page's words (filters for the templates, strings for its script)."""
    env.filters["siren_confirmation"] = confirmation_text
    env.filters["scope_text"] = lambda scope: scope_text(env, scope)
    env.globals["siren_confirmations"] = lambda: {k: _(v) for k, v in CONFIRMATIONS.items()}
