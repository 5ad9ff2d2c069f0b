"""Fleet benchmark: N simulated posts against the real central, with a trivial echo subscriber
measured in the same run as the baseline.

    .venv/bin/python bench/fleet.py --posts 10000 --rate 1000 --heartbeat 20 --duration 30 \\
        [--procs 4] [--ingest 1] [--p1-rate 0] [--backlog 0] [--dashboards 2] [--unsigned] \\
        [--no-echo] [--repeat 1] [--json out.json]

Everything runs on this machine, on loopback: a LocalMosquitto with the project's dev config
(plus ``set_tcp_nodelay true``) on a free port; a central config with a CA (``ca init``), every
simulated post's Ed25519 key registered in the node registry (events are signed and verified),
a dashboard user; ``--procs`` processes of simulated posts (``bench/fleet_sim.py``: one paho
client per post, driven by epoll).

Per repeat, two phases with the same fleet and load:

1. **echo**: a plain paho subscriber answers one Ack per event message (no storage, no checks);
2. **central**: ``--ingest N`` workers (``kentongan-central ingest``, one shared-subscription
   group) plus ``kentongan-central web``; ``--ingest 0`` runs the all-in-one ``kentongan-central
   run`` instead. ``--dashboards`` clients log in and poll ``GET /`` and ``GET /api/nodes`` every
   second while one SSE stream (``/api/stream``) stays open per dashboard.

Printed per phase: offered / committed / acked events/s, publish->Ack p50/p99 (ms; P1 p99 when
``--p1-rate``), CPU ms per committed event of the receiving processes and its ratio to echo's,
peak RSS (VmHWM) of the receiving processes, dashboard GET p50/p99, and events lost (offered,
never acknowledged nor rejected after the drain) and duplicated (stored twice: impossible by the
schema, counted anyway). Medians over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import median, pct, table  # noqa: E402
from bench.fleet_sim import node_ids, node_key  # noqa: E402
from central_sync.broker import LocalMosquitto, free_port  # noqa: E402
from central_sync.store import open_store  # noqa: E402
from edge.signing import public_key_pem  # noqa: E402

PY = sys.executable
CLI = [PY, "-m", "central_sync.cli"]
ECHO = r'''
import json, sys, time
import paho.mqtt.client as paho
port, prefix = int(sys.argv[1]), sys.argv[2]
c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-echo", protocol=paho.MQTTv5)
c.max_inflight_messages_set(65535)
def on_connect(client, u, f, rc, p=None):
    client.subscribe(prefix + "/up/+/event", qos=1)
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


@dataclass
class PhaseResult:
    name: str
    offered: float = 0.0
    committed: float = 0.0
    acked: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    p1_p99_ms: float = float("nan")
    cpu_ms_per_event: float = float("nan")
    rss_mib: float = 0.0
    get_p50_ms: float = float("nan")
    get_p99_ms: float = float("nan")
    lost: int = 0
    duplicated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def port_outside_ephemeral_range() -> int:
    """A free loopback port below the kernel's ephemeral range: 10,000 simulated posts take
    10,000 ephemeral ports, and one of them may take a port picked earlier by ``free_port``
    before the web process binds it."""
    import random
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(10_000, max(low, 10_001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


class Database:
    """Counting queries on central's store (SQLite file or PostgreSQL URL), and bulk key
    registration (one transaction for the whole fleet)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None

    def query(self, sql: str, rows: list[tuple[Any, ...]] | None = None) -> Any:
        if self.path is not None:
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                with conn:
                    if rows is not None:
                        conn.executemany(sql, rows)
                        return None
                    return conn.execute(sql).fetchone()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url) as pg:
            if rows is not None:
                with pg.cursor() as cur:
                    cur.executemany(sql.replace("?", "%s"), rows)
                return None
            return pg.execute(sql).fetchone()


def start_postgres(work: Path) -> tuple[Any, str]:
    """A throwaway PostgreSQL cluster (tests/pg_cluster.py: initdb in a temp dir, free loopback
    port) with fsync ON, as a production server would run; returns (cluster, database URL)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import psycopg
    from pg_cluster import PgCluster

    cluster = PgCluster().start()
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET fsync = on")
        conn.execute("ALTER SYSTEM SET synchronous_commit = on")
        conn.execute("SELECT pg_reload_conf()")
    return cluster, cluster.new_database()


class Setup:
    """Broker, central config, CA, registered keys and a dashboard user in a temp dir."""

    def __init__(self, work: Path, posts: int, seed: str, postgres: bool = False, signed: bool = True) -> None:
        self.work = work
        self.pg: Any = None
        url = f"sqlite:///{work / 'central.db'}"
        if postgres:
            self.pg, url = start_postgres(work)
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.broker = LocalMosquitto(work / "mosquitto", extra_conf="set_tcp_nodelay true\n"
                                     "max_queued_messages 1000000\n").start()
        self.web_port = port_outside_ephemeral_range()
        self.db = Database(url)
        self.cfg = work / "central.toml"
        self.url, self.signed = url, signed
        self.configure(0)
        subprocess.run([*CLI, "ca", "init", "--config", str(self.cfg)], check=True, capture_output=True, cwd=ROOT)
        if not signed:  # the CA is still needed for "user add"; central verifies only with [pki]
            self.configure(0, pki=False)
        self.nodes = node_ids("post", 0, posts)
        open_store(url).close()  # creates (migrates) every table
        now = time.time()
        self.db.query("INSERT INTO node_registry VALUES (?,?,?,?,?,?,?,?,?,?,NULL)",
                      [(n, public_key_pem(node_key(seed, n)), "33.74.10.1001", 1 + i // 500, 1 + i % 500,
                        f"Pos {n}", "enrolled", f"{i:x}", now + 86400 * 365, now)
                       for i, n in enumerate(self.nodes)])
        pw = work / "pw"
        pw.write_text("bench-password-123\n")
        subprocess.run([*CLI, "user", "add", "bench", "--role", "admin", "--password-file", str(pw), "--config",
                        str(self.cfg)], check=True, capture_output=True, cwd=ROOT)

    def configure(self, repeat: int, pki: bool | None = None) -> None:
        """(Re)write central's config; each repeat gets its own shared group, so a stopped
        worker's session (expiring after 5 s) does not collect the next phase's messages."""
        with_pki = self.signed if pki is None else pki
        self.cfg.write_text(f'''log_level = "WARNING"
[broker]
port = {self.broker.port}
client_id = "central"
[ingest]
shared_group = "bench-r{repeat}"
shared_session_expiry_seconds = 5
[web]
port = {self.web_port}
[store]
url = "{self.url}"
''' + (f'[pki]\ndir = "{self.work / "pki"}"\n' if with_pki else ""))

    def events(self) -> int:
        return int(self.db.query("SELECT COUNT(*) FROM events")[0])

    def duplicated(self) -> int:
        return int(self.db.query("SELECT COUNT(*) - COUNT(DISTINCT event_id) FROM events")[0])

    def close(self) -> None:
        self.broker.stop()
        if self.pg is not None:
            self.pg.close()


class Dashboards:
    """``n`` logged-in operators polling ``GET /`` and ``GET /api/nodes`` every second, each with
    an SSE stream open; GET latencies in seconds."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.latencies: list[float] = []
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
                "ack_timeout": args.ack_timeout, "p1_channel": not args.no_p1_channel}
        spec_path = setup.work / f"fleet-{tag}-{i}.json"
        spec_path.write_text(json.dumps(spec))
        out = setup.work / f"fleet-{tag}-{i}.out.json"
        proc = subprocess.Popen([PY, str(ROOT / "bench" / "fleet_sim.py"), str(spec_path), str(out)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        procs.append((proc, out))
    for proc, _out in procs:
        wait_line(proc, "ready", 600)
    return procs


def run_phase(setup: Setup, args: argparse.Namespace, name: str, receivers: list[subprocess.Popen[str]],
              dashboards: Dashboards | None, web: subprocess.Popen[str] | None = None) -> PhaseResult:
    fleet = start_fleet(setup, args, name)
    time.sleep(args.heartbeat and 1.0)
    cpu0 = sum(cpu_seconds(p.pid) for p in receivers)
    n0 = setup.events()
    t0 = time.monotonic()
    for proc, _ in fleet:
        proc.send_signal(signal.SIGUSR1)
    if dashboards is not None:
        dashboards.start()
    time.sleep(args.duration)
    window = time.monotonic() - t0
    cpu = sum(cpu_seconds(p.pid) for p in receivers) - cpu0
    n1 = setup.events()
    if dashboards is not None:
        dashboards.close()
    for proc, _ in fleet:
        proc.send_signal(signal.SIGTERM)
    results = []
    for proc, out in fleet:
        proc.wait(args.drain + 120)
        results.append(json.loads(out.read_text()))
    lat = [x for r in results for x in r["latencies"]]
    p1 = [x for r in results for x in r["p1_latencies"]]
    offered = sum(r["offered"] for r in results)
    acked = sum(r["acked"] for r in results)
    res = PhaseResult(name)
    res.offered = offered / window
    res.acked = len(lat) / window  # acknowledged during the window and the drain, per window second
    committed = (n1 - n0) if name != "echo" else len(lat)
    res.committed = committed / window
    res.p50_ms, res.p99_ms = pct(lat, 50) * 1000, pct(lat, 99) * 1000
    res.p1_p99_ms = pct(p1, 99) * 1000 if p1 else float("nan")
    res.cpu_ms_per_event = cpu * 1000 / max(committed, 1)
    res.rss_mib = max((peak_rss_mib(p.pid) for p in receivers), default=0.0)
    if dashboards is not None and dashboards.latencies:
        res.get_p50_ms = pct(dashboards.latencies, 50) * 1000
        res.get_p99_ms = pct(dashboards.latencies, 99) * 1000
    res.lost = sum(r["unacked"] + r["backlog_left"] for r in results)
    res.duplicated = setup.duplicated() if name != "echo" else 0
    drained = [r["drained_s"] for r in results]
    res.extra = {"drained_s": max(drained) if drained and None not in drained else None,
                 "acked_total": acked, "rejected": sum(r["rejected"] for r in results),
                 "resent": sum(r["resent"] for r in results), "window_s": round(window, 1),
                 "dashboard_errors": dashboards.errors if dashboards else 0, "stored": setup.events(),
                 "rss_per_receiver_mib": [round(peak_rss_mib(p.pid)) for p in receivers],
                 "web_rss_mib": round(peak_rss_mib(web.pid)) if web is not None else None,
                 }
    return res


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
        for i in range(args.ingest):
            cli = [PY, "-m", "cProfile", "-o", str(args.profile / f"ingest-{i + 1}.prof"), "-m", "central_sync.cli"] \
                if args.profile else CLI
            procs.append(subprocess.Popen([*cli, "ingest", "--config", str(setup.cfg), "--worker-id", str(i + 1)],
                                          cwd=ROOT, env=env, stdout=log, stderr=log, text=True))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=500.0, help="events/s offered by the whole fleet")
    ap.add_argument("--p1-rate", type=float, default=0.0, help="extra P1 events/s (single messages)")
    ap.add_argument("--heartbeat", type=float, default=20.0, help="seconds between a post's heartbeats (0: none)")
    ap.add_argument("--backlog", type=int, default=0, help="events queued per post before the start")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last Acks")
    ap.add_argument("--ack-timeout", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=4, help="processes of simulated posts")
    ap.add_argument("--ingest", type=int, default=1, help="ingest workers (0: all-in-one 'run')")
    ap.add_argument("--dashboards", type=int, default=2)
    ap.add_argument("--no-web", action="store_true", help="ingest workers only (no web process, no dashboards)")
    ap.add_argument("--unsigned", action="store_true")
    ap.add_argument("--no-p1-channel", action="store_true", help="posts send P1s on event only (as before the P1 lane)")
    ap.add_argument("--postgres", action="store_true", help="central on a throwaway PostgreSQL cluster (fsync on)")
    ap.add_argument("--no-echo", action="store_true")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", default="fleet")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, databases)")
    ap.add_argument("--profile", type=Path, help="write cProfile output of each ingest worker into this directory")
    args = ap.parse_args()
    rows: dict[str, list[PhaseResult]] = {}
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp_dir:
        tmp = str(args.keep) if args.keep else tmp_dir
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
        setup = Setup(Path(tmp), args.posts, args.seed, postgres=args.postgres, signed=not args.unsigned)
        try:
            for repeat in range(args.repeat):
                setup.configure(repeat)
                if not args.no_echo:
                    echo = subprocess.Popen([PY, "-c", ECHO, str(setup.broker.port), "kentongan/v1"],
                                            stdout=subprocess.PIPE, text=True)
                    wait_line(echo, "ready", 30)
                    try:
                        rows.setdefault("echo", []).append(run_phase(setup, args, "echo", [echo], None))
                    finally:
                        stop([echo])
                central, web = start_central(setup, args)
                try:
                    dash = Dashboards(setup.web_port, args.dashboards) if args.dashboards and not args.no_web else None
                    rows.setdefault("central", []).append(run_phase(setup, args, "central", central, dash, web))
                finally:
                    stop([*central, *([web] if web else [])])
        finally:
            setup.close()
    print_table(args, rows)
    if args.json:
        args.json.write_text(json.dumps({k: [vars(r) for r in v] for k, v in rows.items()}, indent=1))


def print_table(args: argparse.Namespace, rows: dict[str, list[PhaseResult]]) -> None:
    def med(name: str, attr: str) -> float:
        return median([getattr(r, attr) for r in rows.get(name, [])])

    echo_cpu = med("echo", "cpu_ms_per_event")
    out = []
    for name in rows:
        cpu = med(name, "cpu_ms_per_event")
        out.append([name, f"{med(name, 'offered'):.0f}", f"{med(name, 'committed'):.0f}", f"{med(name, 'acked'):.0f}",
                    f"{med(name, 'p50_ms'):.1f}", f"{med(name, 'p99_ms'):.1f}", f"{med(name, 'p1_p99_ms'):.1f}",
                    f"{cpu:.3f}", f"{cpu / echo_cpu:.2f}x" if echo_cpu == echo_cpu and echo_cpu > 0 else "-",
                    f"{med(name, 'rss_mib'):.0f}", f"{med(name, 'get_p50_ms'):.1f}", f"{med(name, 'get_p99_ms'):.1f}",
                    f"{med(name, 'lost'):.0f}", f"{med(name, 'duplicated'):.0f}"])
    p1 = f" + {args.p1_rate:.0f} P1/s" if args.p1_rate else ""
    print(f"fleet: {args.posts} posts in {args.procs} processes, {args.rate:.0f} ev/s offered{p1}, "
          f"heartbeat {args.heartbeat:g} s, backlog {args.backlog}/post, "
          f"{'unsigned' if args.unsigned else 'signed'}, {args.duration:g} s x {args.repeat}, "
          f"ingest {'all-in-one run' if args.ingest == 0 else f'{args.ingest} worker(s)'}"
          f"{'' if args.no_web else ' + web'}, store {'PostgreSQL' if args.postgres else 'SQLite'}")
    print(table(["system", "offered/s", "committed/s", "acked/s", "Ack p50 ms", "Ack p99 ms", "P1 p99 ms",
                 "CPU ms/ev", "vs echo", "RSS MiB", "GET p50 ms", "GET p99 ms", "lost", "dup"], out))
    for name, rs in rows.items():
        print(f"{name}: " + "; ".join(json.dumps(r.extra) for r in rs))


if __name__ == "__main__":
    main()
