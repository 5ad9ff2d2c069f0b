"""The P1 channel: alarms are committed and acknowledged ahead of a reconnecting fleet's backlog.

Real Mosquitto (project config), a real ``kentongan-central ingest`` process and simulated posts
speaking the real wire protocol (bench/fleet_sim.py): every post reconnects with a backlog, and
P1 events are raised while central drains it. The P1s travel first on ``up/<node>/event/p1``
(central's own connection, queue and commits) and again on ``up/<node>/event``. No fixed time
bound: a P1's publish->Ack latency must be a small fraction of the time the backlog takes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from central_sync.broker import LocalMosquitto
from central_sync.config import parse_central_config
from central_sync.ingest import IngestService
from central_sync.ingest_p1 import P1Process, p1_subscription
from central_sync.store import CentralStore
from edge.sync.wire import EventEnvelope, Topics, encode
from tests.helpers_central import ROOT, StateWatcher, start, write_config
from tests.waits import wait_for as _wait

POSTS = 30
BACKLOG = 3000  # events per post: 90,000 queued at central's broker session


def _count(db: Path, where: str = "", what: str = "COUNT(*)") -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(conn.execute(f"SELECT {what} FROM events {where}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    return ys[len(ys) // 2]


def test_p1_acked_ahead_of_a_reconnecting_fleets_backlog(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    cfg = write_config(tmp_path / "central.toml", mosquitto.port, shared_group="storm", batch_wait_ms=20)
    db = tmp_path / "central.db"
    watcher = StateWatcher(mosquitto.port)
    central = start(["ingest", "--config", str(cfg), "--worker-id", "1"], tmp_path / "central.log")
    fleet: subprocess.Popen[str] | None = None
    try:
        watcher.wait_online({"central-1"})
        spec = {"port": mosquitto.port, "nodes": [f"storm-{i:03d}" for i in range(POSTS)], "rate": 0.0,
                "p1_rate": 3.0, "heartbeat_s": 5.0, "backlog": BACKLOG, "batch_events": 100, "window": 1000,
                "signed": False, "ack_timeout": 60.0, "drain_s": 240.0}
        (tmp_path / "fleet.json").write_text(json.dumps(spec))
        out = tmp_path / "fleet.out.json"
        fleet = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fleet_sim.py"), str(tmp_path / "fleet.json"),
                                  str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert fleet.stdout is not None
        assert fleet.stdout.readline().strip() == "ready"
        fleet.send_signal(signal.SIGUSR1)  # every post sends its backlog at once, P1s keep coming
        total = POSTS * BACKLOG
        _wait(lambda: _count(db) > total // 2, 240, "half the backlog committed")
        fleet.send_signal(signal.SIGTERM)  # no new P1s; the posts drain until every event is acked
        fleet.wait(300)
        result = json.loads(out.read_text())
        assert result["unacked"] == 0 and result["backlog_left"] == 0, {k: result[k] for k in
                                                                        ("unacked", "backlog_left")}
        stored, extra = _count(db), _count(db, what="COUNT(*) - COUNT(DISTINCT event_id)")
        p1 = _count(db, "WHERE priority = 1")
        assert result["acked"] == result["offered"] == stored  # 0 lost
        assert extra == 0  # 0 duplicated (each P1 arrived on both channels)
        assert p1 >= 3 and len(result["p1_latencies"]) == p1  # every P1 acknowledged
        drained = result["drained_s"]
        backlog_latency = result["latencies"]
        worst_p1 = max(result["p1_latencies"])
        summary = {"drained_s": drained, "worst_p1_s": round(worst_p1, 3), "p1": p1,
                   "median_ack_s": round(_median(backlog_latency), 3)}
        print(summary)
        # The backlog takes many seconds; an alarm raised during it waits for none of it.
        assert drained is not None and drained > 3 * worst_p1, summary
        assert worst_p1 < _median(backlog_latency), summary
        # the ingest process consumed the P1 channel on its own connection
        assert "p1_lane_connected" in (tmp_path / "central.log").read_text()
    finally:
        if fleet is not None and fleet.poll() is None:
            fleet.kill()
        if central.poll() is None:
            central.send_signal(signal.SIGTERM)
            central.wait(30)
        watcher.close()


def _acked_node(port: int, topics: Topics, acks: list[dict[str, Any]]) -> paho.Client:
    """A bare MQTT client standing in for post ``node-a``: every Ack it receives lands in ``acks``."""
    node = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="lane-node", protocol=paho.MQTTv5)
    node.on_message = lambda _c, _u, m: acks.append(json.loads(m.payload))
    node.connect("127.0.0.1", port)
    node.subscribe(topics.down("node-a", "ack"), qos=1)
    node.loop_start()
    return node


def env(priority: int) -> EventEnvelope:
    """A PANIC envelope from ``node-a`` with this priority and a fresh event id."""
    return EventEnvelope(event_id=uuid.uuid4().hex, node_id="node-a", boot_id="b", seq=1, mono_ns=1,
                         wall_time=time.time(), time_quality="synced", type="PANIC", priority=priority)


def test_p1_lane_rejects_non_p1_and_dedups_the_normal_copy(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    """Only priority 1 may use the lane (``not_p1``, named in the Ack); a P1 that arrives on both
    channels is stored once and acknowledged on each."""

    cfg = parse_central_config({"database": str(tmp_path / "central.db"),
                                "broker": {"port": mosquitto.port, "client_id": "central-lane",
                                           "reconnect_min_seconds": 0.05, "reconnect_max_seconds": 0.5},
                                "ingest": {"batch_wait_ms": 10}})
    assert p1_subscription(cfg)[0] == "kentongan/v1/up/+/event/p1"
    store = CentralStore(cfg.database)
    topics = Topics()
    acks: list[dict[str, Any]] = []
    node = _acked_node(mosquitto.port, topics, acks)

    async def scenario() -> None:
        svc = IngestService(cfg, store)
        task = asyncio.create_task(svc.run())
        assert svc.p1 is not None
        await asyncio.wait_for(svc.p1.connected.wait(), 30)
        await asyncio.wait_for(svc.connected.wait(), 30)
        alarm, status = env(1), env(3)
        node.publish(topics.up("node-a", "event/p1"), encode(alarm), qos=1)
        node.publish(topics.up("node-a", "event/p1"), encode(status), qos=1)
        node.publish(topics.up("node-a", "event"), encode(alarm), qos=1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            ids = [i for a in acks for i in a["event_ids"]]
            rejected = {r["event_id"]: r["reason"] for a in acks for r in a["rejected"]}
            if ids.count(alarm.event_id) >= 2 and status.event_id in rejected:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert ids.count(alarm.event_id) == 2, acks  # acknowledged on the lane and again on the normal path
        assert rejected == {status.event_id: "not_p1"}
        assert svc.stats.p1_committed == 1 and svc.stats.rejected.get("not_p1") == 1
        assert store.count_events() == 1  # stored once

    try:
        asyncio.run(scenario())
    finally:
        node.loop_stop()
        node.disconnect()
        store.close()


def test_p1_process_acks_alarms_while_bulk_ingest_is_paused(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    """``ingest --lane p1`` is the P1 lane alone in its own process; ``--lane bulk`` workers leave
    the P1 channel to it. With the bulk worker frozen (SIGSTOP: busy with a backlog, or hung) a
    P1 is still stored and acknowledged by the P1 process, a P3 waits; once the worker runs again
    it acknowledges the P3 and the P1's copy from the normal channel (a duplicate: stored once)."""

    cfg = write_config(tmp_path / "central.toml", mosquitto.port, shared_group="lanes", batch_wait_ms=10)
    db = tmp_path / "central.db"
    log = tmp_path / "central.log"
    watcher = StateWatcher(mosquitto.port)
    bulk = start(["ingest", "--config", str(cfg), "--worker-id", "1", "--lane", "bulk"], log)
    lane = start(["ingest", "--config", str(cfg), "--worker-id", "p1", "--lane", "p1"], log)
    topics = Topics()
    acks: list[dict[str, Any]] = []
    node = _acked_node(mosquitto.port, topics, acks)

    def acked(event_id: str) -> int:
        return [i for a in list(acks) for i in a["event_ids"]].count(event_id)

    try:
        watcher.wait_online({"central-1"})
        _wait(lambda: "p1_lane_connected" in log.read_text(errors="replace"), 60, "P1 process subscribed")
        assert "central-p1" not in watcher.states  # the P1 process announces no central presence
        bulk.send_signal(signal.SIGSTOP)
        try:
            alarm, status = env(1), env(3)
            node.publish(topics.up("node-a", "event/p1"), encode(alarm), qos=1)
            node.publish(topics.up("node-a", "event"), encode(alarm), qos=1)
            node.publish(topics.up("node-a", "event"), encode(status), qos=1)
            _wait(lambda: acked(alarm.event_id) >= 1, 60, "P1 acknowledged by the P1 process")
            assert _count(db, f"WHERE event_id = '{alarm.event_id}'") == 1  # committed before the Ack
            assert acked(status.event_id) == 0  # the bulk worker is frozen
        finally:
            bulk.send_signal(signal.SIGCONT)
        _wait(lambda: acked(status.event_id) == 1 and acked(alarm.event_id) == 2, 60, "bulk worker caught up")
        assert _count(db) == 2  # the P1's second copy was a duplicate
    finally:
        node.loop_stop()
        node.disconnect()
        watcher.close()
        for proc in (bulk, lane):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(30)


def test_p1_process_rejection_summary_survives_a_locked_store(tmp_path: Path) -> None:
    """The P1 process writes its rejection summaries with the same retrying store call as the bulk
    batcher: while another connection holds the database (``BEGIN IMMEDIATE``) the write is
    retried, not dropped, and the summary is in the store once the lock is released."""
    db = tmp_path / "central.db"
    cfg = parse_central_config({"database": str(db), "broker": {"port": 1, "client_id": "central-p1"},
                                "ingest": {"db_retry_max_seconds": 0.2}})
    store = CentralStore(db, busy_timeout_s=0.05)
    proc = P1Process(cfg, store, verify_event=None, client_id="central-p1", shared_group=None)
    status = env(3)  # not an alarm: refused by the lane
    proc.lane.handle(Topics().up("node-a", "event/p1"), encode(status), None)
    assert proc.stats.rejected == {"not_p1": 1}
    holder = sqlite3.connect(db, timeout=30, isolation_level=None)

    async def scenario() -> None:
        holder.execute("BEGIN IMMEDIATE")
        held = True
        try:
            flush = asyncio.create_task(proc.flush_rejections())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while proc.stats.store_retries < 3 and loop.time() < deadline:  # retried, still held
                assert not flush.done(), flush
                await asyncio.sleep(0.02)
            assert proc.stats.store_retries >= 3 and not flush.done()
            holder.execute("COMMIT")
            held = False
            await asyncio.wait_for(flush, 60)
        finally:
            if held:
                holder.execute("ROLLBACK")

    try:
        asyncio.run(scenario())
        assert store.rejection_counts() == {"not_p1": 1}
        assert [r["node_id"] for r in store.list_rejections()] == ["node-a"]
    finally:
        holder.close()
        store.close()
