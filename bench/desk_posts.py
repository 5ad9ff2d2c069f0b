"""Desk benchmark: finding posts for a request with 10,000 posts, in-memory table vs the store.

    .venv/bin/python bench/desk_posts.py [--posts 10000] [--repeat 200]

In the same run, for each backend (SQLite file; a throwaway PostgreSQL 15 cluster started here):

* baseline "store": what each dashboard request and each new incident did before: read and
  JSON-decode the whole ``nodes`` table (``store.list_nodes()``), then look one post up / scan
  for the posts of one RW;
* "memory": the desk's ``PostTable`` (kept current by the change feed): ``desk.nodes().get(id)``
  and the (kelurahan, RW) index.

Prints the median microseconds per lookup and the ratio.
"""

from __future__ import annotations

import argparse
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
from central_sync.web.post_table import PostTable  # noqa: E402
from edge.sync.wire import Heartbeat, Presence  # noqa: E402


def fill(store: Store, n: int) -> None:
    """``n`` enrolled posts (their place is the registry's: issue 10), then their presence and
    heartbeats in one batch."""
    now = time.time()
    tables = store.registry_tables()
    key = "-----BEGIN PUBLIC KEY-----\nbench\n-----END PUBLIC KEY-----\n"  # never verified here
    for i in range(n):
        tables.put({"node_id": f"pos-{i:05d}", "signing_public_key": key, "kelurahan_code": f"33.74.{i % 16:02d}.1001",
                    "rw": i % 12 + 1, "rt": i % 9 + 1, "display_name": f"Pos {i}", "status": "enrolled",
                    "cert_serial": f"{i:032x}", "cert_not_after": now + 86400, "enrolled_at": now},
                   revoke_older_certs_at=None)
    pres = [Presence(node_id=f"pos-{i:05d}", state="online", kelurahan_code=f"33.74.{i % 16:02d}.1001",
                     rw=i % 12 + 1, rt=i % 9 + 1, display_name=f"Pos {i}") for i in range(n)]
    beats = [Heartbeat(node_id=f"pos-{i:05d}", boot_id="b", at=now, version="1.0", time_quality="synced",
                       outbox={"ready": i % 5}, siren={"on": False}) for i in range(n)]
    store.apply_node_updates(pres, beats, now)


def median_us(fn: Callable[[int], object], repeat: int) -> float:
    times = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def run(store: Store, n: int, repeat: int) -> dict[str, float]:
    fill(store, n)
    table = PostTable()
    table.load(store.list_nodes())
    view = table.view()

    def store_get(i: int) -> object:
        return {r["node_id"]: r for r in store.list_nodes()}.get(f"pos-{(i * 7919) % n:05d}")

    def store_rw(i: int) -> object:
        kel, rw = f"33.74.{i % 16:02d}.1001", i % 12 + 1
        return [r for r in store.list_nodes() if r["kelurahan_code"] == kel and r["rw"] == rw]

    def mem_get(i: int) -> object:
        return view.get(f"pos-{(i * 7919) % n:05d}")

    def mem_rw(i: int) -> object:
        return table.in_rw(f"33.74.{i % 16:02d}.1001", i % 12 + 1)

    slow = max(5, repeat // 20)
    return {"store_get": median_us(store_get, slow), "mem_get": median_us(mem_get, repeat),
            "store_rw": median_us(store_rw, slow), "mem_rw": median_us(mem_rw, repeat)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = PgCluster(fsync=True).start()
        try:
            for backend, url in (("sqlite", f"sqlite:///{tmp}/desk.db"), ("postgres", cluster.new_database())):
                store = open_store(url)
                try:
                    out[backend] = run(store, args.posts, args.repeat)
                finally:
                    store.close()
        finally:
            cluster.close()
    print(f"posts={args.posts} (median microseconds per lookup)")
    print(f"{'backend':<10} {'one post: store':>16} {'memory':>8} {'ratio':>8} {'RW posts: store':>16} "
          f"{'index':>8} {'ratio':>8}")
    for backend, r in out.items():
        print(f"{backend:<10} {r['store_get']:>16,.0f} {r['mem_get']:>8,.1f} {r['store_get'] / r['mem_get']:>7,.0f}x "
              f"{r['store_rw']:>16,.0f} {r['mem_rw']:>8,.1f} {r['store_rw'] / r['mem_rw']:>7,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
