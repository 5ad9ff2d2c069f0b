"""bench/fleet.py's processes: the echo baseline, the simulated fleet, central's processes, the
polling dashboards, and what is read from /proc about them (CPU seconds, peak RSS)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

from bench.fleet_setup import CLI, PY, ROOT, Setup

#: The baseline: a trivial paho subscriber answering one Ack per event message, with the same
#: protocol features central's receive path uses (MQTT 5, a shared-subscription group, QoS 1 in
#: and out, TCP_NODELAY); it PUBACKs automatically, central manually after commit: the same packets.
ECHO = r'''
import json, socket, sys, time
import paho.mqtt.client as paho
port, prefix = int(sys.argv[1]), sys.argv[2]
c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-echo", protocol=paho.MQTTv5)
c.max_inflight_messages_set(65535)
def on_connect(client, u, f, rc, p=None):
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.subscribe("$share/bench-echo/" + prefix + "/up/+/event", qos=1)
    print("ready", flush=True)
def on_message(client, u, msg):
    node = msg.topic.split("/")[-2]
    data = json.loads(msg.payload)
    ids = [e["event_id"] for e in data["events"]] if data.get("kind") == "event_batch" else [data["event_id"]]
    body = json.dumps({"v": 1, "kind": "ack", "node_id": node, "event_ids": ids, "snapshot_ids": [],
                       "rejected": [], "central_time": time.time()}, separators=(",", ":"))
    client.publish(prefix + "/down/" + node + "/ack", body, qos=1)
c.on_connect, c.on_message = on_connect, on_message
c.connect("127.0.0.1", port)
c.loop_forever()
'''


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``, its reaped children and its living children (PostgreSQL's backends)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            child = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(child[1]) == pid:
            total += (int(child[11]) + int(child[12])) / os.sysconf("SC_CLK_TCK")
    return total


def peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_line(proc: subprocess.Popen[str], text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before {text!r}")
            continue
        if text in line:
            return
    raise RuntimeError(f"timed out waiting for {text!r}")


class Dashboards:
    """``n`` logged-in operators polling ``GET /`` and ``GET /api/nodes`` every second, each with
    an SSE stream open; GET latencies in seconds."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.latencies: list[float] = []
        self.by_path: dict[str, list[float]] = {"/": [], "/api/nodes": []}
        self.errors = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _opener(self) -> urllib.request.OpenerDirector:
        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        body = json.dumps({"username": "bench", "password": "bench-password-123"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/login", body,
                                     {"Content-Type": "application/json"})
        opener.open(req, timeout=30).read()
        return opener

    def _stream(self, opener: urllib.request.OpenerDirector) -> None:
        try:
            with opener.open(f"http://127.0.0.1:{self.port}/api/stream", timeout=5) as resp:
                while not self.stop.is_set():
                    resp.readline()
        except Exception:
            return

    def _run(self) -> None:
        try:
            opener = self._opener()
        except Exception:
            self.errors += 1
            return
        threading.Thread(target=self._stream, args=(opener,), daemon=True).start()
        while not self.stop.is_set():
            for path in ("/", "/api/nodes"):
                t0 = time.monotonic()
                try:
                    opener.open(f"http://127.0.0.1:{self.port}{path}", timeout=30).read()
                    self.latencies.append(time.monotonic() - t0)
                    self.by_path[path].append(self.latencies[-1])
                except Exception:
                    self.errors += 1
            self.stop.wait(1.0)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def start_fleet(setup: Setup, args: argparse.Namespace, tag: str) -> list[tuple[subprocess.Popen[str], Path]]:
    procs = []
    per = -(-len(setup.nodes) // args.procs)
    for i in range(args.procs):
        nodes = setup.nodes[i * per:(i + 1) * per]
        if not nodes:
            continue
        spec = {"port": setup.broker.port, "nodes": nodes, "seed": args.seed,
                "rate": args.rate * len(nodes) / len(setup.nodes),
                "p1_rate": args.p1_rate * len(nodes) / len(setup.nodes), "heartbeat_s": args.heartbeat,
                "backlog": args.backlog, "signed": not args.unsigned, "drain_s": args.drain,
                "ack_timeout": args.ack_timeout, "p1_channel": not args.no_p1_channel,
                "mqtt_window": args.mqtt_window, "presign_s": 0.0 if args.live_sign else args.duration * 1.1}
        spec_path = setup.work / f"fleet-{tag}-{i}.json"
        spec_path.write_text(json.dumps(spec))
        out = setup.work / f"fleet-{tag}-{i}.out.json"
        proc = subprocess.Popen([PY, str(ROOT / "bench" / "fleet_sim.py"), str(spec_path), str(out)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        procs.append((proc, out))
    for proc, _out in procs:
        wait_line(proc, "ready", 600)
    return procs


def start_central(setup: Setup, args: argparse.Namespace
                  ) -> tuple[list[subprocess.Popen[str]], subprocess.Popen[str] | None]:
    """The receiving processes (ingest workers, or the all-in-one) and the web process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[str]] = []
    web: subprocess.Popen[str] | None = None
    log = (setup.work / "central.log").open("a")
    if args.ingest == 0:
        procs.append(subprocess.Popen([*CLI, "run", "--config", str(setup.cfg)], cwd=ROOT, env=env,
                                      stdout=log, stderr=log, text=True))
    else:
        lane = ["--lane", "bulk"] if args.p1_process else []
        for i in range(args.ingest):
            cli = [PY, "-m", "cProfile", "-o", str(args.profile / f"ingest-{i + 1}.prof"), "-m", "central_sync.cli"] \
                if args.profile else CLI
            procs.append(subprocess.Popen([*cli, "ingest", "--config", str(setup.cfg), "--worker-id", str(i + 1),
                                           *lane], cwd=ROOT, env=env, stdout=log, stderr=log, text=True))
        if args.p1_process:  # the P1 lane in its own process (systemd: kentongan-ingest-p1.service)
            nice = ["nice", "-n", str(args.p1_nice)] if args.p1_nice else []  # the unit's Nice= (needs root)
            procs.append(subprocess.Popen([*nice, *CLI, "ingest", "--config", str(setup.cfg), "--worker-id", "p1",
                                           "--lane", "p1"], cwd=ROOT, env=env, stdout=log, stderr=log, text=True))
        if not args.no_web:
            web = subprocess.Popen([*CLI, "web", "--config", str(setup.cfg)], cwd=ROOT, env=env,
                                   stdout=log, stderr=log, text=True)
    deadline = time.monotonic() + 120
    import socket

    while time.monotonic() < deadline and not args.no_web:
        try:
            with socket.create_connection(("127.0.0.1", setup.web_port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    time.sleep(2.0)  # the ingest workers' subscriptions (their STATE is retained; good enough here)
    return procs, web


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
