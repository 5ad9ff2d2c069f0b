"""Snapshots are images or nothing: allow-list + magic bytes at ingest, sandboxed serving, and a
hostile HTML/JS "snapshot" opened by an admin in headless Chromium runs no script."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from central_sync.config import parse_central_config
from central_sync.ingest import IngestService
from central_sync.snapshot_policy import (
    check_snapshot_envelope,
    servable_image,
    verify_image,
)
from central_sync.store import CentralStore
from central_sync.web.testing import WebEnv
from edge.errors import SecurityError
from edge.sync.wire import SnapshotEnvelope, Topics, encode
from tests.helpers_web import listener, port_of

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256))
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
# The attack of issue 10: an HTML "snapshot" pulls a JavaScript "snapshot" (same origin, so the
# dashboard's own CSP 'self' would allow it), which reads the admin's CSRF token.
HTML = (b"<!doctype html><html><body><script>document.title='pwned-inline'</script>"
        b"<script src='/api/snapshots/snap-js-00000000000001'></script></body></html>")
JS = (b"document.title='pwned';fetch('/api/me').then(r=>r.json())"
      b".then(j=>{document.title='stolen:'+j.csrf_token;fetch('/beacon?t='+j.csrf_token)});")


def _snap(sid: str, data: bytes, content_type: str, sealed: bool = False) -> SnapshotEnvelope:
    return SnapshotEnvelope(snapshot_id=sid, node_id="pos-a", taken_at=time.time(),
                            content_type=content_type, sealed=sealed,
                            data=base64.b64encode(data).decode())


@pytest.mark.parametrize("ctype,data", [("image/jpeg", JPEG), ("image/png", PNG),
                                        ("IMAGE/JPEG; q=1", JPEG)])
def test_images_pass(ctype: str, data: bytes) -> None:
    check_snapshot_envelope(_snap("snap-ok-000000000001", data, ctype))
    assert servable_image(data) == verify_image(ctype, data)


@pytest.mark.parametrize("ctype,data", [
    ("text/html", HTML), ("application/javascript", JS), ("image/svg+xml", b"<svg onload=x>"),
    ("image/jpeg", HTML),              # declared image, bytes are not
    ("image/png", JPEG),               # wrong image type
    ("image/jpeg", b"\xff\xd8\xff"),   # magic only
    ("image/jpeg", b""),
])
def test_non_images_rejected_at_ingest(ctype: str, data: bytes) -> None:
    with pytest.raises(SecurityError) as exc:
        check_snapshot_envelope(_snap("snap-bad-00000000001", data, ctype))
    assert exc.value.reason == "snapshot_not_image"


def test_sealed_snapshot_needs_an_image_type_and_is_checked_when_served() -> None:
    check_snapshot_envelope(_snap("snap-sealed-0000001", b"opaque", "image/jpeg", sealed=True))
    with pytest.raises(SecurityError):
        check_snapshot_envelope(_snap("snap-sealed-0000002", b"opaque", "text/html", sealed=True))
    with pytest.raises(SecurityError):
        servable_image(HTML)


def test_ingest_rejects_and_counts_html_snapshot(tmp_path: Path) -> None:
    cfg = parse_central_config({"database": str(tmp_path / "c.db")})
    store = CentralStore(cfg.database)
    try:
        svc = IngestService(cfg, store)
        topic = Topics(cfg.topic_prefix).up("pos-a", "snapshot")
        for sid, data, ctype in (("snap-html-0000000001", HTML, "text/html"),
                                 ("snap-html-0000000002", HTML, "image/jpeg")):
            asyncio.run(svc.handle_message(topic, encode(_snap(sid, data, ctype))))
            assert store.get_snapshot(sid) is None
        assert svc.stats.rejected == {"snapshot_not_image": 2}
        # Settled for good: the post is told (in its next Ack) to stop resending them.
        due = svc._acks_due.acks(time.time())
        assert [(a.node_id, a.snapshot_ids) for a in due] == [
            ("pos-a", ["snap-html-0000000001", "snap-html-0000000002"])]
        asyncio.run(svc.flush_rejections())  # rejections are written aggregated, per interval
        assert store.rejection_counts() == {"snapshot_not_image": 2}
    finally:
        store.close()


# -- serving ------------------------------------------------------------------------------------


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebEnv]:
    env = WebEnv(tmp_path / "central.db")
    env.user("admin", "admin")
    # Rows that bypass ingest: what an unsealed sealed snapshot, or a row stored before the
    # policy existed, could hold.
    for sid, data, ctype in (("snap-jpeg-0000000001", JPEG, "image/jpeg"),
                             ("snap-png-as-jpeg-001", PNG, "image/jpeg"),
                             ("snap-html-0000000001", HTML, "text/html"),
                             ("snap-js-00000000000001", JS, "application/javascript"),
                             ("snap-poly-0000000001", JPEG[:3] + HTML, "text/html")):
        env.store.insert_snapshot(_snap(sid, data, ctype), time.time())
    try:
        yield env
    finally:
        env.close()


def test_served_images_are_sandboxed_typed_by_their_bytes(web: WebEnv) -> None:
    admin, _ = web.client("admin")
    r = admin.get("/api/snapshots/snap-jpeg-0000000001")
    assert r.status_code == 200 and r.content == JPEG
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "sandbox; default-src 'none'"
    assert r.headers["content-disposition"] == 'inline; filename="snap-jpeg-0000000001.jpg"'
    r = admin.get("/api/snapshots/snap-png-as-jpeg-001", params={"download": "true"})
    assert r.headers["content-type"] == "image/png"        # what the bytes are, not the claim
    assert r.headers["content-disposition"].startswith("attachment;")
    # a polyglot starting with JPEG magic is served as an image, sandboxed: never as HTML
    r = admin.get("/api/snapshots/snap-poly-0000000001")
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["content-security-policy"] == "sandbox; default-src 'none'"


@pytest.mark.parametrize("sid", ["snap-html-0000000001", "snap-js-00000000000001"])
def test_non_images_are_never_served(web: WebEnv, sid: str) -> None:
    admin, _ = web.client("admin")
    r = admin.get(f"/api/snapshots/{sid}")
    assert r.status_code == 415
    assert b"<script" not in r.content and b"pwned" not in r.content
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in r.headers["content-security-policy"]
    log = web.ctx.access.recent()
    assert log[0]["object_id"] == sid and log[0]["allowed"] == 0


# -- a real browser -----------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


class Server:
    """The web app under uvicorn on a loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        sock = listener()  # bound before the server starts: nobody can take the port meanwhile
        self.port = port_of(sock)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_config=None, access_log=False,
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "web app did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")
def test_hostile_snapshot_runs_no_script_in_admin_browser(web: WebEnv) -> None:
    from playwright.sync_api import sync_playwright

    with Server(web.app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            page.goto(f"{base}/login")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", WebEnv.PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            for sid in ("snap-html-0000000001", "snap-js-00000000000001",
                        "snap-poly-0000000001", "snap-jpeg-0000000001"):
                requests.clear()
                page.goto(f"{base}/api/snapshots/{sid}")
                page.wait_for_load_state("load")
                title = page.evaluate("document.title")
                assert "pwned" not in title and "stolen" not in title, (sid, title)
                assert not any("/beacon" in u or u.endswith("/api/me") for u in requests), \
                    (sid, requests)
            # The dashboard itself loading a snapshot as a script: refused (nosniff + not JS).
            page.goto(f"{base}/")
            requests.clear()
            loaded = page.evaluate("""sid => new Promise(done => {
                const s = document.createElement('script');
                s.src = '/api/snapshots/' + sid;
                s.onload = () => done('loaded'); s.onerror = () => done('blocked');
                document.head.appendChild(s);
            })""", "snap-poly-0000000001")
            assert loaded == "blocked"
            assert "pwned" not in page.evaluate("document.title")
        finally:
            browser.close()
