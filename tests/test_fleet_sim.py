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
from edge.sync.wire import MAX_BATCH_BYTES
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


def test_backlog_batches_are_cut_where_a_post_cuts_them() -> None:
    """A backlog ``event_batch`` carries as many envelopes as the post's batch builder puts in one
    (``edge.sync.uplink_envelope.next_message``: up to ``MAX_BATCH_BYTES`` with the batch
    signature), not a smaller bench-only size: central's per-message cost is part of the drain."""
    fleet = Fleet(SimSpec(port=1, nodes=node_ids("sim", 0, 1), seed=SEED, backlog=400))
    post = fleet.posts[0]
    envs = [post.make_envelope(3, "STATUS") for _ in range(400)]
    post.backlog.extend(envs)
    post.pack_backlog()
    counts = [n for _first, n, _body in post.packed]
    assert sum(counts) == 400
    start = 0
    for n, (_first, _n, body) in zip(counts, post.packed, strict=True):
        assert len(body) <= MAX_BATCH_BYTES
        if start + n < len(envs):  # full: the next envelope would not have fitted
            assert len(body) + len(envs[start + n][1]) + 1 > MAX_BATCH_BYTES
        start += n
    fleet.hub.close_all()


def test_overdue_events_go_again_in_batches_and_alarms_at_once() -> None:
    """An ack timeout puts the overdue events back (a post's ``outbox.release``) and they go again
    as ONE paced batch, their latency still counted from the first copy; an overdue P1 goes
    again at once on its own (P1 channel and ``event``). Before, every overdue event was its own
    message: in a mass reconnect some 20,000 single-event messages, each verified by central."""
    fleet = Fleet(SimSpec(port=1, nodes=node_ids("sim", 0, 1), seed=SEED, ack_timeout=1.0))
    post = fleet.posts[0]
    now = 100.0
    for prio in (3,) * 30 + (1,):
        event_id, body = post.make_envelope(prio, "STATUS")
        sent = now - 6 if prio == 1 else now - 5  # the P1 is the oldest: in the probe
        post.unacked[event_id] = (sent, sent, body, prio)
    p1 = next(i for i, e in post.unacked.items() if e[3] == 1)
    post.resend(now)  # no Ack yet: the oldest PROBE (20) go again, the P1 among them
    res = fleet.result
    assert res.resent == 1 and res.resent_msgs == 1  # the P1, at once
    assert len(post.requeued) == 19 and post.unacked[p1][1] == now
    post.pump(now + 0.1)
    assert not post.requeued and res.resent == 20 and res.resent_msgs == 2  # 19 in one batch
    assert len(post.unconfirmed) == 1  # paced like the backlog (PUBACK window)
    again = [e for e in post.unacked.values() if e[1] == now + 0.1]
    assert len(again) == 19 and all(e[0] == now - 5 for e in again)
    fleet.hub.close_all()
