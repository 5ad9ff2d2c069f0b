"""bench/fleet.py's processes: the echo baseline, the simulated fleet, central's processes, the
dashboards (``bench/fleet_dash.py``), and what is read from /proc about them (CPU seconds, peak RSS)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from bench.fleet_dash import Dashboards as Dashboards  # the operators' desk pages (bench/fleet_dash.py)
from bench.fleet_setup import CLI, PY, ROOT, Setup

#: The baseline: a trivial paho subscriber answering one Ack per event message, with the same
#: protocol features central's receive path uses (MQTT 5, a shared-subscription group, QoS 1 in
#: and out, TCP_NODELAY); it PUBACKs automatically, central manually after commit: the same packets.
#: It receives what central's ingest receives in the steady state (events and the posts' QoS 0
#: heartbeats; it only parses a heartbeat), and prints ``count N`` (events answered so far) on
#: SIGUSR1, so its CPU per event is taken over exactly the measured window.
#: With a third argument (the fleet's key seed) it is the "echo + verify" baseline: it also checks
#: every Ed25519 signature (events and heartbeats) the plain way, re-encoding the received object
#: in canonical form, as any receiver that must not trust its posts has to, with the Ed25519 library
#: central uses (libsodium through PyNaCl: ~53 us a check here, OpenSSL's took ~107 us).
ECHO = r'''
import base64, hashlib, json, signal, socket, sys, time
import paho.mqtt.client as paho
port, prefix = int(sys.argv[1]), sys.argv[2]
seed = sys.argv[3] if len(sys.argv) > 3 else None
if seed is not None:
    from nacl.signing import SigningKey
keys, answered = {}, [0]
canon = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
def verify(node, data):
    key = keys.get(node)
    if key is None:
        raw = hashlib.sha256(f"{seed}/{node}".encode()).digest()
        key = keys[node] = SigningKey(raw).verify_key
    sig = data.pop("sig")
    key.verify(canon.encode(data).encode(), base64.b64decode(sig))
c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-echo", protocol=paho.MQTTv5)
c.max_inflight_messages_set(65535)
def on_connect(client, u, f, rc, p=None):
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.subscribe("$share/bench-echo/" + prefix + "/up/+/event", qos=1)
    client.subscribe("$share/bench-echo/" + prefix + "/up/+/heartbeat", qos=0)
    print("ready", flush=True)
def on_message(client, u, msg):
    parts = msg.topic.split("/")
    node = parts[-2]
    data = json.loads(msg.payload)
    if parts[-1] != "event":
        if seed is not None:
            verify(node, data)
        return
    envs = data["events"] if data.get("kind") == "event_batch" else [data]
    if seed is not None:
        for env in envs:
            verify(node, env)
    ids = [e["event_id"] for e in envs]
    body = json.dumps({"v": 1, "kind": "ack", "node_id": node, "event_ids": ids, "snapshot_ids": [],
                       "rejected": [], "central_time": time.time()}, separators=(",", ":"))
    client.publish(prefix + "/down/" + node + "/ack", body, qos=1)
    answered[0] += len(ids)
signal.signal(signal.SIGUSR1, lambda *_a: print(f"count {answered[0]}", flush=True))
c.on_connect, c.on_message = on_connect, on_message
c.connect("127.0.0.1", port)
c.loop_forever()
'''


def echo_count(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """Events the echo has answered so far (it prints them on SIGUSR1)."""
    assert proc.stdout is not None
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("count "):
            return int(line.split()[1])
        if not line and proc.poll() is not None:
            raise RuntimeError(f"echo exited with {proc.returncode}")
    raise RuntimeError("echo did not report its count")


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
                "mqtt_window": args.mqtt_window, "presign_s": 0.0 if args.live_sign else args.duration * 1.1,
                "batch_sig": not getattr(args, "per_envelope_batches", False)}
        spec_path = setup.work / f"fleet-{tag}-{i}.json"
        spec_path.write_text(json.dumps(spec))
        out = setup.work / f"fleet-{tag}-{i}.out.json"
        proc = subprocess.Popen([PY, str(ROOT / "bench" / "fleet_sim.py"), str(spec_path), str(out)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        procs.append((proc, out))
    try:
        for proc, _out in procs:
            wait_line(proc, "ready", 600)
    except BaseException:
        kill_all([proc for proc, _ in procs])
        raise
    return procs


def kill_all(procs: list[subprocess.Popen[str]]) -> None:
    """SIGKILL whatever of ``procs`` still runs, and reap it."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


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
            web_nice = ["nice", "-n", str(args.web_nice)] if getattr(args, "web_nice", 0) else []  # the unit's Nice=
            web = subprocess.Popen([*web_nice, *CLI, "web", "--config", str(setup.cfg)], cwd=ROOT, env=env,
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
