"""bench/fleet_sim.py's simulated posts (on bench/mqtt_lite.py, the load generator's own MQTT 5
client) against a real Mosquitto (project config) and a real central ingest (IngestService,
CentralStore, the key-cached verifier with every post's key): signed single events, P1s on the
P1 channel, a signed ``event_batch`` backlog, retained signed presence and signed heartbeats all
arrive; every event is committed once and acknowledged; events resent while central is away
(no Ack within the ack timeout) are stored once."""

from __future__ import annotations

import threading
from pathlib import Path

from bench.fleet_sim import Fleet, SimSpec, node_ids, node_key
from central_sync.broker import LocalMosquitto
from central_sync.config import CentralConfig
from central_sync.store import CentralStore
from central_sync.verify_cache import CachedEventVerifier, KeyCache
from edge.signing import NodeKey
from tests.helpers_central import IngestInThread
from tests.waits import wait_for

SEED = "fleet-test"


def _central(db: Path, port: int, nodes: list[str]) -> IngestInThread:
    cfg = CentralConfig.model_validate({
        "database": str(db), "broker": {"host": "127.0.0.1", "port": port, "client_id": "central-fleet",
                                        "reconnect_max_seconds": 1.0}})
    keys = {n: NodeKey(n, node_key(SEED, n).public_key(), "enrolled") for n in nodes}
    central = IngestInThread(cfg, CentralStore(db), CachedEventVerifier(KeyCache(keys.get, lambda: 1)))
    central.start()
    central.wait_connected(30)
    return central


def test_fleet_of_20_posts_every_event_stored_once_and_acked(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    nodes = node_ids("sim", 0, 20)
    central = _central(tmp_path / "central.db", mosquitto.port, nodes)
    spec = SimSpec(port=mosquitto.port, nodes=nodes, seed=SEED, rate=60.0, p1_rate=4.0, heartbeat_s=1.0,
                   backlog=25, batch_events=10, ack_timeout=1.0, start_now=True, presign_s=2.0)
    fleet = Fleet(spec)
    runner: threading.Thread | None = None
    try:
        fleet.connect_all(keepalive=30, wait_s=60)
        assert fleet.result.connected == 20
        runner = threading.Thread(target=fleet.run, args=(False,), daemon=True)
        runner.start()
        store = central.store
        wait_for(lambda: store.count_events() > 300, 60, "events committed")
        wait_for(lambda: sum(1 for n in store.list_nodes() if n["time_quality"] == "synced") == 20, 60,
                 "a heartbeat (QoS 0) of every post")
        central.stop()  # central away: no Acks; the posts resend after their ack timeout
        resent = fleet.result.resent
        wait_for(lambda: fleet.result.resent > resent + 20, 60, "resends while central is away")
        central.start()
        central.wait_connected(30)
        wait_for(lambda: store.count_events() > 500, 60, "central back, committing")
        fleet.running = False
        runner.join(60)
        fleet.drain(90)
        res = fleet.result
        assert fleet.hub.errors == 0 and res.protocol_errors == 0, res.protocol_notes
        assert res.unacked == 0 and res.backlog_left == 0
        assert res.acked == res.offered > 500 and res.rejected == 0
        assert res.duplicate_acks > 0  # the resent copies were answered too ...
        rows = store.list_events(limit=100_000)
        ids = [r["event_id"] for r in rows]
        assert len(ids) == len(set(ids)) == res.offered  # ... and stored once
        assert sum(1 for r in rows if r["priority"] == 1) == len(res.p1_latencies) > 0
        assert sum(1 for r in rows if r["priority"] == 3) == 20 * 25  # the signed event_batch backlog
        seen = {n["node_id"]: n for n in store.list_nodes()}
        assert set(seen) == set(nodes)
        boots = {p.node: p.boot for p in fleet.posts}
        for n in seen.values():  # presence (version, boot, presence_at) and heartbeats (outbox, time quality)
            assert n["presence_at"] and n["online"] and n["version"] == "bench" and n["boot_id"] == boots[n["node_id"]]
            assert n["time_quality"] == "synced" and n["outbox"] is not None, n
    finally:
        fleet.running = False
        if runner is not None:
            runner.join(60)
        fleet.hub.close_all()
        central.close()
