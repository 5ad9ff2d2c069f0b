"""Store maintenance benchmark: what retention costs ingest's commits, on both backends.

    .venv/bin/python bench/store_maintain.py [--events 100000] [--repeat 3]

For each backend (an SQLite file with synchronous=FULL; a throwaway PostgreSQL 15 cluster started
here with fsync on) a store holds ``--events`` expired events (an old month) and 100 held ones (an
open incident). A writer commits batches of 50 events through ``commit_events`` (ingest's path,
its own store object) back to back, and its commit latencies are recorded:

* baseline: the writer alone, no maintenance (same run, same store size);
* maintain: ``StoreMaintenance.run`` with the default chunks (500 rows, 20 ms pause);
* SQLite also: chunks of 2000, and one chunk for everything (what an unchunked DELETE costs).

A commit refused as busy (SQLite's 5 s busy timeout) is retried like ingest retries it; its
latency includes the wait, and the retries are counted. The SQLite index retention needs is built
before the measurement (a one-time cost of the first run).

Prints, per case, the median over ``--repeat`` runs of: maintenance seconds, events deleted, the
writer's commit p50 / p99 / max in ms, and max / baseline max.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _common import median, pct, table  # noqa: E402
from pg_cluster import PgCluster  # noqa: E402

from central_sync.maintenance_settings import MaintenanceSettings  # noqa: E402
from central_sync.store import Store, TransientStoreError, open_store  # noqa: E402
from central_sync.store.maintenance import DAY, StoreMaintenance  # noqa: E402
from central_sync.web.testing import event  # noqa: E402

OLD = time.time() - 800 * DAY


def populate(url: str, n: int) -> None:
    store = open_store(url)
    try:
        for i in range(0, n, 1000):
            store.commit_events([event(f"pos-{j % 500:04d}", "PATROL_CHECKIN") for j in range(i, min(n, i + 1000))],
                                OLD)
        held = [event("pos-held", "PANIC") for _ in range(100)]
        store.commit_events(held, OLD)
        with store.desk().incident_tx() as tx:
            tx.insert_incident("inc-open", "pos-held", "PANIC", 1, OLD, OLD, "synced")
            for ev in held:
                tx.link_event("pos-held", ev.event_id, "inc-open")
        if url.startswith("sqlite:"):  # the index retention uses is built by the first run: not measured here
            StoreMaintenance(store.desk().runner, MaintenanceSettings(event_retention_days=36500)).run()
    finally:
        store.close()


def measure(url: str, settings: MaintenanceSettings | None, idle_s: float) -> dict[str, float]:
    """Writer latencies while maintenance runs (or for ``idle_s`` without it)."""
    writer: Store = open_store(url)
    maint: Store = open_store(url)
    lat: list[float] = []
    busy: list[int] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            batch = [event(f"pos-{i:04d}", "PANIC") for i in range(50)]
            t0 = time.perf_counter()
            while True:  # as ingest does: a busy database is retried, the batch waits meanwhile
                try:
                    writer.commit_events(batch, time.time())
                    break
                except TransientStoreError:
                    busy.append(1)
                    time.sleep(0.05)
            lat.append((time.perf_counter() - t0) * 1000)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    deleted = 0
    if settings is None:
        time.sleep(idle_s)
    else:
        deleted = StoreMaintenance(maint.desk().runner, settings).run().events_deleted
    took = time.perf_counter() - t0
    stop.set()
    thread.join(60)
    writer.close()
    maint.close()
    return {"s": took, "deleted": deleted, "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat),
            "busy": len(busy)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cluster = PgCluster(fsync=True).start()
    rows = []
    serial = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cases: list[tuple[str, MaintenanceSettings | None]] = [
                ("baseline (no maintenance)", None), ("maintain (default: chunks of 500)", MaintenanceSettings())]
            for backend in ("sqlite", "postgres"):
                one = MaintenanceSettings(chunk_rows=100_000)
                big = MaintenanceSettings(chunk_rows=2000)
                extra = [("maintain (chunks of 2000)", big), ("maintain (one chunk)", one)] \
                    if backend == "sqlite" else []
                results: dict[str, list[dict[str, float]]] = {}
                for _ in range(args.repeat):
                    for name, settings in [*cases, *extra]:
                        serial += 1
                        url = (f"sqlite:///{Path(tmp) / f'store-{serial}.db'}" if backend == "sqlite"
                               else cluster.new_database())
                        populate(url, args.events)
                        done = results.get(cases[1][0])
                        idle = median([x["s"] for x in done]) if done else 2.0
                        results.setdefault(name, []).append(measure(url, settings, idle))
                base_max = median([x["max"] for x in results[cases[0][0]]])
                for name, runs in results.items():
                    med = {k: median([x[k] for x in runs]) for k in runs[0]}
                    rows.append([backend, name, f"{med['s']:.2f}", int(med["deleted"]), f"{med['p50']:.1f}",
                                 f"{med['p99']:.1f}", f"{med['max']:.1f}", f"{med['max'] / base_max:.2f}x",
                                 int(med["busy"])])
    finally:
        cluster.close()
    print(f"{args.events} expired events + 100 held; writer commits 50 events per transaction; "
          f"medians of {args.repeat} runs")
    print(table(["backend", "case", "maintain s", "deleted", "commit p50 ms", "p99 ms", "max ms", "max/baseline",
                 "busy retries"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
