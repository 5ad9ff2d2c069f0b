"""End to end in a real browser: a panic published as a node would travels through the real
Mosquitto and IngestService to the dashboard, appears live without a reload, is acknowledged, and
the incident_ack command reaches the node's downlink topic.

The lead will swap the paho publisher for a simulated post (``kentongan-edge run --simulate``).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from central_sync.broker import LocalMosquitto
from central_sync.config import parse_central_config
from central_sync.ingest import IngestService
from central_sync.store import CentralStore
from central_sync.users import UserStore
from central_sync.web.app import serve
from central_sync.web.testing import event, presence, register
from edge.sync.wire import Topics, encode
from tests.helpers_web import ready_port, web_section
from tests.waits import wait_for as _wait

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
PASSWORD = "correct horse battery"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


class Central:
    """Ingest + web app on their own event loop in a thread, as ``kentongan-central run`` does."""

    def __init__(self, cfg: Any, store: CentralStore) -> None:
        self.cfg, self.store = cfg, store
        self.ingest = IngestService(cfg, store)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="central", daemon=True)

    def _main(self) -> None:
        async def both() -> None:
            self.loop = asyncio.get_running_loop()
            self.task = asyncio.current_task()
            self.ready.set()
            await asyncio.gather(self.ingest.run(), serve(self.cfg, self.store, self.ingest))

        try:
            asyncio.run(both())   # cancels and awaits every leftover task on the way out
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(10)

    def stop(self) -> None:
        if self.task is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(15)


def _launch(pw: Any) -> Any:
    """Debian's chromium, headless, as root, without background network chatter."""
    return pw.chromium.launch(
        executable_path=str(CHROMIUM),
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])


def _login(page: Any, base: str, user: str, password: str, *, goto: bool = True) -> None:
    if goto:
        page.goto(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


@pytest.fixture
def central(mosquitto: LocalMosquitto, tmp_path: Path) -> Iterator[tuple[Central, int]]:
    ready = tmp_path / "web.ready"
    cfg = parse_central_config({
        "database": str(tmp_path / "central.db"),
        "broker": {"host": mosquitto.host, "port": mosquitto.port, "client_id": "central-web"},
        "ingest": {"batch_wait_ms": 5},
        "web": web_section(ready),
    })
    store = CentralStore(cfg.database)
    UserStore(store.desk()).add("op", "operator", PASSWORD)
    c = Central(cfg, store)
    c.start()
    try:
        yield c, ready_port(ready)
    finally:
        c.stop()
        store.close()
    assert c.error is None, c.error


def test_panic_appears_live_and_is_acknowledged(mosquitto: LocalMosquitto,
                                                central: tuple[Central, int]) -> None:
    from playwright.sync_api import expect, sync_playwright

    c, port = central
    topics = Topics()
    node = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pos-melati-01",
                       protocol=mqtt.MQTTv5)
    downlink: list[dict[str, Any]] = []
    node.on_message = lambda _c, _u, msg: downlink.append(json.loads(msg.payload))
    node.connect(mosquitto.host, mosquitto.port)
    node.loop_start()
    try:
        node.subscribe(topics.down("pos-melati-01", "cmd"), qos=1)
        register(c.store, "pos-melati-01", name="Pos Ronda Melati")  # enrolled at RW 5
        node.publish(topics.up("pos-melati-01", "presence"),
                     encode(presence("pos-melati-01", display_name="Pos Ronda Melati")),
                     qos=1, retain=True).wait_for_publish(5)
        _wait(lambda: any(n["node_id"] == "pos-melati-01" and n["rw"] == 5
                          for n in c.store.list_nodes()), what="presence at central")

        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as pw:
            browser = _launch(pw)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                base = f"http://127.0.0.1:{port}"
                _login(page, base, "op", PASSWORD)
                expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=10_000)
                assert page.locator("#queue tbody tr").count() == 0
                page.evaluate("window.__notReloaded = true")

                # A panic press arrives the way a node sends it.
                panic = event("pos-melati-01", "PANIC",
                              payload={"button": "panic-1", "hold_ms": 2100})
                node.publish(topics.up("pos-melati-01", "event"), encode(panic), qos=1)

                row = page.locator("#queue tbody tr", has_text="Pos Ronda Melati")
                expect(row).to_be_visible(timeout=15_000)
                assert page.evaluate("window.__notReloaded") is True   # live, no reload
                expect(row).to_have_attribute("data-state", "new")
                expect(row.locator("td.type")).to_contain_text("Panik")
                expect(row).to_contain_text("Pos Ronda Melati")
                expect(row).to_contain_text("RW 5")
                incident_id = row.get_attribute("data-incident-id")
                assert incident_id

                row.locator("input.note").fill("unit 3 on the way")
                row.locator("button[data-act=ack]").click()
                expect(row).to_have_attribute("data-state", "acknowledged", timeout=10_000)
                page.screenshot(path=str(ARTIFACTS / "dashboard-ingest.png"), full_page=True)
            finally:
                browser.close()

        acks = _wait(lambda: [m for m in downlink if m.get("action") == "incident_ack"],
                     what="incident_ack on the downlink topic")
        assert acks[0]["node_id"] == "pos-melati-01"
        assert acks[0]["params"] == {"incident_id": incident_id, "operator": "op",
                                     "note": "unit 3 on the way"}
        recorded = [r for r in c.store.list_commands("pos-melati-01")
                    if r["action"] == "incident_ack"]
        assert recorded and recorded[0]["issued_by"] == "op"
    finally:
        node.loop_stop()
        node.disconnect()


def test_simulated_post_panic_is_acknowledged_and_the_post_records_it(tmp_path: Path) -> None:
    """The whole product path: an enrolled simulated post (`kentongan-edge run --simulate`) behind
    the production mTLS broker, central with PKI, an operator in Chromium. The panic is pressed on
    the post, appears live, is acknowledged, and the post verifies the signed incident_ack,
    plays its ack pattern and records it."""
    from playwright.sync_api import expect, sync_playwright

    from edge.demo import OPERATOR, Demo

    demo = Demo(tmp_path / "demo", posts=[("pos-melati-01", "Pos Ronda Melati", 5, 3)])
    try:
        demo.start()
        post_cfg = str(demo.post_cfgs[0])
        base = f"http://127.0.0.1:{demo.web_port}"
        _wait(lambda: "online" in (demo._ok(lambda: demo.central(
            "nodes", "--config", str(demo.central_cfg))) or ""), timeout=30,
            what="post online at central")
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as pw:
            browser = _launch(pw)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                _wait(lambda: demo._ok(lambda: page.goto(f"{base}/login")), timeout=30,
                      what="dashboard up")
                _login(page, base, *OPERATOR, goto=False)
                expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=10_000)
                page.evaluate("window.__notReloaded = true")

                demo.edge("sim", "press", "panic", "--hold", "2.3", "--config", post_cfg)
                row = page.locator("#queue tbody tr", has_text="Pos Ronda Melati")
                expect(row).to_be_visible(timeout=20_000)
                assert page.evaluate("window.__notReloaded") is True
                expect(row).to_contain_text("Pos Ronda Melati")
                incident_id = row.get_attribute("data-incident-id")
                row.locator("input.note").fill("patroli Polsek menuju lokasi")
                row.locator("button[data-act=ack]").click()
                expect(row).to_have_attribute("data-state", "acknowledged", timeout=10_000)
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            finally:
                browser.close()

        def acked_at_post() -> dict[str, Any] | None:
            st = demo.status(0)
            return st if st["outbox"].get("by_type", {}).get("INCIDENT_ACK") else None

        st = _wait(acked_at_post, timeout=30, what="the post to record the acknowledgement")
        assert st["open_incidents"]["PANIC"]["acknowledged_by"] == OPERATOR[0]
        # The acknowledgement tune may already be over: its trigger is kept as the last one.
        trig = st["siren"]["last_trigger"]
        assert trig is not None and trig["source"] == "command"
        assert trig["incident_type"] == "INCIDENT_ACK"
        _wait(lambda: [e for e in demo.central_events() if e["type"] == "INCIDENT_ACK"],
              timeout=20, what="INCIDENT_ACK event synced back to central")
        acks = [e for e in demo.central_events() if e["type"] == "INCIDENT_ACK"]
        assert acks[0]["payload"]["operator"] == OPERATOR[0]
        # The dashboard's incident is the post's own incident: one id end to end.
        assert acks[0]["incident_id"] == incident_id == st["open_incidents"]["PANIC"]["incident_id"]
    finally:
        demo.stop()
