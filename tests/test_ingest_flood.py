"""A post that floods garbage costs central little: rejections are counted and aggregated (one
row and one log line per node and reason per interval), memory stays flat, the flooding post is
flagged, and other posts' events are still acknowledged (issue 10 item 5).

Real Mosquitto, a real ``kentongan-central run`` process. The CI bound sends 20,000 garbage
messages; ``KENTONGAN_SOAK=1`` sends 100,000."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from central_sync.broker import LocalMosquitto
from edge.sync.wire import encode
from tests.helpers_central import PREFIX, StateWatcher, rss_mib, start, write_config
from tests.test_ingest import ev
from tests.waits import wait_for as _wait

TOTAL = 100_000 if os.environ.get("KENTONGAN_SOAK") else 20_000


def _garbage(rng: random.Random, i: int) -> tuple[str, bytes]:
    good = json.loads(encode(ev("post-evil", seq=i)))
    kind = i % 8
    topic = f"{PREFIX}/up/post-evil/event"
    if kind == 0:
        return topic, rng.randbytes(rng.randint(1, 300))
    if kind == 1:
        return topic, json.dumps({**good, "priority": 99}).encode()
    if kind == 2:
        return topic, json.dumps({**good, "seq": 2**64 + i}).encode()
    if kind == 3:
        return topic, json.dumps({**good, "event_id": uuid.uuid4().hex, "payload": {"x": "\udcff" * 3}}).encode()
    if kind == 4:
        return f"{PREFIX}/up/post-evil/heartbeat", b'{"v":1,"kind":"heartbeat","node_id":"post-evil"}'
    if kind == 5:
        return f"{PREFIX}/up/post-evil/presence", b"[" * 5000
    if kind == 6:
        return topic, json.dumps({**good, "node_id": "post-victim"}).encode()  # wrong node
    return f"{PREFIX}/up/post-evil/cmd_result", json.dumps({"v": 1, "kind": "command_result"}).encode()


class Poster:
    def __init__(self, port: int, node: str) -> None:
        self.acked: set[str] = set()
        self.rejected: dict[str, str] = {}
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"test-{node}", protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{PREFIX}/down/{node}/ack", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        with self.lock:
            self.acked.update(data["event_ids"])
            self.rejected.update({r["event_id"]: r["reason"] for r in data["rejected"]})

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_garbage_flood_is_aggregated_flagged_and_memory_stays_flat(tmp_path: Path,
                                                                   mosquitto: LocalMosquitto) -> None:
    cfg = write_config(tmp_path / "central.toml", mosquitto.port, rejection_interval_s=1.0, flood_threshold=500)
    log = tmp_path / "central.log"
    watcher = StateWatcher(mosquitto.port)
    central = start(["run", "--config", str(cfg)], log)
    evil = Poster(mosquitto.port, "post-evil")
    good = Poster(mosquitto.port, "post-good")
    try:
        watcher.wait_online({"central"})
        warm = [ev("post-good", seq=i) for i in range(50)]
        for e in warm:
            good.client.publish(f"{PREFIX}/up/post-good/event", encode(e), qos=1)
        _wait(lambda: {e.event_id for e in warm} <= good.acked, 60, "warm-up acks")
        rss_before = rss_mib(central.pid)
        rng = random.Random(7)
        sent = 0
        probes: list[str] = []
        probe_s: list[float] = []  # publish -> Ack of each good probe (reported, not asserted)
        while sent < TOTAL:
            for _ in range(1000):
                topic, body = _garbage(rng, sent)
                evil.client.publish(topic, body, qos=1)
                sent += 1
            probe = ev("post-good", seq=10_000 + sent)
            probes.append(probe.event_id)
            t0 = time.monotonic()
            good.client.publish(f"{PREFIX}/up/post-good/event", encode(probe), qos=1)
            # A good event is acknowledged while the flood goes on (bounded wait per 1,000).
            _wait(lambda pid=probe.event_id: pid in good.acked, 60, "a good post's event during the flood")
            probe_s.append(time.monotonic() - t0)
        db = tmp_path / "central.db"

        def recorded() -> int:
            conn = sqlite3.connect(db, timeout=30)
            try:
                return int(conn.execute("SELECT COALESCE(SUM(count), 0) FROM rejections").fetchone()[0])
            finally:
                conn.close()

        _wait(lambda: recorded() >= TOTAL, 120, "every rejection counted in the store")
        assert central.poll() is None, "central exited"
        growth = rss_mib(central.pid) - rss_before
        print(f"flood of {TOTAL}: central RSS {rss_before:.0f} -> {rss_before + growth:.0f} MiB; good probe "
              f"publish->Ack median {statistics.median(probe_s):.3f} s, max {max(probe_s):.3f} s")
        assert growth < 50, f"RSS grew {growth:.0f} MiB"
        conn = sqlite3.connect(db)
        rows = conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
        per_node = dict(conn.execute("SELECT node_id, SUM(count) FROM rejections GROUP BY node_id").fetchall())
        conn.close()
        assert recorded() == TOTAL and per_node == {"post-evil": TOTAL}
        assert rows < TOTAL / 50, f"{rows} rejection rows for {TOTAL} messages: not aggregated"
        lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
        summaries = [ln for ln in lines if ln.get("message") == "messages_rejected" or ln.get("event") ==
                     "messages_rejected"]
        flagged = [ln for ln in lines if "node_flooding" in (ln.get("message"), ln.get("event"))]
        assert 0 < len(summaries) < TOTAL / 50
        assert flagged and all(ln.get("node_id") == "post-evil" for ln in flagged)
        assert set(probes) <= good.acked
        assert any(reason == "wrong_node" for reason in evil.rejected.values())
    finally:
        evil.close()
        good.close()
        watcher.close()
        central.terminate()
        central.wait(30)
