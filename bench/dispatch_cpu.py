"""The event-loop thread's own work per uplink message, in-process: ``UplinkDispatcher.handle``
(decode, checks, the heartbeat's authentication, queueing) for single signed event messages and
signed heartbeats as the tree's own post encodes them, each with its ``Delivery``, then the
queue's ``take`` of the batch. No broker, no paho, no commit.

    .venv/bin/python bench/dispatch_cpu.py [--messages 2000] [--repeat 5]
    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python bench/dispatch_cpu.py --rounds N

Prints the median over ``--repeat`` of CPU us per message (``time.process_time``) for events and
heartbeats. On a machine shared with other jobs those figures move by tens of percent; the
instruction count does not: run it under callgrind with ``--rounds 0`` and ``--rounds 2`` (same
messages, same start-up) and divide the difference of the "Collected" totals by
2 x ``--messages`` for the instructions per message (``PYTHONHASHSEED=0``; ``--only event`` or
``--only heartbeat`` for one kind).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_sync.acks import AckWindow, Delivery, Link
from central_sync.config import IngestConfig
from central_sync.ingest_dispatch import UplinkDispatcher
from central_sync.ingest_queue import IngestQueue
from central_sync.ingest_stats import IngestStats
from central_sync.message_auth import MessageAuth
from central_sync.reject_budget import RejectBudget
from central_sync.rejections import RejectionAggregator
from central_sync.verify_cache import KeyCache
from edge.signing import EventSigner, MessageSigner, NodeKey
from edge.sync.wire import EventEnvelope, Heartbeat, Topics, encode

TOPICS = Topics("kentongan/v1")
NODE = "post-00001"


def events(n: int, key: Ed25519PrivateKey) -> list[bytes]:
    sign = EventSigner(key)
    return [encode(sign(EventEnvelope(
        event_id=uuid.uuid4().hex, node_id=NODE, boot_id="b" * 32, seq=i, mono_ns=time.monotonic_ns(),
        wall_time=time.time(), time_quality="synced", type="STATUS", priority=2, incident_id=None,
        payload={"note": "x" * 200}))) for i in range(n)]


def heartbeats(n: int, key: Ed25519PrivateKey) -> list[bytes]:
    signer = MessageSigner(key)
    return [encode(signer.sign(Heartbeat(
        node_id=NODE, boot_id="b" * 32, at=time.time(), version="1.4.0", time_quality="synced", clock_offset=0.01,
        outbox={"ready": i % 7, "in_flight": 1}, siren={"state": "idle"},
        extra={"published": 1000 + i, "acked": 999 + i, "requeued": 0, "reconnects": 2, "central_present": True},
    ))) for i in range(n)]


class Harness:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        settings = IngestConfig(max_pending_events=1_000_000, batch_max=5000)
        self.queue = IngestQueue(settings)
        self.stats = IngestStats()
        registry = {NODE: NodeKey(NODE, key.public_key(), "enrolled")}
        self.dispatcher = UplinkDispatcher(TOPICS, self.queue, self.stats, RejectionAggregator(),
                                           RejectBudget(burst=100, rate_per_s=10),
                                           MessageAuth(KeyCache(registry.get, lambda: 1)))
        self.link = Link("bench", paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5), AckWindow(10))

    def run(self, topic: str, msgs: list[bytes]) -> None:
        handle, link = self.dispatcher.handle, self.link
        for mid, payload in enumerate(msgs, 1):
            handle(topic, payload, Delivery(link, mid, 1))
        self.queue.take(self.stats)
        assert not self.stats.rejected, self.stats.rejected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=None, help="callgrind mode: this many untimed rounds")
    ap.add_argument("--only", choices=("event", "heartbeat"), default=None, help="callgrind mode: one kind")
    args = ap.parse_args()

    async def body() -> None:
        key = Ed25519PrivateKey.generate()
        h = Harness(key)
        ev_msgs, hb_msgs = events(args.messages, key), heartbeats(args.messages, key)
        ev_topic, hb_topic = TOPICS.up(NODE, "event"), TOPICS.up(NODE, "heartbeat")
        h.run(ev_topic, ev_msgs[:50])
        h.run(hb_topic, hb_msgs[:50])  # warm: key cache, imports
        if args.rounds is not None:
            for _ in range(args.rounds):
                if args.only != "heartbeat":
                    h.run(ev_topic, ev_msgs)
                if args.only != "event":
                    h.run(hb_topic, hb_msgs)
            return
        out: dict[str, list[float]] = {"event": [], "heartbeat": []}
        for _ in range(args.repeat):
            for kind, topic, msgs in (("event", ev_topic, ev_msgs), ("heartbeat", hb_topic, hb_msgs)):
                t0 = time.process_time()
                h.run(topic, msgs)
                out[kind].append((time.process_time() - t0) * 1e6 / len(msgs))
        print(f"CPU us per message on the loop thread (handle + take), median of {args.repeat} x {args.messages}")
        for kind, values in out.items():
            print(f"  {kind:9s} {statistics.median(values):7.1f}")

    asyncio.run(body())


if __name__ == "__main__":
    main()
