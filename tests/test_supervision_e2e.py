"""Supervision end to end: real Mosquitto, a real post process (the post's own sync service, its
MQTT will), a simulated post speaking the real wire that dies silently (no will ever arrives: it
stays connected and stops talking), a real central (IngestService) and TWO real desk web apps on
one store (two sweepers), read over HTTP as an operator's browser would.

* Powered off -> shown offline within offline_after_s and a margin (measured and printed), one
  POST_OFFLINE incident each despite two sweepers, the restore recorded when the post comes back.
  CI runs it with every period scaled down (3 s heartbeats, offline after 10 s); the default
  timings (<= 60 s) are a soak (``slow``, ``KENTONGAN_SOAK=1``).
* Central cut from the broker -> the banner, every post "unknown", and no POST_OFFLINE opened
  however long it lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import uvicorn
from helpers_sync import node_config, wait_until

from central_sync.broker import LocalMosquitto
from central_sync.config import parse_central_config
from central_sync.ingest import IngestService
from central_sync.store import CentralStore
from central_sync.supervision_settings import SupervisionSettings
from central_sync.users import UserStore
from central_sync.web.app import context_of, create_app
from central_sync.web.desk import Desk
from central_sync.web.server import DeskServer
from edge import __version__
from edge.sync.wire import Heartbeat, Presence, Topics, encode
from tests.helpers_web import listener, port_of

HELPER = Path(__file__).resolve().parent / "helpers_sync.py"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
PASSWORD = "correct horse battery"
#: A powered-off post is shown offline within this (docs/desk.md "Supervision").
TARGET_S = 60.0
SOAK = os.environ.get("KENTONGAN_SOAK") == "1"


class Central:
    """Ingest and N desk web apps on one event loop in a thread."""

    def __init__(self, cfg: Any, store: CentralStore, webs: int) -> None:
        self.cfg, self.store = cfg, store
        self.ingest = IngestService(cfg, store)
        self.socks = [listener() for _ in range(webs)]  # bound now: nobody takes them first
        self.ports = [port_of(s) for s in self.socks]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.main: asyncio.Task[Any] | None = None
        self.servers: list[DeskServer] = []
        self.desks: list[Desk] = []
        self.tasks: list[asyncio.Future[Any]] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="central", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.main = asyncio.current_task()
            self.ready.set()
            await self.ingest.run()

        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(main())

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(10)

        async def go() -> None:
            for sock, port in zip(self.socks, self.ports, strict=True):
                app = create_app(self.cfg, self.store, self.ingest)
                server = DeskServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                                   access_log=False, lifespan="on"), context_of(app).hub)
                self.servers.append(server)
                self.desks.append(context_of(app).desk)
                self.tasks.append(asyncio.ensure_future(server.serve(sockets=[sock])))

        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(30)
        wait_until(lambda: all(s.started for s in self.servers), 30, what="web servers up")

    def stop(self) -> None:
        async def halt() -> None:
            for server in self.servers:
                server.should_exit = True
            await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 20)

        if self.loop is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(halt(), self.loop).result(30)
            if self.main is not None:
                self.loop.call_soon_threadsafe(self.main.cancel)
        self.thread.join(15)

    def sweeps_after(self, t: float) -> bool:
        """Every desk has swept (read central's sight) after ``t``."""
        return all(d.supervisor.link.checked_at > t for d in self.desks)


class Operator:
    """An operator's logged-in HTTP session on one desk."""

    def __init__(self, port: int) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20)
        r = self.http.post("/api/login", json={"username": "op", "password": PASSWORD})
        assert r.status_code == 200, r.text

    def status(self, node_id: str) -> str:
        r = self.http.get(f"/api/nodes/{node_id}/supervision")
        return str(r.json()["status"]) if r.status_code == 200 else "absent"

    def offline_incidents(self) -> list[dict[str, Any]]:
        return [i for i in self.http.get("/api/incidents").json() if i["type"] == "POST_OFFLINE"]

    def link(self) -> dict[str, Any]:
        return dict(self.http.get("/api/central-link").json())

    def close(self) -> None:
        self.http.close()


class SilentPost:
    """A post on the real wire without a will: presence, then a heartbeat every ``every`` s.
    ``power_off`` stops it talking while its TCP connection stays up, so no will can arrive:
    only silence tells central."""

    def __init__(self, broker: LocalMosquitto, node_id: str, every: float) -> None:
        self.node_id, self.every, self.topics = node_id, every, Topics()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{node_id}",
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.1, 1.0)  # back within a second of the broker's return
        self.client.connect(broker.host, broker.port, keepalive=600)
        self.client.loop_start()
        self.talking = threading.Event()
        self.talking.set()
        self.stopped = threading.Event()
        self.last_beat = 0.0
        self.beats = 0
        self.client.publish(self.topics.up(node_id, "presence"), encode(Presence(
            node_id=node_id, state="online", boot_id="sim", version=__version__, at=time.time(),
            kelurahan_code="33.74.10.1001", rw=5, rt=4, display_name="Pos Diam")), qos=1, retain=True)
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.is_set():
            if self.talking.is_set():
                hb = Heartbeat(node_id=self.node_id, boot_id="sim", at=time.time(), version=__version__,
                               time_quality="synced")
                self.client.publish(self.topics.up(self.node_id, "heartbeat"), encode(hb), qos=0)
                self.last_beat = time.time()
                self.beats += 1
            self.stopped.wait(self.every)

    def power_off_after_a_beat(self) -> float:
        """Stop talking right after a heartbeat (the worst case: a whole threshold to wait)."""
        seen = self.beats
        wait_until(lambda: self.beats > seen, self.every * 3 + 30, what="a heartbeat")
        self.talking.clear()
        return time.time()

    def close(self) -> None:
        self.stopped.set()
        self.client.loop_stop()
        self.client.disconnect()


def _central(tmp_path: Path, broker: LocalMosquitto, webs: int, supervision: dict[str, Any]) -> Central:
    cfg = parse_central_config({
        "database": str(tmp_path / "central.db"),
        "broker": {"host": broker.host, "port": broker.port, "client_id": "central-sup",
                   "reconnect_min_seconds": 0.1, "reconnect_max_seconds": 1.0},
        "ingest": {"batch_wait_ms": 5},
        "web": {"host": "127.0.0.1", "supervision": supervision},
    })
    store = CentralStore(cfg.database)
    UserStore(store.desk()).add("op", "operator", PASSWORD)
    c = Central(cfg, store, webs)
    c.start()
    return c


def _spawn_post(tmp_path: Path, port: int, node_id: str, heartbeat_s: float) -> subprocess.Popen[bytes]:
    cfg_path = tmp_path / f"{node_id}.json"
    cfg_path.write_text(node_config(port, node_id, heartbeat_seconds=heartbeat_s).model_dump_json())
    proc = subprocess.Popen([sys.executable, str(HELPER), str(cfg_path), str(tmp_path / f"{node_id}.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"node-ready"
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)


def test_default_thresholds_meet_the_60_s_target() -> None:
    """The defaults the soak below runs with: two missed post heartbeats and a margin, plus one
    sweep, fit inside the 60 s target (the CI test scales every period down by the same rule)."""
    s = SupervisionSettings()
    heartbeat = node_config(1883).sync.heartbeat_seconds
    assert s.offline_after_s >= 2 * heartbeat + 5
    assert s.offline_after_s + s.sweep_s <= TARGET_S


def test_powered_off_posts_are_shown_offline_in_time_with_one_incident_each(
        tmp_path: Path, mosquitto: LocalMosquitto, procs: list[subprocess.Popen[bytes]]) -> None:
    """CI bound: posts heartbeat every 3 s, offline after 10 s (two missed heartbeats and a
    margin, the defaults' rule scaled down); shown offline within 25 s on a busy machine."""
    _powered_off(tmp_path, mosquitto, procs, heartbeat_s=3.0, offline_after_s=10.0, limit_s=25.0)


@pytest.mark.slow
@pytest.mark.skipif(not SOAK, reason="set KENTONGAN_SOAK=1 for the run at the default timings")
def test_powered_off_posts_are_shown_offline_within_60_s_at_the_defaults(
        tmp_path: Path, mosquitto: LocalMosquitto, procs: list[subprocess.Popen[bytes]]) -> None:
    """The default timings (20 s heartbeats, offline after 50 s): shown offline within 60 s."""
    _powered_off(tmp_path, mosquitto, procs, heartbeat_s=20.0, offline_after_s=None, limit_s=TARGET_S)


def _powered_off(tmp_path: Path, mosquitto: LocalMosquitto, procs: list[subprocess.Popen[bytes]], *,
                 heartbeat_s: float, offline_after_s: float | None, limit_s: float) -> None:
    supervision = {} if offline_after_s is None else {"offline_after_s": offline_after_s}
    central = _central(tmp_path, mosquitto, webs=2, supervision=supervision)
    ops = [Operator(port) for port in central.ports]
    silent = SilentPost(mosquitto, "pos-diam", every=heartbeat_s)
    try:
        procs.append(_spawn_post(tmp_path, mosquitto.port, "pos-real", heartbeat_s))
        for node in ("pos-real", "pos-diam"):
            wait_until(lambda n=node: all(op.status(n) == "online" for op in ops), 60, what=f"{node} online")
        assert not ops[0].link()["blind"]

        # Power off: the real post is killed (its TCP connection drops, the broker sends its
        # will); the silent one just stops talking (no will: only silence tells central).
        off_silent = silent.power_off_after_a_beat()
        off_real = time.time()
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        shown: dict[str, float] = {}

        def both_offline() -> bool:
            for node, off in (("pos-real", off_real), ("pos-diam", off_silent)):
                if node not in shown and all(op.status(node) == "offline" for op in ops):
                    shown[node] = time.time() - off
            return len(shown) == 2

        wait_until(both_offline, 120, interval=0.2, what="both posts shown offline")
        print(f"\npost powered off -> shown offline: killed post (its will) {shown['pos-real']:.1f} s, "
              f"silent death (no will) {shown['pos-diam']:.1f} s")
        assert shown["pos-real"] <= limit_s
        assert shown["pos-diam"] <= limit_s

        wait_until(lambda: {i["node_id"] for i in ops[0].offline_incidents()} == {"pos-real", "pos-diam"},
                   30, what="a POST_OFFLINE incident for each post")
        offs = {"pos-real": off_real, "pos-diam": off_silent}
        opened = {i["node_id"]: ops[0].http.get(f"/api/incidents/{i['incident_id']}").json()["history"][0]["at"]
                  - offs[i["node_id"]] for i in ops[0].offline_incidents()}
        print(f"POST_OFFLINE opened after: {', '.join(f'{k} {v:.1f} s' for k, v in sorted(opened.items()))}")
        assert all(v <= limit_s for v in opened.values()), opened
        # Two desks sweep on: still one incident per outage.
        now = time.time()
        wait_until(lambda: central.sweeps_after(now + 5), 60, what="five more seconds of sweeps")
        incidents = ops[1].offline_incidents()
        assert sorted(i["node_id"] for i in incidents) == ["pos-diam", "pos-real"]

        # The real post comes back: online, and the incident's timeline records the restore.
        procs.append(_spawn_post(tmp_path, mosquitto.port, "pos-real", heartbeat_s))
        wait_until(lambda: ops[0].status("pos-real") == "online", 60, what="pos-real back online")
        real_incident = next(i["incident_id"] for i in incidents if i["node_id"] == "pos-real")

        def restored() -> bool:
            detail = ops[1].http.get(f"/api/incidents/{real_incident}").json()
            return any(h["step"] == "restored" for h in detail["history"])

        wait_until(restored, 30, what="the restore recorded")
        page = ops[0].http.get(f"/incidents/{real_incident}?lang=en").text
        assert "Post offline" in page and "Post back online" in page
        post_page = ops[0].http.get("/posts/pos-real?lang=en").text
        assert 'id="availability"' in post_page and "Path availability" in post_page
        if CHROMIUM.exists():  # the post page in Chromium: offline since, availability, transmission time
            from playwright.sync_api import expect

            browser = DeskBrowser(f"http://127.0.0.1:{central.ports[0]}")
            try:
                browser.page.goto(f"http://127.0.0.1:{central.ports[0]}/posts/pos-diam")
                expect(browser.page.locator("#post-status")).to_have_attribute("data-status", "offline")
                expect(browser.page.locator("#outages")).to_contain_text("luring sejak")
                ARTIFACTS.mkdir(exist_ok=True)
                browser.page.screenshot(path=str(ARTIFACTS / "desk-1366-post-offline.png"), full_page=True)
            finally:
                browser.close()
        metrics = ops[0].http.get("/metrics").text
        assert 'kentongan_posts{state="offline"} 1.0' in metrics  # pos-diam
        assert "kentongan_central_blind 0.0" in metrics and "kentongan_post_outages_open 1.0" in metrics
    finally:
        silent.close()
        for op in ops:
            op.close()
        central.stop()


class DeskBrowser:
    """Debian's Chromium on the posts page (Bahasa Indonesia), when installed."""

    def __init__(self, base: str) -> None:
        from playwright.sync_api import sync_playwright

        self.pw = sync_playwright().start()
        self.browser = self.pw.chromium.launch(executable_path=str(CHROMIUM),
                                               args=["--no-sandbox", "--disable-gpu"])
        self.page = self.browser.new_page(viewport={"width": 1366, "height": 800})
        self.page.goto(f"{base}/login")
        self.page.fill("input[name=username]", "op")
        self.page.fill("input[name=password]", PASSWORD)
        self.page.get_by_role("button", name="Masuk").click()
        self.page.wait_for_url(f"{base}/")
        self.page.goto(f"{base}/posts")

    def close(self) -> None:
        self.browser.close()
        self.pw.stop()


def test_central_cut_from_the_broker_reads_unknown_and_pages_no_one(
        tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    offline_after = 6.0  # five missed 1 s heartbeats
    central = _central(tmp_path, mosquitto, webs=1, supervision={"offline_after_s": offline_after})
    op = Operator(central.ports[0])
    posts = [SilentPost(mosquitto, f"pos-{i}", every=1.0) for i in range(2)]
    browser: DeskBrowser | None = None
    try:
        for p in posts:
            wait_until(lambda n=p.node_id: op.status(n) == "online", 60, what=f"{p.node_id} online")
        assert 'data-blind="0"' in op.http.get("/").text
        if CHROMIUM.exists():
            from playwright.sync_api import expect

            browser = DeskBrowser(f"http://127.0.0.1:{central.ports[0]}")
            expect(browser.page.locator("#central-link")).to_be_hidden()

        cut = time.time()
        mosquitto.stop()  # central (and everyone) loses the broker
        wait_until(lambda: op.link()["blind"], 30, what="central knows it is blind")
        print(f"\ncentral cut from the broker -> banner after {time.time() - cut:.1f} s")
        html = op.http.get("/?lang=en").text
        assert 'data-blind="1"' in html and "Central cannot see the posts" in html
        assert [op.status(p.node_id) for p in posts] == ["unknown", "unknown"]
        if browser is not None:  # the open page shows the banner without a reload
            expect(browser.page.locator("#central-link")).to_be_visible(timeout=15_000)
            expect(browser.page.locator("#central-link")).to_contain_text("Pusat tidak dapat melihat pos")
            browser.page.reload()
            expect(browser.page.locator("#posts tbody")).to_contain_text("Tidak diketahui")
            ARTIFACTS.mkdir(exist_ok=True)
            browser.page.screenshot(path=str(ARTIFACTS / "desk-1366-blind.png"), full_page=True)
        metrics = op.http.get("/metrics").text
        assert 'kentongan_posts{state="unknown"} 2.0' in metrics and "kentongan_central_blind 1.0" in metrics
        # Blind for more than twice the offline threshold: nobody is paged.
        wait_until(lambda: central.sweeps_after(cut + 2.5 * offline_after), 60, what="sweeps while blind")
        assert op.offline_incidents() == []
        assert [op.status(p.node_id) for p in posts] == ["unknown", "unknown"]

        mosquitto.start()  # the link is back; the posts reconnect and talk again
        wait_until(lambda: not op.link()["blind"], 60, what="central sighted again")
        for p in posts:
            wait_until(lambda n=p.node_id: op.status(n) == "online", 60, what=f"{p.node_id} online again")
        assert 'data-blind="0"' in op.http.get("/").text
        if browser is not None:
            expect(browser.page.locator("#central-link")).to_be_hidden(timeout=15_000)
        assert op.offline_incidents() == []  # the posts were never offline, central was blind
    finally:
        if browser is not None:
            browser.close()
        for p in posts:
            p.close()
        op.close()
        central.stop()
