"""Store benchmark: events committed per second through ``commit_events`` on both backends.

    .venv/bin/python bench/store_commit.py [--events 20000] [--batch 500] [--repeat 3]

For each backend (SQLite file with synchronous=FULL; a throwaway PostgreSQL 15 cluster started
here with fsync on, like production) and in the same run:

* batch: ``commit_events`` with ``--batch`` events per call (ingest's commit batch);
* baseline: the same number of events committed one per transaction (what one message per
  commit costs), over ``--events / 10`` events to keep the run short;
* apply_node_updates: 10,000 posts' heartbeats coalesced into one call, against the same
  heartbeats one per call (baseline).

Prints medians over ``--repeat`` runs and the ratio batch/baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pg_cluster import PgCluster  # noqa: E402

from central_sync.store import Store, open_store  # noqa: E402
from edge.sync.wire import EventEnvelope, Heartbeat  # noqa: E402


def events(n: int, nodes: int = 100) -> list[EventEnvelope]:
    return [EventEnvelope(event_id=str(uuid.uuid4()), node_id=f"pos-{i % nodes:05d}", boot_id="b", seq=i,
                          mono_ns=i, wall_time=1_700_000_000.0 + i, time_quality="synced", type="PANIC",
                          priority=1, payload={"button": "panic", "n": i}) for i in range(n)]


def beats(n: int) -> list[Heartbeat]:
    now = time.time()
    return [Heartbeat(node_id=f"pos-{i:05d}", boot_id="b", at=now, version="1.0", time_quality="synced",
                      outbox={"ready": i % 7}) for i in range(n)]


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(store: Store, n: int, batch: int) -> dict[str, float]:
    evs = events(n)
    t_batch = timed(lambda: [store.commit_events(evs[i:i + batch], time.time()) for i in range(0, n, batch)])
    single = events(max(1, n // 10))
    t_single = timed(lambda: [store.commit_events([e], time.time()) for e in single])
    hb = beats(10_000)
    t_hb = timed(lambda: store.apply_node_updates([], hb, time.time()))
    hb1 = beats(1_000)
    t_hb1 = timed(lambda: [store.apply_node_updates([], [h], time.time()) for h in hb1])
    return {"batch": n / t_batch, "single": len(single) / t_single, "hb_batch": 10_000 / t_hb,
            "hb_single": 1_000 / t_hb1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgres": []}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = PgCluster(fsync=True).start()
        try:
            for r in range(args.repeat):
                for backend in results:
                    url = f"sqlite:///{tmp}/bench-{r}.db" if backend == "sqlite" else cluster.new_database()
                    store = open_store(url)
                    try:
                        results[backend].append(run(store, args.events, args.batch))
                    finally:
                        store.close()
        finally:
            cluster.close()
    print(f"events={args.events} batch={args.batch} repeat={args.repeat} (medians)")
    print(f"{'backend':<10} {'batch ev/s':>12} {'1-per-tx ev/s':>14} {'ratio':>7} "
          f"{'hb coalesced/s':>15} {'hb 1-per-tx/s':>14} {'ratio':>7}")
    for backend, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"{backend:<10} {med['batch']:>12,.0f} {med['single']:>14,.0f} {med['batch'] / med['single']:>6.1f}x "
              f"{med['hb_batch']:>15,.0f} {med['hb_single']:>14,.0f} {med['hb_batch'] / med['hb_single']:>6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
