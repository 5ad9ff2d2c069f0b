"""A stolen post that lies about its place (issue 10, item 1), end to end.

Real Mosquitto with the production config (mTLS, CRL, ACL), a real CA, posts enrolled with
``kentongan-central enrol``, a real ``kentongan-central run`` (ingest + desk). The stolen post is a
real ``kentongan-edge run --simulate`` agent whose ``node.toml`` was edited to claim RW 1 while it
is enrolled in RW 2. It announces itself (presence claiming RW 1), then raises a robbery
(PERAMPOKAN: a crime whose audience includes the RW). The other posts are MQTT clients holding
their own enrolled certificates and signing keys; each makes itself known with a signed patrol
check-in and records every command central sends it.

Proven: central signs and publishes sound commands ONLY to the other post of the thief's
REGISTRY RW (RW 2), none to the RW 1 posts (checked on their downlink topics after an ordering
barrier, and in central's own command table); the place claim is recorded as a security event
and shown to an admin (API and post overview); the RT admin of RT 1/1 neither sees the stolen
post in their list nor can sound it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from central_sync.broker import LocalMosquitto, production_broker
from central_sync.pki import PkiFiles
from central_sync.store import CentralStore
from edge.demo import post_toml
from edge.signing import EventSigner, load_signing_key
from edge.sync.wire import EventEnvelope, Topics, encode
from tests.helpers_web import ready_port
from tests.waits import wait_for

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
KEL = "33.74.10.1005"
THIEF = "rw2-stolen"
#: node id -> (RW, RT) at enrolment. The thief is enrolled in RW 2 and will claim RW 1 / RT 1.
POSTS = {"rw1-alpha": (1, 1), "rw1-bravo": (1, 2), THIEF: (2, 1), "rw2-delta": (2, 2)}
BYSTANDERS = ("rw1-alpha", "rw1-bravo", "rw2-delta")
PASSWORD = "kata sandi yang panjang 2026"
TOPICS = Topics()


def _wait(cond: Callable[[], Any], timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.2)


def _run(args: list[str], stdin: str | None = None) -> str:
    res = subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, input=stdin)
    assert res.returncode == 0, f"{args}: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    return res.stdout


def _central_toml(d: Path, mqtt_port: int) -> str:
    pki = d / "pki"
    return f"""database = "{d / 'central.db'}"
topic_prefix = "kentongan/v1"
[broker]
host = "127.0.0.1"
port = {mqtt_port}
client_id = "central"
reconnect_min_seconds = 0.2
reconnect_max_seconds = 2.0
[broker.tls]
ca_file = "{pki / 'ca.crt'}"
cert_file = "{pki / 'central-mqtt.crt'}"
key_file = "{pki / 'central-mqtt.key'}"
[pki]
dir = "{pki}"
broker_hosts = ["127.0.0.1", "localhost"]
broker_port = {mqtt_port}
[web]
enabled = true
host = "127.0.0.1"
port = 0
ready_file = "{d / 'web.ready'}"
"""


class Bystander:
    """An enrolled post as an MQTT client with its own certificate: records its commands."""

    def __init__(self, node_id: str, bundle: Path, d: Path, ca: Path, port: int) -> None:
        self.node_id = node_id
        d.mkdir(parents=True)
        with tarfile.open(bundle) as tar:
            for name in ("keys/node.crt", "keys/node.key", "keys/signing.key"):
                member = tar.extractfile(name)
                assert member is not None
                (d / Path(name).name).write_bytes(member.read())
        self.signer = EventSigner(load_signing_key(d / "signing.key"))
        self.commands: list[dict[str, Any]] = []
        self.central_online = threading.Event()
        self.subscribed = threading.Event()
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=node_id, protocol=mqtt.MQTTv5)
        self.c.tls_set(ca_certs=str(ca), certfile=str(d / "node.crt"), keyfile=str(d / "node.key"))
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *_a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()

    def _on_connect(self, c: mqtt.Client, *_a: Any) -> None:
        c.subscribe([(f"kentongan/v1/down/{self.node_id}/#", 1), ("kentongan/v1/central/state/+", 1)])

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        if msg.topic.startswith("kentongan/v1/central/state/"):
            if data.get("state") == "online":
                self.central_online.set()
            return
        if msg.topic == TOPICS.down(self.node_id, "cmd"):
            with self.lock:
                self.commands.append(data)

    def check_in(self) -> None:
        """A signed patrol check-in: central learns of the post (no incident is routed)."""
        env = EventEnvelope(event_id=uuid.uuid4().hex, node_id=self.node_id, boot_id="b-" + self.node_id, seq=1,
                            mono_ns=time.monotonic_ns(), wall_time=time.time(), time_quality="synced",
                            type="PATROLI", priority=4, payload={"button": "patrol"})
        self.c.publish(TOPICS.up(self.node_id, "event"), encode(self.signer.sign(env)), qos=1).wait_for_publish(10)

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.commands)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.bystanders: dict[str, Bystander] = {}
        self.broker: LocalMosquitto | None = None

    def start(self) -> None:
        """CA, production broker, enrolment, desk accounts, then central."""
        root = self.root
        mqtt_port, self.web_port = 8883, 0  # the desk's port: central binds any and reports it
        cdir = root / "central"
        cdir.mkdir(parents=True)
        self.cdir, self.mqtt_port = cdir, mqtt_port
        self.cfg = cdir / "central.toml"
        self.cfg.write_text(_central_toml(cdir, mqtt_port))
        self.db = cdir / "central.db"
        self.central("ca", "init")
        pki = PkiFiles(cdir / "pki")
        self.ca = pki.ca_cert
        self.broker = production_broker(root / "broker", ca_file=pki.ca_cert, cert_file=pki.broker_cert,
                                        key_file=pki.broker_key, crl_file=pki.crl).start()
        # The broker picked its port when it started (8883 above was a placeholder).
        self.mqtt_port = self.broker.port
        self.cfg.write_text(_central_toml(cdir, self.mqtt_port))
        self.bundles: dict[str, Path] = {}
        for node_id, (rw, rt) in POSTS.items():
            bundle = root / f"{node_id}.bundle"
            extra = ["--lat", "-7.0501", "--lon", "110.4381"] if node_id == THIEF else []
            self.central("enrol", node_id, "--kelurahan", KEL, "--rw", str(rw), "--rt", str(rt), "--name",
                         f"Pos RW {rw} RT {rt}", "--out", str(bundle), *extra)
            self.bundles[node_id] = bundle
        self.central("user", "add", "admin", "--role", "admin", stdin=PASSWORD + "\n")
        self.central("user", "add", "ketua-rt11", "--role", "rt_admin", "--rt", f"{KEL}/1/1", stdin=PASSWORD + "\n")
        self.log = cdir / "central.log"
        self.central_proc = self.start_central()

    def start_central(self) -> subprocess.Popen[bytes]:
        """``kentongan-central run``, answering on its desk port (``[web] port = 0``: central binds
        a free port itself and writes it to its ready file, so no other process can take it
        between a pick and the bind)."""
        self.log.write_bytes(b"")
        ready = self.cdir / "web.ready"
        ready.unlink(missing_ok=True)
        proc = self.spawn([PY, "-m", "central_sync.cli", "run", "--config", str(self.cfg)], self.log)
        self.web_port = ready_port(ready, 240, proc=proc, log=self.log)
        wait_for(self.web_up, 240, "central's desk answering")
        return proc

    def web_up(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.web_port}/login", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def central(self, *args: str, stdin: str | None = None) -> str:
        return _run(["-m", "central_sync.cli", *args, "--config", str(self.cfg)], stdin)

    def spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_thief(self) -> Path:
        """The stolen post: its real bundle installed, its config edited to claim RW 1 / RT 1,
        its panic button turned into a robbery button."""
        d = self.root / THIEF
        _run(["-m", "edge.cli", "install-bundle", str(self.bundles[THIEF]), "--prefix", str(d / "root")])
        installed = tomllib.loads((d / "root" / "etc" / "kentongan" / "node.toml").read_text())
        assert installed["node"]["rw"] == 2  # what enrolment wrote
        assert self.broker is not None
        text = post_toml(THIEF, "Pos RW 1 RT 1", 1, 1, d / "state", self.broker.port, installed)
        text = text.replace('incident = "PANIC"', 'incident = "PERAMPOKAN"', 1)
        cfg = d / "node.toml"
        cfg.write_text(text)
        self.spawn([PY, "-m", "edge.cli", "run", "--simulate", "--config", str(cfg)], d / "agent.log")
        return cfg

    def store(self) -> CentralStore:
        return CentralStore(self.db)

    def close(self) -> None:
        for b in self.bystanders.values():
            b.close()
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if self.broker is not None:
            self.broker.stop()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.close()


def _login(site: Site, user: str) -> tuple[httpx.Client, dict[str, str]]:
    client = httpx.Client(base_url=f"http://127.0.0.1:{site.web_port}", timeout=30)
    r = client.post("/api/login", json={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return client, {"X-CSRF-Token": r.json()["csrf_token"]}


def test_stolen_post_claiming_another_rw_sounds_only_its_registry_rw(site: Site) -> None:
    assert site.broker is not None
    for node_id in BYSTANDERS:
        site.bystanders[node_id] = Bystander(node_id, site.bundles[node_id], site.root / node_id, site.ca,
                                             site.broker.port)
    for b in site.bystanders.values():
        _wait(b.central_online.is_set, 90, f"{b.node_id} to see central online")
        _wait(b.subscribed.is_set, 30, f"{b.node_id}'s subscription")
        b.check_in()
    store = site.store()
    try:
        _wait(lambda: set(BYSTANDERS) <= {n["node_id"] for n in store.list_nodes()}, 90, "the posts at central")

        thief_cfg = site.start_thief()
        # Its presence (claiming RW 1 / RT 1) arrives: recorded as a security event, not applied.
        events = _wait(lambda: [e for e in store.registry_tables().security_events() if e["node_id"] == THIEF],
                       120, "the place claim recorded as a security event", site.log)
        assert json.loads(events[0]["claimed"]) == {"kelurahan_code": KEL, "rw": 1, "rt": 1}
        assert json.loads(events[0]["registered"]) == {"kelurahan_code": KEL, "rw": 2, "rt": 1}
        thief_row = _wait(lambda: next((n for n in store.list_nodes() if n["node_id"] == THIEF and n["online"]),
                                       None), 60, "the stolen post online at central")
        assert (thief_row["rw"], thief_row["rt"], thief_row["display_name"]) == (2, 1, "Pos RW 2 RT 1")

        # The robbery.
        _run(["-m", "edge.cli", "sim", "press", "panic", "--hold", "2.5", "--config", str(thief_cfg)])
        delta = site.bystanders["rw2-delta"]
        warned = _wait(lambda: [c for c in delta.received() if c["action"] == "sound"
                                and c["params"].get("source_node") == THIEF], 120,
                       "the RW 2 warning at the thief's registry neighbour", site.log)
        assert warned[0]["params"]["incident_type"] == "PERAMPOKAN" and warned[0]["sig"]

        # Ordering barrier: an operator chirp to each RW 1 post travels after anything routed
        # for the robbery (one central client, QoS 1, in order); once it is there, nothing else is.
        admin, admin_csrf = _login(site, "admin")
        for node_id in ("rw1-alpha", "rw1-bravo"):
            r = admin.post(f"/api/nodes/{node_id}/test", headers=admin_csrf)
            assert r.status_code == 200 and r.json()["sent"] is True, r.text
        for node_id in ("rw1-alpha", "rw1-bravo"):
            b = site.bystanders[node_id]
            _wait(lambda b=b: any(c["action"] == "test" for c in b.received()), 60, f"the chirp at {node_id}")
            assert [c["action"] for c in b.received()] == ["test"], b.received()

        # Central's own record of what it signed and sent: sound commands for this robbery went
        # to the registry RW 2 only.
        routed = [c for c in store.list_commands() if c["params"].get("source_node") == THIEF]
        assert routed and {c["node_id"] for c in routed} == {"rw2-delta"}
        assert all(c["signed"] for c in routed)
        assert not [c for c in store.list_commands() if c["node_id"].startswith("rw1-") and c["action"] == "sound"]

        # The admin sees the security event (API and the post overview).
        r = admin.get("/api/security-events")
        assert r.status_code == 200
        (ev,) = [e for e in r.json() if e["node_id"] == THIEF]
        assert ev["claimed"] == f"{KEL} RW 1 RT 1" and ev["registered"] == f"{KEL} RW 2 RT 1" and ev["count"] >= 1
        page = admin.get("/posts?lang=en").text
        assert f'data-security-node="{THIEF}"' in page and "enrolled at" in page

        # The RT admin of RT 1/1: the stolen post is not in their list and cannot be sounded.
        rt, rt_csrf = _login(site, "ketua-rt11")
        listed = {n["node_id"] for n in rt.get("/api/nodes").json()}
        assert "rw1-alpha" in listed and THIEF not in listed
        assert THIEF not in rt.get("/posts").text
        r = rt.post(f"/api/nodes/{THIEF}/notice", json={"incident_type": "KUMPUL"}, headers=rt_csrf)
        assert r.status_code == 404
        assert rt.get("/api/security-events").status_code == 403
        assert not [c for c in store.list_commands(THIEF) if c["action"] == "sound"]
    finally:
        store.close()
