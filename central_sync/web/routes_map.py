"""The map: ``/map`` (Leaflet, vendored under /static/vendor/leaflet) and ``/api/map`` (posts
with positions and open incidents visible to you).

Posts are placed at the coordinates recorded at enrolment (``kentongan-central enrol --lat
--lon``, in the registry: a post's place is never what it announces); a post enrolled without
them is placed near its kelurahan's centroid from the places table (``places.py``) and marked
approximate. Tiles are optional
(``web.map_tile_url``): without them the map is a plain background with the markers, and the
page lists the same posts and incidents as text.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from central_sync.web.auth import Principal, optional_principal, principal
from central_sync.web.context import ctx_of
from central_sync.web.places import places_of
from central_sync.web.policy import can_see_node
from central_sync.web.present import type_name
from central_sync.web.routes_pages import page

router = APIRouter()
BASE_CSP = ("default-src 'self'; object-src 'none'; frame-ancestors 'none'; "
            "img-src 'self' data:")


def map_csp(tile_url: str | None) -> str:
    """The app's policy, plus the tile server's origin for images when tiles are configured."""
    if not tile_url:
        return BASE_CSP
    parts = urlsplit(tile_url.replace("{s}", "a"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return BASE_CSP
    host = parts.netloc
    if "{s}" in tile_url:
        host = "*." + host.split(".", 1)[1] if "." in host else host
    return f"{BASE_CSP} {parts.scheme}://{host}"


@router.get("/map", response_class=HTMLResponse, include_in_schema=False)
def map_page(request: Request) -> Response:
    who = optional_principal(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    settings = ctx_of(request).settings
    response = page(request, who, "map.html", tile_url=settings.map_tile_url,
                    attribution=settings.map_attribution)
    response.headers["Content-Security-Policy"] = map_csp(settings.map_tile_url)
    return response


@router.get("/api/map")
def map_data(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:  # noqa: B008
    """Posts visible to you with a position (approximate until enrolment records one) and
    their open incidents."""
    ctx = ctx_of(request)
    places = places_of(request.app.state)
    nodes = ctx.desk.nodes()
    posts: dict[str, dict[str, Any]] = {}
    for node_id, n in nodes.items():
        if not can_see_node(who.user, n):
            continue
        lat = n.get("lat")
        lon = n.get("lon")
        approx = False
        if lat is None or lon is None:
            pos = places.post_position(n.get("kelurahan_code"), n.get("rw"), n.get("rt"))
            lat, lon, approx = (pos.lat, pos.lon, True) if pos else (None, None, True)
        posts[node_id] = {
            "node_id": node_id, "name": n.get("display_name") or node_id,
            "area": places.area(n.get("kelurahan_code")), "rw": n.get("rw"), "rt": n.get("rt"),
            "status": n.get("status") or ("online" if n.get("online") else "offline"),
            "lat": lat, "lon": lon, "approx": approx}
    incidents = []
    for inc in ctx.desk.visible(who, nodes, open_only=True):
        post = posts.get(inc.node_id)
        incidents.append({"incident_id": inc.incident_id, "node_id": inc.node_id,
                          "type": inc.type, "type_name": type_name(inc.type),
                          "priority": inc.priority, "state": inc.state.value,
                          "opened_at": inc.opened_at,
                          "post_name": post["name"] if post else inc.node_id,
                          "lat": post["lat"] if post else None,
                          "lon": post["lon"] if post else None})
    centre = places.centroid(next((n.get("kelurahan_code") for n in nodes.values()
                                   if n.get("kelurahan_code")), None))
    return {"posts": sorted(posts.values(), key=lambda p: (p["area"], p["rw"] or 0,
                                                          p["rt"] or 0, p["name"])),
            "incidents": incidents,
            "centre": [centre.lat, centre.lon] if centre else None}
