"""SQLite -> PostgreSQL copy benchmark (``kentongan-central store copy``'s engine).

    .venv/bin/python bench/store_copy.py [--events 100000] [--chunk 2000] [--repeat 3]

An SQLite store with ``--events`` events (3 months, 500 posts) is copied into a fresh database of
a throwaway PostgreSQL 15 cluster started here with fsync on. Baseline, same run: the same events
written into another fresh database through ``commit_events`` in batches of 500 (ingest's path).
Prints medians over ``--repeat`` runs: seconds, events/s, and copy / baseline throughput.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _common import median, table  # noqa: E402
from pg_cluster import PgCluster  # noqa: E402

from central_sync.store import open_store  # noqa: E402
from central_sync.store.copy import StoreCopy  # noqa: E402
from central_sync.web.testing import event  # noqa: E402
from edge.sync.wire import EventEnvelope  # noqa: E402

DAY = 86400.0


def batches(n: int) -> list[tuple[list[EventEnvelope], float]]:
    now = time.time()
    out = []
    for i in range(0, n, 500):
        evs = [event(f"pos-{j % 500:04d}", "PATROL_CHECKIN", payload={"n": j}) for j in range(i, min(n, i + 500))]
        out.append((evs, now - (i * 90 // n) * DAY))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cluster = PgCluster(fsync=True).start()
    copy_s: list[float] = []
    base_s: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = batches(args.events)
            src = open_store(f"sqlite:///{Path(tmp) / 'central.db'}")
            for evs, at in data:
                src.commit_events(evs, at)
            src.close()
            for _ in range(args.repeat):
                url = cluster.new_database()
                open_store(url).close()
                t0 = time.perf_counter()
                copy = StoreCopy(Path(tmp) / "central.db", url, chunk=args.chunk)
                report = copy.run()
                copy.close()
                copy_s.append(time.perf_counter() - t0)
                assert report.ok, "copy did not verify"
                url = cluster.new_database()
                store = open_store(url)
                t0 = time.perf_counter()
                for evs, at in data:
                    store.commit_events(evs, at)
                base_s.append(time.perf_counter() - t0)
                store.close()
    finally:
        cluster.close()
    c, b = median(copy_s), median(base_s)
    print(f"{args.events} events, copy chunk {args.chunk}, medians of {args.repeat} runs")
    print(table(["case", "seconds", "events/s", "vs baseline"],
                [["store copy (SQLite -> PostgreSQL)", f"{c:.2f}", f"{args.events / c:,.0f}", f"{b / c:.2f}x"],
                 ["baseline: commit_events, batches of 500", f"{b:.2f}", f"{args.events / b:,.0f}", "1.00x"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
