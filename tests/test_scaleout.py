"""Two ``kentongan-central ingest`` processes share a fleet's load through one MQTT 5 shared
subscription; one is SIGKILLed mid-load: 0 events lost, 0 duplicated, P1 still acknowledged.

Real Mosquitto (project config), real central processes, simulated posts speaking the real
wire protocol (bench/fleet_sim.py: they resend whatever has no Ack after their ack timeout)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from central_sync.broker import LocalMosquitto
from tests.helpers_central import ROOT, StateWatcher, start, write_config
from tests.waits import wait_for as _wait


def _count(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_two_ingest_processes_share_load_and_survive_a_sigkill(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    cfg = write_config(tmp_path / "central.toml", mosquitto.port, shared_group="scale",
                       shared_session_expiry_seconds=3, batch_wait_ms=20)
    db = tmp_path / "central.db"
    log = tmp_path / "central.log"
    watcher = StateWatcher(mosquitto.port)
    workers = {wid: start(["ingest", "--config", str(cfg), "--worker-id", wid], log) for wid in ("1", "2")}
    fleet: subprocess.Popen[str] | None = None
    try:
        watcher.wait_online({"central-1", "central-2"})
        spec = {"port": mosquitto.port, "nodes": [f"post-{i:03d}" for i in range(40)], "rate": 150.0,
                "p1_rate": 4.0, "heartbeat_s": 5.0, "signed": False, "ack_timeout": 2.0, "drain_s": 120.0}
        (tmp_path / "fleet.json").write_text(json.dumps(spec))
        out = tmp_path / "fleet.out.json"
        fleet = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fleet_sim.py"), str(tmp_path / "fleet.json"),
                                  str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert fleet.stdout is not None
        assert fleet.stdout.readline().strip() == "ready"
        fleet.send_signal(signal.SIGUSR1)
        _wait(lambda: _count(db) > 300, 60, "events committed by both workers")
        workers["1"].send_signal(signal.SIGKILL)  # mid-load, with deliveries in flight
        workers["1"].wait(10)
        _wait(lambda: "central-1" not in watcher.online(), 30, "the dead worker's will (offline)")
        before = _count(db)
        _wait(lambda: _count(db) > before + 600, 90, "the living worker carrying the load")
        fleet.send_signal(signal.SIGTERM)  # stop offering; the posts drain until every event is acked
        fleet.wait(180)
        result = json.loads(out.read_text())
        assert result["unacked"] == 0 and result["backlog_left"] == 0, result
        assert result["acked"] == result["offered"] > 900
        conn = sqlite3.connect(db)
        total, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events").fetchone()
        p1 = conn.execute("SELECT COUNT(*) FROM events WHERE priority = 1").fetchone()[0]
        conn.close()
        assert total == distinct == result["offered"]  # 0 lost, 0 duplicated
        assert p1 > 10 and len(result["p1_latencies"]) == p1  # every P1 acknowledged, also after the kill
        assert workers["2"].poll() is None
    finally:
        if fleet is not None and fleet.poll() is None:
            fleet.kill()
        for w in workers.values():
            if w.poll() is None:
                w.terminate()
                w.wait(30)
        watcher.close()


def test_web_process_shows_what_an_ingest_worker_commits(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    """``kentongan-central web`` runs apart from ingest: it reads the database (change feed) and
    an incident opened from a worker's commit appears on its API."""
    import urllib.request
    from http.cookiejar import CookieJar

    from edge.sync.wire import encode
    from tests.helpers_web import ready_port, web_toml
    from tests.test_ingest import Node, ev, up

    ready = tmp_path / "web.ready"
    cfg = write_config(tmp_path / "central.toml", mosquitto.port, shared_group="scale")
    with cfg.open("a") as fh:
        fh.write(web_toml(ready))  # port 0: the web process binds a free port and reports it
    pw = tmp_path / "pw"
    pw.write_text("operator-password-1\n")
    subprocess.run([sys.executable, "-m", "central_sync.cli", "user", "add", "op", "--role", "operator",
                    "--password-file", str(pw), "--config", str(cfg)], check=True, cwd=ROOT, capture_output=True)
    log = tmp_path / "central.log"
    watcher = StateWatcher(mosquitto.port)
    worker = start(["ingest", "--config", str(cfg), "--worker-id", "a"], log)
    web = start(["web", "--config", str(cfg)], log)
    node = Node(mosquitto.port, "post-web")
    try:
        web_port = ready_port(ready, proc=web, log=log)
        watcher.wait_online({"central-a"})
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

        def login() -> bool:
            body = b'{"username": "op", "password": "operator-password-1"}'
            req = urllib.request.Request(f"http://127.0.0.1:{web_port}/api/login", body,
                                         {"Content-Type": "application/json"})
            try:
                opener.open(req, timeout=5).read()
            except OSError:
                return False
            return True

        _wait(login, 60, "the web process answering")
        panic = ev("post-web", type="PANIC", priority=1)
        node.publish(up("post-web"), encode(panic))
        _wait(lambda: panic.event_id in node.acked_ids(), 30, "the worker's Ack")

        def incidents() -> list[dict[str, object]]:
            data: list[dict[str, object]] = json.loads(
                opener.open(f"http://127.0.0.1:{web_port}/api/incidents", timeout=5).read())
            return data

        _wait(lambda: any(i.get("node_id") == "post-web" for i in incidents()), 30, "the incident on the web API")
        assert worker.poll() is None and web.poll() is None
    finally:
        node.close()
        for p in (worker, web):
            p.terminate()
            p.wait(30)
        watcher.close()
