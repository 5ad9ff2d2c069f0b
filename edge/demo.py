"""The demo behind ``scripts/demo``: a local Mosquitto, central (ingest + dashboard) and three
simulated posts, driven through a scripted night: a panic, an all-clear, a network cut with alarms
buffered offline, the network back, and the backlog arriving at central exactly once; then a
supervised post loses power and the desk shows it offline with a POST_OFFLINE incident.

Every process is the real one (``kentongan-central run``, ``kentongan-edge run --simulate``); the
script only presses simulated buttons and reads status, like a technician would.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from central_sync.broker import LocalMosquitto, free_port, production_broker
from central_sync.pki import PkiFiles
from edge.demo_desk import DeskReader

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
POSTS = [
    ("smg-tembalang-rw05-rt03", "Pos Ronda RT 03 RW 05 Tembalang", 5, 3),
    ("smg-tembalang-rw05-rt04", "Pos Ronda RT 04 RW 05 Tembalang", 5, 4),
    ("smg-tembalang-rw06-rt01", "Pos Ronda RT 01 RW 06 Tembalang", 6, 1),
]
OPERATOR = ("operator", "ronda-demo-2026")


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def _table(name: str, values: dict[str, Any]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {json.dumps(str(v))}\n" for k, v in values.items())


def post_toml(node_id: str, name: str, rw: int, rt: int, state: Path, port: int,
              installed: dict[str, Any]) -> str:
    """A simulated post's config: the key paths of the installed bundle's config
    (``installed``), demo hardware."""
    return f"""config_version = 1
log_level = "INFO"
[node]
node_id = "{node_id}"
kelurahan_code = "33.74.10.1005"
rw = {rw}
rt = {rt}
display_name = "{name}"
[[buttons]]
name = "panic"
pin = 17
incident = "PANIC"
hold_seconds = 2.0
normally_closed = true
[[buttons]]
name = "fire"
pin = 27
incident = "KEBAKARAN"
hold_seconds = 2.0
[[buttons]]
name = "patrol"
pin = 22
incident = "PATROLI"
hold_seconds = 0
patrol_checkin = true
[[buttons]]
name = "aman"
pin = 23
incident = "AMAN"
hold_seconds = 1.0
[siren]
pin = 18
max_on_seconds = 120
[siren.quiet_hours]
enabled = false
[camera]
backend = "fake"
width = 320
height = 240
frames_per_alarm = 1
[modem]
enabled = true
port = "fake"
sms_recipients = [{{ name = "Ketua RT", number = "+6281200000001" }}]
[storage]
state_dir = "{state}"
[sync]
broker_host = "127.0.0.1"
broker_port = {port}
heartbeat_seconds = 5
reconnect_min_seconds = 0.2
reconnect_max_seconds = 2
sms_fallback_seconds = 5
{_table("sync.tls", installed["sync"]["tls"])}{_table("security", installed["security"])}"""


def central_toml(state: Path, mqtt_port: int, web_port: int) -> str:
    pki = state / "pki"
    return f"""database = "{state / 'central.db'}"
topic_prefix = "kentongan/v1"
[broker]
host = "127.0.0.1"
port = {mqtt_port}
client_id = "central-demo"
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
port = {web_port}
release_dir = "releases"
[web.supervision]
# The demo's posts send a heartbeat every 5 s: offline after two missed ones and a margin.
offline_after_s = 15
sweep_s = 1
"""


class Demo:
    def __init__(self, state: Path, posts: list[tuple[str, str, int, int]] | None = None) -> None:
        self.state = state
        self.posts = POSTS if posts is None else posts
        self.procs: list[subprocess.Popen[bytes]] = []
        self.post_procs: list[subprocess.Popen[bytes]] = []
        self.broker: LocalMosquitto | None = None
        self.post_cfgs: list[Path] = []
        self.central_cfg = state / "central" / "central.toml"

    def spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def edge(self, *args: str, check: bool = True) -> str:
        res = subprocess.run([PY, "-m", "edge.cli", *args], capture_output=True, text=True,
                             timeout=60)
        if check and res.returncode != 0:
            raise SystemExit(f"kentongan-edge {' '.join(args)} failed: {res.stderr}")
        return res.stdout

    def central(self, *args: str, stdin: str | None = None) -> str:
        res = subprocess.run([PY, "-m", "central_sync.cli", *args], capture_output=True,
                             text=True, timeout=60, input=stdin)
        if res.returncode != 0:
            raise SystemExit(f"kentongan-central {' '.join(args)} failed: {res.stderr}")
        return res.stdout

    def status(self, i: int) -> dict[str, Any]:
        return json.loads(self.edge("status", "--config", str(self.post_cfgs[i]), "--json"))

    def central_events(self) -> list[dict[str, Any]]:
        out = self.central("events", "--config", str(self.central_cfg), "--json",
                           "--limit", "100000")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait(self, pred: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = pred()
            if got:
                return got
            time.sleep(0.5)
        raise SystemExit(f"demo: timed out waiting for {what}")

    def start(self) -> None:
        if self.state.exists():
            shutil.rmtree(self.state)
        self.state.mkdir(parents=True)
        web_port = free_port()
        self.web_port = web_port
        self.central_cfg.parent.mkdir(parents=True)
        # The broker's port is known once it runs (it may move off a port taken meanwhile):
        # the config is written again with it below.
        self.central_cfg.write_text(central_toml(self.central_cfg.parent, 8883, web_port))
        say("Central certificate authority: kentongan-central ca init")
        print(self.central("ca", "init", "--config", str(self.central_cfg)).strip())
        pki = PkiFiles(self.central_cfg.parent / "pki")
        say("Starting Mosquitto with the production config (mTLS + ACL + CRL) on loopback")
        self.broker = production_broker(self.state / "broker", ca_file=pki.ca_cert,
                                        cert_file=pki.broker_cert, key_file=pki.broker_key,
                                        crl_file=pki.crl).start()
        self.central_cfg.write_text(central_toml(self.central_cfg.parent, self.broker.port, web_port))
        print(f"broker on 127.0.0.1:{self.broker.port} (client certificates required)")
        say("Starting central (ingest + dashboard)")
        try:
            self.central("user", "add", OPERATOR[0], "--role", "operator", "--config",
                         str(self.central_cfg), stdin=OPERATOR[1] + "\n")
        except SystemExit as exc:
            print(f"(no dashboard accounts: {exc})")
        self.spawn([PY, "-m", "central_sync.cli", "run", "--config", str(self.central_cfg)],
                   self.state / "central" / "central.log")
        say("Enrolling three posts (kentongan-central enrol -> kentongan-edge install-bundle)"
            " and starting them simulated")
        for node_id, name, rw, rt in self.posts:
            d = self.state / node_id
            d.mkdir()
            bundle = d / f"{node_id}.bundle"
            self.central("enrol", node_id, "--kelurahan", "33.74.10.1005", "--rw", str(rw),
                         "--rt", str(rt), "--name", name, "--out", str(bundle),
                         "--config", str(self.central_cfg))
            self.edge("install-bundle", str(bundle), "--prefix", str(d / "root"))
            installed = tomllib.loads((d / "root" / "etc" / "kentongan" / "node.toml").read_text())
            cfg = d / "node.toml"
            cfg.write_text(post_toml(node_id, name, rw, rt, d / "state", self.broker.port,
                                     installed))
            self.post_cfgs.append(cfg)
            self.post_procs.append(self.spawn([PY, "-m", "edge.cli", "run", "--simulate", "--config", str(cfg)],
                                              d / "agent.log"))
            print(f"  {name} ({node_id})")
        for i in range(len(self.posts)):
            self.wait(lambda i=i: self._ok(lambda: self.status(i)), 30, f"post {i} to start")

    @staticmethod
    def _ok(fn: Any) -> Any:
        try:
            return fn()
        except SystemExit:
            return None

    def show_post(self, i: int) -> None:
        print(self.edge("status", "--config", str(self.post_cfgs[i])))

    def scenario(self) -> None:
        p0 = str(self.post_cfgs[0])
        say("23:41 A patrol at RT 03 holds the panic button for 2.5 s")
        print(self.edge("sim", "press", "panic", "--hold", "2.5", "--config", p0).strip())
        self.show_post(0)
        say("Central receives it (end-to-end acknowledged)")
        self.wait(lambda: any(e["type"] == "PANIC" for e in self.central_events()), 30,
                  "PANIC at central")
        for e in self.central_events():
            print(f"  {e['node_id']:<26} {e['type']:<12} P{e['priority']} {e['event_id'][:13]}")
        say("All clear: the patrol holds AMAN")
        print(self.edge("sim", "press", "aman", "--hold", "1.3", "--config", p0).strip())
        self.wait(lambda: any(e["type"] == "AMAN" for e in self.central_events()), 30, "AMAN at central")
        self.show_post(0)

        say("00:12 The network goes down (broker stopped)")
        assert self.broker is not None
        self.broker.stop()
        desk = DeskReader(self.web_port, *OPERATOR)
        blind = self._ok(lambda: self.wait(lambda: desk.central_blind(), 15, "the blind banner"))
        print("  desk: banner 'central cannot see the posts', every post state unknown, nobody paged"
              if blind else "  desk: (the banner did not show within 15 s)")
        print(self.edge("sim", "press", "fire", "--hold", "2.5", "--config",
                        str(self.post_cfgs[1])).strip())
        print(self.edge("sim", "press", "panic", "--hold", "2.5", "--config",
                        str(self.post_cfgs[2])).strip())
        for _ in range(5):
            self.edge("sim", "press", "patrol", "--hold", "0.2", "--config", p0)
        for i in range(3):
            out = self.status(i)["outbox"]
            print(f"  {POSTS[i][0]:<26} waiting: ready={out.get('ready')} "
                  f"in_flight={out.get('in_flight')}")
        say("The posts keep working offline (P1 events unacknowledged for 5 s -> SMS)")

        def sms_sent() -> dict[int, Any]:
            return {i: sms for i in range(3)
                    if (sms := self.status(i)["outbox"].get("by_type", {}).get("SMS_SENT"))}

        # The two P1 incidents (FIRE at post 1, PANIC at post 2) each send their SMS once they
        # have gone 5 s without an Ack: waited for, not slept for (a busy machine is slower).
        self._ok(lambda: self.wait(lambda: len(sms_sent()) >= 2, 60, "the SMS fallback of both P1 incidents"))
        for i, sms in sorted(sms_sent().items()):
            print(f"  {POSTS[i][0]:<26} SMS fallback sent for its P1 incident: {sms}")
        say("00:20 The network is back (broker restarted)")
        self.broker.start()
        t0 = time.monotonic()

        def drained() -> bool:
            for i in range(3):
                out = self.status(i)["outbox"]
                if out.get("ready", 1) or out.get("in_flight", 1):
                    return False
            return True

        self.wait(drained, 60, "backlogs to drain")
        print(f"all backlogs drained in {time.monotonic() - t0:.1f} s")
        self.check_exactly_once()
        self.power_cut()

    def power_cut(self) -> None:
        """The last post loses power (its agent killed): the desk shows it offline and opens a
        POST_OFFLINE incident (every post is supervised by default)."""
        node_id, name = self.posts[-1][0], self.posts[-1][1]
        desk = DeskReader(self.web_port, *OPERATOR)
        self.wait(lambda: desk.post_status(node_id) == "online", 60, f"{node_id} online on the desk")
        say(f"03:05 {name} loses power")
        t0 = time.monotonic()
        self.post_procs[-1].kill()
        self.post_procs[-1].wait(10)
        self.wait(lambda: desk.post_status(node_id) == "offline", 60, f"{node_id} offline on the desk")
        print(f"  desk: {node_id} shown offline after {time.monotonic() - t0:.1f} s")
        inc = self.wait(lambda: desk.offline_incident(node_id), 60, "the POST_OFFLINE incident")
        print(f"  desk: POST_OFFLINE incident {inc['incident_id']} opened after {time.monotonic() - t0:.1f} s "
              f"(state {inc['state']}; see /posts/{node_id} for its availability)")

    def check_exactly_once(self) -> None:
        say("Exactly once: posts' acknowledged events against central's database")
        events = self.central_events()
        ids = [e["event_id"] for e in events]
        dupes = len(ids) - len(set(ids))
        for i, (node_id, _name, _rw, _rt) in enumerate(POSTS):
            acked = self.status(i)["outbox"].get("acked", 0)
            at_central = sum(1 for e in events if e["node_id"] == node_id)
            print(f"  {node_id:<26} acked at post={acked:<4} stored at central={at_central:<4}"
                  f" {'OK' if acked == at_central else 'MISMATCH'}")
        print(f"  duplicates at central: {dupes}")
        print("\n" + self.central("nodes", "--config", str(self.central_cfg)))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.broker is not None:
            self.broker.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="kentongan demo")
    ap.add_argument("--once", action="store_true", help="run the scenario and exit")
    ap.add_argument("--state", default=str(ROOT / "demo-state"))
    args = ap.parse_args(argv)
    demo = Demo(Path(args.state))
    try:
        demo.start()
        demo.scenario()
        say("Dashboard")
        print(f"  http://127.0.0.1:{demo.web_port}/   login: {OPERATOR[0]} / {OPERATOR[1]}")
        print(f"  map: http://127.0.0.1:{demo.web_port}/map   API: /api/docs   metrics: /metrics"
              "   (Bahasa Indonesia; English: add ?lang=en)")
        print(f"  logs and databases under {demo.state}")
        if args.once:
            print("  --once: the dashboard stops now with the demo; run scripts/demo without "
                  "--once to keep it open")
        else:
            print("  press Ctrl-C to stop")
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
