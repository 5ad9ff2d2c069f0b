"""Operations: ``/metrics`` (Prometheus), ``/api/docs`` (Swagger UI from vendored assets) and the
desk's alarm sound.

Swagger UI comes from the npm package swagger-ui-dist, vendored under
/static/vendor/swagger-ui (see VERSIONS.txt there). FastAPI's ``get_swagger_ui_html`` writes one
inline script to start it; rather than loosen the app's Content-Security-Policy for every page,
this one response carries a policy that allows exactly that script by its SHA-256 hash.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from central_sync.web.sound import alarm_wav

router = APIRouter(include_in_schema=False)
VENDOR = "/static/vendor/swagger-ui"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def csp_with_script_hashes(html: str) -> str:
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html))
    return ("default-src 'self'; img-src 'self' data:; object-src 'none'; "
            f"frame-ancestors 'none'; script-src 'self' {hashes}")


@router.get("/api/docs")
def docs(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title=f"{request.app.title} - API",
        swagger_js_url=f"{VENDOR}/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR}/swagger-ui.css",
        swagger_favicon_url=f"{VENDOR}/favicon-32x32.png")
    html = bytes(page.body).decode()
    return HTMLResponse(html, headers={"Content-Security-Policy": csp_with_script_hashes(html)})


@router.get("/metrics")
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST,
                    headers={"Cache-Control": "no-store"})


@router.get("/sounds/alarm.wav")
def alarm_sound() -> Response:
    return Response(alarm_wav(), media_type="audio/wav",
                    headers={"Cache-Control": "public, max-age=86400"})
