"""Desk benchmark: dashboard GET latency at city scale, render-once caches vs building per request.

    .venv/bin/python bench/desk_requests.py [--posts 10000] [--incidents 600] [--seconds 20]

In one process: a real SQLite store and the real web app (``WebEnv``: FastAPI through its test
client) with ``--posts`` posts and ``--incidents`` open incidents; while it runs, a feeder thread
applies 500 post-state changes a second (heartbeats of 10,000 posts every 20 s) and opens 20
incidents a second through the store and its change feed; ``--clients`` threads poll ``GET /``
and ``GET /api/nodes`` as fast as they can (after one untimed request each). Two phases in the
same run: "per request" (the body caches disabled: every request builds, as before) and
"cached" (``web/body_cache.py``). Prints GET p50/p99 per path and the ratio.
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

from bench._common import pct, table  # noqa: E402
from central_sync.web.testing import WebEnv, event, presence  # noqa: E402
from edge.sync.wire import Heartbeat  # noqa: E402


def fill(env: WebEnv, posts: int, incidents: int) -> list[str]:
    nodes = [f"post-{i:05d}" for i in range(posts)]
    now = time.time()
    env.store.apply_node_updates(
        [presence(n, "33.74.10.1001", 1 + i // 500, 1 + i % 500) for i, n in enumerate(nodes)],
        [Heartbeat(node_id=n, boot_id="b1", at=now, version="x", time_quality="synced",
                   outbox={"ready": 0, "in_flight": 0}) for n in nodes], now)
    for k in range(0, incidents, 100):
        envs = [event(nodes[(i * 17) % posts], "KEBAKARAN") for i in range(k, min(k + 100, incidents))]
        env.store.insert_events(envs, time.time())
    env.sync()
    return nodes


def feeder(env: WebEnv, nodes: list[str], stop: threading.Event) -> None:
    """500 post-state changes and 20 new incidents a second, through the store's change feed."""
    i = 0
    while not stop.is_set():
        now = time.time()
        batch = [nodes[(i + k) % len(nodes)] for k in range(25)]
        env.store.apply_node_updates([], [Heartbeat(node_id=n, boot_id="b1", at=now, version="x",
                                                    time_quality="synced", outbox={"ready": 0, "in_flight": 0})
                                          for n in batch], now)
        env.store.insert_events([event(nodes[(i * 7) % len(nodes)], "KEBAKARAN")], now)
        env.sync()
        i += 25
        stop.wait(0.05)


def phase(env: WebEnv, nodes: list[str], cached: bool, seconds: float, clients: int) -> dict[str, list[float]]:
    env.ctx.bodies.queue.enabled = env.ctx.bodies.nodes.enabled = cached
    env.ctx.bodies.queue.clear()
    env.ctx.bodies.nodes.clear()
    stop = threading.Event()
    lat: dict[str, list[float]] = {"/": [], "/api/nodes": []}
    feed = threading.Thread(target=feeder, args=(env, nodes, stop), daemon=True)
    feed.start()

    def poll() -> None:
        client, _csrf = env.client("bench")
        for path in lat:  # warm-up, not timed: the first request of a scope builds its body
            client.get(path)
        while not stop.is_set():
            for path in lat:
                t0 = time.perf_counter()
                r = client.get(path)
                lat[path].append(time.perf_counter() - t0)
                assert r.status_code == 200, r.status_code

    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(clients)]
    for t in pollers:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in [*pollers, feed]:
        t.join(60)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=10_000)
    ap.add_argument("--incidents", type=int, default=600)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="desk-req-") as tmp:
        env = WebEnv(Path(tmp) / "central.db")
        try:
            env.user("bench", "admin")
            nodes = fill(env, args.posts, args.incidents)
            results = {name: phase(env, nodes, cached, args.seconds, args.clients)
                       for name, cached in (("per request", False), ("cached", True))}
        finally:
            env.close()
    rows = []
    for path in ("/", "/api/nodes"):
        base = results["per request"][path]
        for name, lat in results.items():
            p50, p99 = pct(lat[path], 50), pct(lat[path], 99)
            rows.append([path, name, len(lat[path]), f"{p50 * 1000:.1f}", f"{p99 * 1000:.1f}",
                         f"{pct(base, 99) / p99:.1f}x"])
    print(f"desk GETs: {args.posts} posts, {args.incidents} incidents + 20/s, 500 post changes/s, "
          f"{args.clients} polling clients, {args.seconds:g} s per phase")
    print(table(["path", "bodies", "requests", "p50 ms", "p99 ms", "p99 gain"], rows))


if __name__ == "__main__":
    main()
