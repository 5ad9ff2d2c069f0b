"""Supervision benchmark: one sweep over 10,000 posts (every web process runs one each 2 s).

    .venv/bin/python bench/supervision_sweep.py [--posts 10000] [--silent 100] [--repeat 30]

In the same run, for each backend (SQLite file; a throwaway PostgreSQL 15 cluster started here):

* baseline "full scan": what a naive sweeper does: read and decode the whole ``nodes`` table
  (``store.list_nodes()``) and judge every post in Python;
* "sweep": ``Supervisor.sweep`` in its steady state (``--silent`` posts already in an open outage,
  the rest heard now): it asks the store only for posts not heard lately and the open outages;
* "open": the first sweep after ``--silent`` posts fell silent, opening that many outages and
  POST_OFFLINE incidents (one incident transaction each), reported per outage.

Prints the median milliseconds per sweep and the ratio against the baseline.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pg_cluster import PgCluster  # noqa: E402

from central_sync.store import Store, open_store  # noqa: E402
from central_sync.store.supervision_tables import SupervisionTables  # noqa: E402
from central_sync.supervision import Supervisor, post_status  # noqa: E402
from central_sync.supervision_settings import SupervisionSettings  # noqa: E402
from edge.sync.wire import Heartbeat, Presence  # noqa: E402


def fill(store: Store, n: int, silent: int) -> None:
    now = time.time()
    pres = [Presence(node_id=f"pos-{i:05d}", state="online", kelurahan_code=f"33.74.{i % 16:02d}.1001",
                     rw=i % 12 + 1, rt=i % 9 + 1, display_name=f"Pos {i}") for i in range(n)]
    store.apply_node_updates(pres, [], now - 3600)  # everyone first heard an hour ago
    beats = [Heartbeat(node_id=f"pos-{i:05d}", boot_id="b", at=now, version="1.0", time_quality="synced")
             for i in range(silent, n)]
    store.apply_node_updates([], beats, now)  # all but the silent ones heard now


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def run(store: Store, n: int, silent: int, repeat: int) -> dict[str, float]:
    fill(store, n, silent)
    settings = SupervisionSettings()
    sup = Supervisor(store, settings)
    tables = SupervisionTables(store.desk())

    def beat() -> None:
        now = time.time()
        tables.link_beat("bench-ingest", now - 7200, now, now)

    beat()
    t = time.perf_counter()
    first = sup.sweep()
    open_ms = (time.perf_counter() - t) * 1e3
    assert len(first.incidents) == silent, first

    def steady() -> object:
        beat()
        result = sup.sweep()
        assert not result.opened
        return result

    def full_scan() -> object:
        now = time.time()
        link = sup.link
        return [r["node_id"] for r in store.list_nodes()
                if post_status(r, now, link, settings.offline_after_s) == "offline"]

    return {"scan": median_ms(full_scan, repeat), "sweep": median_ms(steady, repeat),
            "open_per_outage": open_ms / max(silent, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=10_000)
    ap.add_argument("--silent", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    logging.getLogger("central.supervision").setLevel(logging.ERROR)  # one line per opened outage
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = PgCluster(fsync=True).start()
        try:
            for backend, url in (("sqlite", f"sqlite:///{tmp}/sweep.db"), ("postgres", cluster.new_database())):
                store = open_store(url)
                try:
                    out[backend] = run(store, args.posts, args.silent, args.repeat)
                finally:
                    store.close()
        finally:
            cluster.close()
    print(f"posts={args.posts} silent={args.silent} (median milliseconds per sweep; a sweep runs every 2 s)")
    print(f"{'backend':<10} {'full scan':>10} {'sweep':>8} {'ratio':>7} {'open, per outage':>17}")
    for backend, r in out.items():
        print(f"{backend:<10} {r['scan']:>10,.1f} {r['sweep']:>8,.2f} {r['scan'] / r['sweep']:>6,.0f}x "
              f"{r['open_per_outage']:>17,.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
