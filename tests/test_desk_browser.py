"""The command-centre desk in Debian's Chromium (Playwright): Bahasa Indonesia, P1 attention
(banner, alarm sound, title, notification, per-incident mute), a P1 that arrives while the
central web process is restarting appears without a reload within 5 s of the stream returning,
acknowledgement from a phone-sized screen, and no sideways scrolling at 375 px.

Events travel the real path: a paho client publishes as a post would, to a real Mosquitto,
into IngestService and the real CentralStore; the web app is restarted as a new app (new hub,
new desk) on the same port and database, as a restarted process would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import uvicorn

from central_sync.broker import LocalMosquitto
from central_sync.config import parse_central_config
from central_sync.ingest import IngestService
from central_sync.store import CentralStore
from central_sync.users import UserStore
from central_sync.web.app import context_of, create_app
from central_sync.web.server import DeskServer
from central_sync.web.testing import event, presence, register
from edge.sync.wire import Topics, encode
from tests.helpers_web import listener, port_of
from tests.waits import wait_for as _wait

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
DOCS_IMG = ROOT / "docs" / "img"
PASSWORD = "correct horse battery"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


class Central:
    """Ingest and the web app on one event loop in a thread; the web app can be restarted (on the
    same listening socket, held by the test: the port stays ours while the server is down)."""

    def __init__(self, cfg: Any, store: CentralStore) -> None:
        self.cfg, self.store = cfg, store
        self.sock = listener()
        self.port = port_of(self.sock)
        self.ingest = IngestService(cfg, store)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.main: asyncio.Task[Any] | None = None
        self.server: uvicorn.Server | None = None
        self.web: asyncio.Future[Any] | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="central", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.main = asyncio.current_task()
            self.ready.set()
            await self.ingest.run()

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            self.error = exc

    def _call(self, fn: Any) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(30)

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(10)
        self.start_web()

    def start_web(self) -> None:
        """A fresh web app (new live hub, new desk) on the same port and database."""
        async def go() -> None:
            # The app learns of ingest's commits from the store's change feed.
            app = create_app(self.cfg, self.store, self.ingest)
            self.server = DeskServer(uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=2, lifespan="on"), context_of(app).hub)
            self.web = asyncio.ensure_future(self.server.serve(sockets=[self.sock.dup()]))

        self._call(go)
        _wait(lambda: self.server is not None and self.server.started, 20, "web server up")

    def stop_web(self) -> None:
        async def go() -> None:
            assert self.server is not None and self.web is not None
            self.server.should_exit = True
            await asyncio.wait_for(self.web, 20)

        self._call(go)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_web()
        if self.main is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.main.cancel)
        self.thread.join(15)
        self.sock.close()


@pytest.fixture
def central(mosquitto: LocalMosquitto, tmp_path: Path) -> Iterator[Central]:
    cfg = parse_central_config({
        "database": str(tmp_path / "central.db"),
        "broker": {"host": mosquitto.host, "port": mosquitto.port, "client_id": "central-desk"},
        "ingest": {"batch_wait_ms": 5},
        # The test's posts publish presence and events but no heartbeats: unsupervised, so the
        # queue holds only the alarms under test, not their POST_OFFLINE incidents.
        "web": {"host": "127.0.0.1", "port": 0, "supervision": {"supervised_by_default": False}},
    })
    store = CentralStore(cfg.database)
    UserStore(store.desk()).add("op", "operator", PASSWORD)
    c = Central(cfg, store)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        store.close()
    assert c.error is None, c.error


class Posts:
    """Two posts publishing as a node does (presence retained, events QoS 1)."""

    NODES = (("pos-melati-01", "Pos Ronda Melati", 5, 3), ("pos-mawar-02", "Pos Ronda Mawar", 6, 1))

    def __init__(self, broker: LocalMosquitto) -> None:
        self.topics = Topics()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-posts",
                                  protocol=mqtt.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def announce(self, store: CentralStore) -> None:
        for node_id, name, rw, rt in self.NODES:
            register(store, node_id, f"33.74.10.1005/{rw}/{rt}", name=name)  # the enrolled place
            self.client.publish(self.topics.up(node_id, "presence"),
                                encode(presence(node_id, "33.74.10.1005", rw, rt, name)),
                                qos=1, retain=True).wait_for_publish(5)

    def panic(self, node_id: str) -> str:
        env = event(node_id, "PANIC", payload={"button": "panic", "hold_ms": 2300})
        self.client.publish(self.topics.up(node_id, "event"), encode(env),
                            qos=1).wait_for_publish(5)
        return env.event_id

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _no_sideways_scroll(page: Any) -> None:
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{page.url} is {width[0]} px wide in a {width[1]} px window"


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    if os.environ.get("KENTONGAN_UPDATE_DOC_IMAGES") == "1":  # refresh the copies in docs/img
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACTS / name, DOCS_IMG / name)


# Records desktop notifications the page raises (the real constructor still runs).
RECORD_NOTIFICATIONS = """
(() => {
  const Real = window.Notification;
  window.__notifications = [];
  if (!Real) return;
  class Recorded extends Real {
    constructor(title, options) { super(title, options); window.__notifications.push(title); }
  }
  Object.defineProperty(Recorded, "permission", {get: () => Real.permission});
  Recorded.requestPermission = (...a) => Real.requestPermission(...a);
  window.Notification = Recorded;
})();
"""


def test_desk_attention_resync_after_restart_and_phone_layout(
        mosquitto: LocalMosquitto, central: Central) -> None:
    from playwright.sync_api import expect, sync_playwright

    posts = Posts(mosquitto)
    base = f"http://127.0.0.1:{central.port}"
    try:
        posts.announce(central.store)
        _wait(lambda: len(central.store.list_nodes()) == 2, what="posts known at central")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--autoplay-policy=no-user-gesture-required"])
            try:
                context = browser.new_context(viewport={"width": 1366, "height": 800})
                context.grant_permissions(["notifications"], origin=base)
                context.add_init_script(RECORD_NOTIFICATIONS)
                page = context.new_page()

                # Log in, in Bahasa Indonesia.
                page.goto(f"{base}/login")
                expect(page.locator("html")).to_have_attribute("lang", "id")
                expect(page.locator("h1")).to_have_text("Masuk pusat komando")
                page.fill("input[name=username]", "op")
                page.fill("input[name=password]", PASSWORD)
                page.get_by_role("button", name="Masuk").click()
                page.wait_for_url(f"{base}/")
                expect(page.locator("h1")).to_contain_text("Antrean kejadian")
                live = page.locator("#live")
                expect(live).to_have_attribute("data-state", "live", timeout=15_000)
                expect(live).to_have_text("tersambung")
                page.evaluate("window.__notReloaded = true")

                # A P1 arrives: row, banner, the alarm sound playing, title, notification.
                posts.panic("pos-melati-01")
                first = page.locator("#queue tbody tr", has_text="Pos Ronda Melati")
                expect(first).to_be_visible(timeout=15_000)
                expect(first.locator("td.type")).to_contain_text("Panik")
                expect(first.locator("td.state")).to_have_text("Baru")
                expect(first.locator("td.where")).to_contain_text("Kecamatan Tembalang")
                banner = page.locator("#attention")
                expect(banner).to_be_visible(timeout=10_000)
                expect(banner).to_contain_text("Pos Ronda Melati")
                page.wait_for_function(
                    "() => { const a = document.getElementById('alarm-sound');"
                    " return !a.paused && a.loop && a.currentTime > 0; }", timeout=10_000)
                page.wait_for_function("() => document.title.includes('P1')", timeout=5_000)
                page.wait_for_function("() => window.__notifications.length === 1",
                                       timeout=5_000)
                _shot(page, "desk-1366-p1.png")

                # Central's web process restarts; a second P1 arrives meanwhile.
                central.stop_web()
                expect(live).not_to_have_attribute("data-state", "live", timeout=30_000)
                expect(live).to_contain_text(re.compile("menyambung ulang|terputus"))
                stored_before = central.store.count_events()
                posts.panic("pos-mawar-02")
                _wait(lambda: central.store.count_events() > stored_before, 20,
                      "the second panic stored by ingest while the web is down")
                central.start_web()
                returned = time.monotonic()
                second = page.locator("#queue tbody tr", has_text="Pos Ronda Mawar")
                expect(second).to_be_visible(timeout=5_000)
                took = time.monotonic() - returned
                assert took <= 5.0, took
                assert page.evaluate("window.__notReloaded") is True      # no reload
                expect(live).to_have_attribute("data-state", "live", timeout=5_000)
                expect(banner.locator("li")).to_have_count(2, timeout=5_000)
                print(f"\nsecond P1 on screen {took:.2f} s after the web process returned")

                # Mute is per incident: muting one keeps the other sounding.
                banner.locator("li", has_text="Pos Ronda Melati").locator(
                    "button[data-mute]").click()
                page.wait_for_timeout(300)
                assert page.evaluate("!document.getElementById('alarm-sound').paused")
                banner.locator("li", has_text="Pos Ronda Mawar").locator(
                    "button[data-mute]").click()
                page.wait_for_function("() => document.getElementById('alarm-sound').paused",
                                       timeout=5_000)
                expect(banner).to_be_visible()                   # muted is not acknowledged
                banner.locator("li", has_text="Pos Ronda Mawar").locator(
                    "button[data-mute]").click()                 # sound it again
                page.wait_for_function("() => !document.getElementById('alarm-sound').paused",
                                       timeout=5_000)

                # Acknowledge the first at the desk.
                first.locator("input.note").fill("unit 3 menuju lokasi")
                first.get_by_role("button", name="Tanggapi").click()
                expect(first.locator("td.state")).to_have_text("Ditanggapi", timeout=10_000)
                expect(banner.locator("li")).to_have_count(1, timeout=5_000)

                # On a phone: the queue, Acknowledge and the incident page at 375 px.
                phone = context.new_page()
                phone.set_viewport_size({"width": 375, "height": 740})
                phone.goto(f"{base}/")
                expect(phone.locator("#live")).to_have_attribute("data-state", "live",
                                                                 timeout=15_000)
                _no_sideways_scroll(phone)
                _shot(phone, "desk-375-queue.png")
                row = phone.locator("#queue tbody tr", has_text="Pos Ronda Mawar")
                ack = row.get_by_role("button", name="Tanggapi")
                box = ack.bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
                incident_id = row.get_attribute("data-incident-id")
                ack.click()
                expect(row.locator("td.state")).to_have_text("Ditanggapi", timeout=10_000)
                expect(phone.locator("#attention")).to_be_hidden(timeout=10_000)
                phone.wait_for_function("() => document.getElementById('alarm-sound').paused",
                                        timeout=5_000)
                _no_sideways_scroll(phone)
                phone.goto(f"{base}/incidents/{incident_id}")
                expect(phone.locator("#inc-state")).to_have_text("Ditanggapi")
                expect(phone.locator("main")).to_contain_text("Ditekan selama")
                _no_sideways_scroll(phone)
                _shot(phone, "desk-375-incident.png")
                for path in ("/posts", "/map", "/?lang=en"):
                    phone.goto(f"{base}{path}")
                    _no_sideways_scroll(phone)
                phone.goto(f"{base}/?lang=id")

                # The desk's first tab follows: banner gone, sound stopped, title restored.
                expect(banner).to_be_hidden(timeout=10_000)
                page.wait_for_function("() => document.getElementById('alarm-sound').paused",
                                       timeout=5_000)
                page.wait_for_function("() => !document.title.includes('P1')", timeout=5_000)
                _shot(page, "desk-1366-acknowledged.png")

                # The map and the API docs load from local assets.
                page.goto(f"{base}/map")
                expect(page.locator("#map-incidents li")).to_have_count(2, timeout=10_000)
                expect(page.locator("#map .leaflet-interactive")).to_have_count(4,
                                                                                timeout=10_000)
                _shot(page, "desk-1366-map.png")
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(f"{base}/api/docs")
                expect(page.locator(".swagger-ui .info .title")).to_contain_text(
                    "Kentongan", timeout=15_000)
                assert not [e for e in errors if "Content Security Policy" in e], errors
            finally:
                browser.close()
    finally:
        posts.close()
