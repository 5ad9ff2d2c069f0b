"""Group siren activation benchmark: N simulated posts, one city-wide activation from the desk,
time until each siren's confirmation is visible through the web API the activation page polls.

    .venv/bin/python bench/group_activation.py --posts 10000 [--procs 4] [--repeat 1] [--json out.json]

Everything on loopback: a LocalMosquitto (the project's dev config), ``kentongan-central run``
(ingest + web in one process) with a CA (``ca init``: every command is signed with central's
command key), an admin user, and ``--procs`` processes of simulated posts (``bench/fleet_sim.py``'s
epoll-driven ``bench/mqtt_lite.py`` clients) that verify each command's signature and answer it with a
``command_result`` (``ok``, "sounding"), as a post's sync layer does.

Per repeat:

1. **baseline, single**: a plain paho client publishes one signed ``sound`` command to one post and
   waits for its result (the raw MQTT round trip of one command), 20 times;
2. **baseline, fan-out**: the same client publishes a signed command to every post at once and
   notes when each result arrives (no central, no store, no web);
3. **desk**: ``POST /api/sirens/groups`` (scope city, confirmed) as the admin; from just before the
   request, ``GET /api/sirens/activations/{id}?answered_after=...`` every 0.2 s notes when each
   post first shows ``confirmed``.

Printed: p50 / p95 / max seconds of each, the desk's p95 against the target (10 s) and its ratio to
the fan-out baseline. Medians over ``--repeat``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import paho.mqtt.client as paho  # noqa: E402

from bench import mqtt_lite  # noqa: E402
from bench._common import median, pct, table  # noqa: E402
from bench.fleet_setup import Database, port_outside_ephemeral_range  # noqa: E402
from bench.fleet_sim import Fleet, Post, SimSpec, node_ids, node_key  # noqa: E402
from central_sync.broker import LocalMosquitto  # noqa: E402
from central_sync.pki import PkiFiles  # noqa: E402
from central_sync.routing import make_command  # noqa: E402
from central_sync.store import open_store  # noqa: E402
from edge.signing import CommandSigner, MessageSigner, load_signing_key, load_verify_key, public_key_pem, verify_bytes  # noqa: E402
from edge.sync.wire import CommandResult, Topics, canonical_bytes, encode  # noqa: E402

PY = sys.executable
CLI = [PY, "-m", "central_sync.cli"]
PASSWORD = "bench-password-123"
TARGET_P95_S = 10.0


# -- simulated posts (worker processes) ---------------------------------------------------------

class SirenPost(Post):
    """A fleet_sim post that also takes commands: checks central's signature, answers at once."""

    __slots__ = ("answered", "verify_key")

    def __init__(self, sim: Fleet, node: str, spec: SimSpec, verify_key: Any) -> None:
        super().__init__(sim, node, spec)
        self.verify_key = verify_key
        self.answered = 0

    def mqtt_connected(self, client: mqtt_lite.Client) -> None:
        client.subscribe(self.topics.down(self.node, "cmd"), qos=1)
        super().mqtt_connected(client)

    def mqtt_message(self, client: mqtt_lite.Client, topic: str, payload: bytes) -> None:
        if not topic.endswith("/cmd"):
            super().mqtt_message(client, topic, payload)
            return
        data = json.loads(payload)
        ok, detail = True, "sounding"
        try:
            verify_bytes(self.verify_key, canonical_bytes(data), data.get("sig") or "")
        except Exception:
            ok, detail = False, "bad_signature"
        # Signed by the post's key like every other kind (central drops unsigned results).
        result = MessageSigner(self.key).sign(CommandResult(
            command_id=str(data["command_id"])[:64], node_id=self.node, ok=ok, detail=detail, at=time.time()))
        client.publish(mqtt_lite.utf8(self.topics.up(self.node, "cmd_result")), encode(result), 1)
        self.answered += 1


class SirenFleet(Fleet):
    def __init__(self, spec: SimSpec, verify_key: Any) -> None:
        super().__init__(dataclasses.replace(spec, nodes=[]))
        self.spec = spec
        self.siren_posts = [SirenPost(self, n, spec, verify_key) for n in spec.nodes]
        self.posts = list(self.siren_posts)
        self.result.nodes = len(self.posts)

    def connect_all(self, *, keepalive: int = 600, serve_every: int = 50, wait_s: float = 600) -> None:
        """As ``Fleet.connect_all``, serving the posts already connected while the rest connect."""
        super().connect_all(keepalive=keepalive, serve_every=serve_every, wait_s=wait_s)


def worker(spec_path: str, out_path: str) -> None:
    raw = json.loads(Path(spec_path).read_text())
    pub = load_verify_key(raw.pop("command_pub"))
    fleet = SirenFleet(SimSpec(**raw), pub)

    def halt(*_a: Any) -> None:
        fleet.running = False

    signal.signal(signal.SIGTERM, halt)
    fleet.connect_all()
    fleet.run(start_signal=False)
    Path(out_path).write_text(json.dumps({"answered": sum(p.answered for p in fleet.siren_posts)}))


# -- the run ------------------------------------------------------------------------------------

class Setup:
    """Broker, central config with a CA, an admin user, the central process and the posts."""

    def __init__(self, work: Path, posts: int, procs: int) -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.work = work
        self.broker = LocalMosquitto(work / "mosquitto", extra_conf="max_queued_messages 1000000\n").start()
        self.web_port = port_outside_ephemeral_range()
        self.cfg = work / "central.toml"
        self.cfg.write_text(f'''log_level = "WARNING"
database = "{work / 'central.db'}"
[broker]
port = {self.broker.port}
client_id = "central"
[ingest]
batch_wait_ms = 20
[web]
port = {self.web_port}
[pki]
dir = "{work / 'pki'}"
''')
        subprocess.run([*CLI, "ca", "init", "--config", str(self.cfg)], check=True, capture_output=True, cwd=ROOT)
        (work / "pw").write_text(PASSWORD + "\n")
        subprocess.run([*CLI, "user", "add", "boss", "--role", "admin", "--password-file", str(work / "pw"),
                        "--config", str(self.cfg)], check=True, capture_output=True, cwd=ROOT)
        files = PkiFiles(work / "pki")
        self.signer = CommandSigner(load_signing_key(files.command_key))
        self.nodes = node_ids("post", 0, posts)
        # Enrol every post (key and place: central takes both from its registry only).
        open_store(f"sqlite:///{work / 'central.db'}").close()  # creates (migrates) every table
        Database(f"sqlite:///{work / 'central.db'}").query(
            "INSERT INTO node_registry (node_id, signing_public_key, kelurahan_code, rw, rt, display_name, "
                      "status, cert_serial, cert_not_after, enrolled_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(n, public_key_pem(node_key("fleet", n)), "33.74.10.1001", 1 + i // 500, 1 + i % 500,
              f"Pos {n}", "enrolled", f"{i:x}", time.time() + 86400 * 365, time.time())
             for i, n in enumerate(self.nodes)])
        self.procs = procs
        self.central: subprocess.Popen[bytes] | None = None
        self.sims: list[tuple[subprocess.Popen[str], Path]] = []

    def start(self) -> None:
        work, posts, procs = self.work, len(self.nodes), self.procs
        files = PkiFiles(work / "pki")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = (work / "central.log").open("a")
        self.central = subprocess.Popen([*CLI, "run", "--config", str(self.cfg)], cwd=ROOT, env=env,
                                        stdout=log, stderr=log)
        per = -(-posts // procs)
        for i in range(procs):
            chunk = self.nodes[i * per:(i + 1) * per]
            spec = {**dataclasses.asdict(SimSpec(port=self.broker.port, nodes=chunk, heartbeat_s=0,
                                                 start_now=True, signed=True)),
                    "command_pub": str(files.command_pub)}
            spec_path, out = work / f"sim-{i}.json", work / f"sim-{i}.out.json"
            spec_path.write_text(json.dumps(spec))
            proc = subprocess.Popen([PY, __file__, "--worker", str(spec_path), str(out)], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, text=True)
            self.sims.append((proc, out))
        for proc, _out in self.sims:
            assert proc.stdout is not None
            while "ready" not in (line := proc.stdout.readline()):
                if not line and proc.poll() is not None:
                    raise RuntimeError("a simulated-post process died")
        if self.central.poll() is not None:
            raise RuntimeError(f"central exited; see {work / 'central.log'}")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.web_port}", timeout=60)
        self._login()

    def _login(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                r = self.http.post("/api/login", json={"username": "boss", "password": PASSWORD})
                if r.status_code == 200:
                    self.csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.central is None or self.central.poll() is not None:
                raise RuntimeError(f"central did not come up; see {self.work / 'central.log'}")
            time.sleep(0.3)

    def wait_posts_known(self) -> None:
        deadline = time.monotonic() + 300
        while len(self.http.get("/api/nodes").json()) < len(self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("central does not know every post")
            time.sleep(1.0)

    def close(self) -> None:
        procs: list[subprocess.Popen[Any]] = [p for p, _o in self.sims]
        if self.central is not None:
            procs.insert(0, self.central)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.broker.stop()


class RawClient:
    """The baseline: a plain paho client publishing signed commands and collecting results."""

    def __init__(self, port: int, signer: CommandSigner) -> None:
        self.topics, self.signer = Topics(), signer
        self.results: dict[str, float] = {}
        self.lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=paho.MQTTv5)
        self.c.max_inflight_messages_set(1000)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        sock = self.c.socket()
        if isinstance(sock, socket.socket):  # as the simulated posts: no Nagle delay
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c.loop_start()
        self.c.subscribe(self.topics.up_wildcard("cmd_result"), qos=1)
        time.sleep(0.5)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        command_id = json.loads(msg.payload)["command_id"]
        with self.lock:
            self.results.setdefault(command_id, now)

    def send(self, nodes: list[str]) -> tuple[float, dict[str, str]]:
        cmds = [self.signer.sign(make_command(n, "sound", {"incident_type": "TEST", "pattern": "chirp"},
                                              issuer="bench")) for n in nodes]
        t0 = time.monotonic()
        for cmd in cmds:
            self.c.publish(self.topics.down(cmd.node_id, "cmd"), encode(cmd), qos=1)
        return t0, {c.command_id: c.node_id for c in cmds}

    def wait(self, ids: dict[str, str], timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(i in self.results for i in ids):
                    break
            time.sleep(0.01)
        with self.lock:
            return [self.results[i] for i in ids if i in self.results]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def run_once(setup: Setup) -> dict[str, Any]:
    raw = RawClient(setup.broker.port, setup.signer)
    singles = []
    for i in range(20):
        t0, ids = raw.send([setup.nodes[(i * 997) % len(setup.nodes)]])
        got = raw.wait(ids, 30)
        singles.append(got[0] - t0 if got else float("nan"))
    t0, ids = raw.send(setup.nodes)
    fan = [t - t0 for t in raw.wait(ids, 120)]
    raw.close()
    # The desk: one city-wide activation, confirmations read through the activation API.
    t0 = time.monotonic()
    wall0 = time.time()
    r = setup.http.post("/api/sirens/groups", headers=setup.csrf,
                        json={"scope": "city", "confirm": True, "incident_type": "BENCANA"})
    request_s = time.monotonic() - t0
    r.raise_for_status()
    act_id = r.json()["activation_id"]
    seen: dict[str, float] = {}
    since = wall0 - 5
    deadline = time.monotonic() + 180
    while len(seen) < len(setup.nodes) and time.monotonic() < deadline:
        status = setup.http.get(f"/api/sirens/activations/{act_id}", params={"answered_after": since}).json()
        now = time.monotonic()
        for p in status["posts"]:
            if p["state"] == "confirmed":
                seen.setdefault(p["node_id"], now - t0)
        since = status["now"] - 5
        time.sleep(0.2)
    final = setup.http.get(f"/api/sirens/activations/{act_id}").json()
    stored = [p["answered_at"] - wall0 for p in final["posts"] if p["answered_at"]]
    setup.http.post(f"/api/sirens/activations/{act_id}/stop", headers=setup.csrf).raise_for_status()
    return {"single": singles, "fanout": fan, "desk": list(seen.values()), "stored": stored,
            "request_s": request_s, "counts": final["counts"]}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posts", type=int, default=10000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-group-") as tmp:
        setup = Setup(Path(tmp), args.posts, args.procs)
        try:
            setup.start()
            setup.wait_posts_known()
            runs = [run_once(setup) for _ in range(args.repeat)]
        finally:
            setup.close()
    n = args.posts
    rows = []
    for name, key in (("raw MQTT, one command (baseline)", "single"),
                      (f"raw MQTT fan-out, {n} commands (baseline)", "fanout"),
                      (f"result stored at central, {n} posts", "stored"),
                      (f"desk group activation -> confirmed on the API, {n} posts", "desk")):
        vals = [r[key] for r in runs]
        rows.append([name, f"{min(len(v) for v in vals)}/{1 if key == 'single' else n}" if key != "single"
                     else f"{len(vals[0])}/20",
                     f"{median([pct(v, 50) for v in vals]):.3f}", f"{median([pct(v, 95) for v in vals]):.3f}",
                     f"{median([max(v) if v else float('nan') for v in vals]):.3f}"])
    print(table(["measure", "answered", "p50 s", "p95 s", "max s"], rows))
    desk_p95 = median([pct(r["desk"], 95) for r in runs])
    fan_p95 = median([pct(r["fanout"], 95) for r in runs])
    print(f"\nPOST /api/sirens/groups took {median([r['request_s'] for r in runs]):.3f} s "
          f"(sign and record {n} commands; publishing goes on in the background); final counts {runs[-1]['counts']}")
    print(f"desk p95 {desk_p95:.3f} s vs target {TARGET_P95_S:.0f} s: "
          f"{'MET' if desk_p95 <= TARGET_P95_S else 'MISSED'}; ratio to the raw fan-out p95: "
          f"{desk_p95 / fan_p95:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(runs))


if __name__ == "__main__":
    main()
