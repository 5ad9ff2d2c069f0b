"""Central's commit stage alone: CPU per stored event of ``commit_events`` on SQLite, in batches
the size ingest makes at the fleet benchmark's load (single event messages, ~10-15 per batch).

    .venv/bin/python bench/commit_cpu.py [--batch 12] [--events 12000] [--warm 30000] [--repeat 5]

A fresh store file per repeat (WAL, synchronous=FULL as in production), ``--warm`` events
committed first (so the b-trees have depth), then ``--events`` more in batches of ``--batch``
envelopes of 1,000 posts (random UUID event ids, one PANIC in 50, the rest STATUS, as
``bench/fleet_sim.py``), timed by this process's CPU: user and system seconds separately
(``os.times``), so other load on the machine matters much less than in ``bench/fleet.py``.
Runs in the tree it is started from: the same file run from two worktrees back to back is an A/B
of the store's schema and commit path. Prints medians in microseconds per event.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from central_sync.store import open_store
from edge.sync.wire import EventEnvelope


def envelopes(n: int, rng: random.Random) -> list[EventEnvelope]:
    out = []
    for i in range(n):
        node = f"pos-{rng.randrange(1000):05d}"
        out.append(EventEnvelope.model_construct(
            v=1, kind="event", event_id=str(uuid.uuid4()), node_id=node, boot_id=uuid.uuid4().hex, seq=i,
            mono_ns=i * 1000, wall_time=time.time(), time_quality="synced", type="PANIC" if i % 50 == 0 else "STATUS",
            priority=1 if i % 50 == 0 else 2, incident_id=None, payload={"n": i, "note": "ronda malam"},
            sig="A" * 86 + "=="))
    return out


def one(batch: int, events: int, warm: int, seed: int) -> tuple[float, float]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/central.db")
        try:
            pre = envelopes(warm, rng)
            for i in range(0, warm, batch):
                store.commit_events(pre[i:i + batch], time.time())
            evs = envelopes(events, rng)
            t0 = os.times()
            for i in range(0, events, batch):
                store.commit_events(evs[i:i + batch], time.time())
            t1 = os.times()
        finally:
            store.close()
    return (t1.user - t0.user) * 1e6 / events, (t1.system - t0.system) * 1e6 / events


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--events", type=int, default=12_000)
    ap.add_argument("--warm", type=int, default=30_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    runs = [one(args.batch, args.events, args.warm, r) for r in range(args.repeat)]
    user = statistics.median(u for u, _ in runs)
    system = statistics.median(s for _, s in runs)
    total = statistics.median(u + s for u, s in runs)
    print(f"commit_events, SQLite, batches of {args.batch}, {args.warm} rows first, {args.events} timed, "
          f"median of {args.repeat} (us CPU per event): user {user:.1f}  system {system:.1f}  total {total:.1f}")
    print("per repeat (user+system): " + ", ".join(f"{u + s:.1f}" for u, s in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
