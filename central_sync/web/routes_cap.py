"""CAP 1.2 exports: the latest message of an incident, and an Atom feed of them."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import Response

from central_sync.cap import CapError, incident_xml
from central_sync.web.auth import Principal, principal
from central_sync.web.context import ctx_of
from central_sync.web.policy import can_see_incident

router = APIRouter(prefix="/api/cap")
ATOM = "http://www.w3.org/2005/Atom"
CAP_MEDIA = "application/cap+xml"


@router.get("/{incident_id}", response_class=Response,
            responses={200: {"content": {CAP_MEDIA: {}}}, 404: {"description": "not found"}})
def cap_incident(request: Request, who: Annotated[Principal, Depends(principal)],
                 incident_id: Annotated[str, Path(min_length=1, max_length=80)]) -> Response:
    """The incident's latest CAP 1.2 message (Alert, Update or Cancel)."""
    ctx = ctx_of(request)
    incident = ctx.desk.book.get(incident_id)
    node = ctx.desk.nodes().get(incident.node_id) if incident else None
    if incident is None or not can_see_incident(who.user, incident, node):
        raise HTTPException(404, "no such incident")
    try:
        body = incident_xml(incident, ctx.desk.book.history(incident_id), node,
                            sender=ctx.cap_sender, exercise=ctx.settings.cap_exercise,
                            expires_hours=ctx.settings.cap_expires_hours)
    except CapError as exc:
        raise HTTPException(422, f"cannot express as CAP: {exc}") from None
    ctx.access.record(who, "export_cap", "incident", incident_id)
    return Response(body, media_type=CAP_MEDIA)


@router.get("", response_class=Response,
            responses={200: {"content": {"application/atom+xml": {}}}})
def cap_feed(request: Request, who: Annotated[Principal, Depends(principal)]) -> Response:
    """Atom feed linking the CAP message of every incident visible to you."""
    ctx = ctx_of(request)
    feed = ET.Element("feed", {"xmlns": ATOM})
    ET.SubElement(feed, "id").text = f"urn:kentongan:cap-feed:{ctx.cap_sender}"
    ET.SubElement(feed, "title").text = "Kentongan incidents (CAP 1.2)"
    ET.SubElement(feed, "updated").text = dt.datetime.now(dt.UTC).isoformat()
    for incident in ctx.desk.visible(who)[:200]:
        entry = ET.SubElement(feed, "entry")
        ET.SubElement(entry, "id").text = f"urn:kentongan:incident:{incident.incident_id}"
        ET.SubElement(entry, "title").text = (
            f"{incident.type} at {incident.node_id} ({incident.state.value})")
        ET.SubElement(entry, "updated").text = dt.datetime.fromtimestamp(
            incident.updated_at, dt.UTC).isoformat()
        ET.SubElement(entry, "link", {
            "rel": "alternate", "type": CAP_MEDIA,
            "href": f"/api/cap/{incident.incident_id}"})
    return Response(ET.tostring(feed, encoding="utf-8", xml_declaration=True),
                    media_type="application/atom+xml")
