"""Operations of the desk: /metrics (Prometheus text, parsed with prometheus_client's own parser),
/api/docs from vendored Swagger UI under a CSP that allows only its hashed inline script, the
locally synthesised alarm sound, the map data."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from central_sync.web.routes_map import map_csp
from central_sync.web.testing import WebEnv, event


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    e = WebEnv(tmp_path / "central.db")
    e.node("pos-a", "33.74.10.1005/5/3")
    e.node("pos-b", "33.74.10.1005/6/1")
    e.user("op", "operator")
    yield e
    e.close()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_follow_the_desk(env: WebEnv) -> None:
    op, csrf = env.client("op")
    r = op.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    before = _samples(r.text)
    assert before[("kentongan_incidents_unacknowledged", (("priority", "1"),))] == 0
    assert before[("kentongan_posts", (("state", "online"),))] == 2

    ids = env.events(event("pos-a", "PANIC"), event("pos-b", "KEBAKARAN"))
    after = _samples(op.get("/metrics").text)
    assert after[("kentongan_incidents_unacknowledged", (("priority", "1"),))] == 2
    assert after[("kentongan_incidents_open", (("priority", "1"),))] == 2
    assert after[("kentongan_stream_changes_total", ())] >= 2
    assert after[("kentongan_ingest_last_event_age_seconds", ())] >= 0
    assert after[("kentongan_ingest_lag_seconds", ())] >= 0

    inc = env.incident_of(ids[0])
    assert op.post(f"/api/incidents/{inc}/ack", json={"note": ""},
                   headers={"X-CSRF-Token": csrf}).status_code == 200
    acked = _samples(op.get("/metrics").text)
    assert acked[("kentongan_incidents_unacknowledged", (("priority", "1"),))] == 1
    assert acked[("kentongan_incidents_open", (("priority", "1"),))] == 2


def test_api_docs_are_served_from_local_assets_under_csp(env: WebEnv) -> None:
    r = env.anon.get("/api/docs")
    assert r.status_code == 200
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in r.text
    assert "cdn.jsdelivr" not in r.text and "https://" not in r.text.split("<body>")[1]
    csp = r.headers["content-security-policy"]
    inline = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp and "unsafe-inline" not in csp
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "LICENSE"):
        assert env.anon.get(f"/static/vendor/swagger-ui/{asset}").status_code == 200
    # Every other page keeps the strict policy.
    assert "sha256" not in env.anon.get("/login").headers["content-security-policy"]


def test_alarm_sound_is_a_small_valid_wav(env: WebEnv) -> None:
    r = env.anon.get("/sounds/alarm.wav")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(r.content)) as w:
        seconds = w.getnframes() / w.getframerate()
        assert 0.5 < seconds < 2 and w.getnchannels() == 1
    assert len(r.content) < 40_000


def test_map_places_posts_and_open_incidents(env: WebEnv) -> None:
    op, _ = env.client("op")
    env.events(event("pos-a", "PANIC"))
    data = op.get("/api/map").json()
    posts = {p["node_id"]: p for p in data["posts"]}
    assert set(posts) == {"pos-a", "pos-b"}
    assert all(p["lat"] is not None and p["approx"] for p in posts.values())
    assert posts["pos-a"]["area"] == "Kelurahan 33.74.10.1005, Kecamatan Tembalang"
    [inc] = data["incidents"]
    assert inc["type_name"] == "Panik" and (inc["lat"], inc["lon"]) == (
        posts["pos-a"]["lat"], posts["pos-a"]["lon"])
    page = op.get("/map")
    assert page.status_code == 200 and "/static/vendor/leaflet/leaflet.js" in page.text
    assert env.anon.get("/static/vendor/leaflet/leaflet.js").status_code == 200
    assert env.anon.get("/api/map").status_code == 401


def test_map_csp_allows_only_the_configured_tile_server() -> None:
    assert "https://" not in map_csp(None)
    assert map_csp("https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png").endswith(
        "img-src 'self' data: https://*.tile.openstreetmap.org")
    assert map_csp("http://tiles.local:8081/{z}/{x}/{y}.png").endswith(
        "http://tiles.local:8081")
    assert "javascript" not in map_csp("javascript:alert(1)")
