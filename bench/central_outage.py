"""Central outage benchmark: wire copies per event while central is away, and how fast a PANIC
raised before central's first subscription is acknowledged once central is up.

    .venv/bin/python bench/central_outage.py [--outage 30] [--rate 20] [--posts 2] [--repeat 1]
                                            [--panic-runs 3] [--ack-timeout 30]

(``--outage 150`` is the issue's full scenario; the default is bounded to 30 s.)

Everything is real: a LocalMosquitto with the project's config, a real central (IngestService +
CentralStore) in its own process, posts as Outbox + SyncService, each on its own event loop. Each
scenario runs twice in the same invocation:

* ``presence`` - today's post: it reads central's retained online/offline state, keeps its
  window idle while no central is online and resends at once when one comes online;
* ``backoff only`` - presence switched off (``use_central_presence=False``): it keeps
  publishing and resends what is overdue at jittered, backed-off ack timeouts;
* ``baseline`` - the post before this work: no presence, a fixed ack timeout (no backoff, no
  jitter): it resends its whole window every ack timeout.

1. **Outage**: ``--posts`` posts each record ``--rate`` events/s; after a 5 s warm-up central is
   SIGKILLed (its last will says offline), stays down ``--outage`` s, is restarted; recording goes
   on 5 s more, then everything must be acknowledged. Reported: envelopes put on the wire by the
   posts per event recorded (1.00 = no redundant copy), ack-timeout rounds, and seconds from
   central's return until every event is acknowledged.
2. **PANIC before central's first subscription**: a post is connected to a broker central has
   never subscribed to; a PANIC is recorded (the broker drops it: nobody subscribed); 1 s later
   central starts. Reported: seconds from central connected to the PANIC acknowledged at the post.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import median, table
from central_sync.broker import LocalMosquitto
from central_sync.config import CentralConfig
from central_sync.store import CentralStore
from edge.clock import Clock
from edge.config import NodeConfig, parse_config
from edge.outbox import EventDraft, Outbox
from edge.sync.ack_timeout import DEFAULT_BACKOFF, FIXED_TIMEOUT
from edge.sync.service import SyncService

WARMUP_S = 5.0
TAIL_S = 5.0


def _central_main(db: str, port: int, ready: Any) -> None:
    from central_sync.ingest import IngestService

    async def main() -> None:
        cfg = CentralConfig.model_validate({"database": db, "broker": {
            "host": "127.0.0.1", "port": port, "client_id": "central-bench",
            "reconnect_max_seconds": 1.0}})
        ingest = IngestService(cfg, CentralStore(Path(db)))
        task = asyncio.create_task(ingest.run())
        await ingest.connected.wait()
        ready.set()
        await task

    asyncio.run(main())


class CentralProc:
    def __init__(self, db: Path, port: int) -> None:
        self.db, self.port = db, port
        self.proc: Any = None
        self.ready_at = 0.0

    def start(self) -> float:
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        self.proc = ctx.Process(target=_central_main, args=(str(self.db), self.port, ready),
                                daemon=True)
        self.proc.start()
        if not ready.wait(60):
            raise SystemExit("central did not connect")
        self.ready_at = time.monotonic()
        return self.ready_at

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.join(10)


class Post:
    """One post (Outbox + SyncService) on its own event loop thread."""

    def __init__(self, tmp: Path, node_id: str, port: int, mode: str, ack_timeout: float) -> None:
        cfg: NodeConfig = parse_config({
            "node": {"node_id": node_id, "kelurahan_code": "33.74.10.1001", "rw": 5, "rt": 3,
                     "display_name": node_id},
            "siren": {"pin": 17},
            "sync": {"broker_port": port, "heartbeat_seconds": 3600,
                     "ack_timeout_seconds": ack_timeout}})
        self.outbox = Outbox(tmp / f"{node_id}.db", node_id, clock=Clock(forced_quality="synced"))
        # baseline: a fixed ack timeout (no doubling, no jitter), as before the backoff existed
        self.svc = SyncService(cfg, self.outbox, snapshots=None, clock=self.outbox.clock,
                               status_provider=lambda: {}, command_handler=None,
                               use_central_presence=mode == "presence",
                               ack_backoff=FIXED_TIMEOUT if mode == "baseline" else DEFAULT_BACKOFF)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def go() -> asyncio.Task[None]:
            return asyncio.get_running_loop().create_task(self.svc.run())
        self.task = asyncio.run_coroutine_threadsafe(go(), self.loop).result(30)

    def unacked(self) -> int:
        c = self.outbox.counts()
        return int(c.get("ready", 0)) + int(c.get("in_flight", 0))

    def stop(self) -> None:
        async def halt() -> None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        asyncio.run_coroutine_threadsafe(halt(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.outbox.close()


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def outage_run(tmp: Path, mode: str, args: argparse.Namespace) -> dict[str, float]:
    broker = LocalMosquitto(tmp / "mosquitto").start()
    central = CentralProc(tmp / "central.db", broker.port)
    posts: list[Post] = []
    stop = threading.Event()
    recorded = [0] * args.posts
    try:
        central.start()
        posts = [Post(tmp, f"pos-{i}", broker.port, mode, args.ack_timeout)
                 for i in range(args.posts)]
        wait_for(lambda: all(p.svc.connected for p in posts), 30, "posts connected")

        def generate(i: int) -> None:
            period, nxt = 1.0 / args.rate, time.monotonic()
            while not stop.is_set():
                posts[i].outbox.record(EventDraft("PATROLI", 4, {"n": recorded[i]}))
                recorded[i] += 1
                nxt += period
                time.sleep(max(0.0, nxt - time.monotonic()))
        gens = [threading.Thread(target=generate, args=(i,), daemon=True) for i in range(args.posts)]
        for g in gens:
            g.start()
        time.sleep(WARMUP_S)
        central.kill()
        time.sleep(args.outage)
        back = central.start()
        time.sleep(TAIL_S)
        stop.set()
        for g in gens:
            g.join(10)
        wait_for(lambda: all(p.unacked() == 0 for p in posts), 600, "all acknowledged")
        drained = time.monotonic() - back
        events = sum(recorded)
        published = sum(p.svc.stats.published for p in posts)
        return {"events": events, "published": published, "copies": published / events,
                "timeouts": sum(p.svc.stats.ack_timeouts for p in posts), "drain_s": drained}
    finally:
        stop.set()
        for p in posts:
            p.stop()
        central.kill()
        broker.stop()


def panic_run(tmp: Path, mode: str, args: argparse.Namespace) -> float:
    broker = LocalMosquitto(tmp / "mosquitto").start()
    central = CentralProc(tmp / "central.db", broker.port)
    post = None
    try:
        post = Post(tmp, "pos-panic", broker.port, mode, args.ack_timeout)
        wait_for(lambda: post is not None and post.svc.connected, 30, "post connected")
        post.outbox.record(EventDraft("PANIC", 1, {"button": "utama"}))
        wait_for(lambda: post is not None and post.svc.stats.published >= 1, 10, "PANIC published")
        time.sleep(1.0)
        up = central.start()
        wait_for(lambda: post is not None and post.outbox.counts()["acked"] >= 1,
                 args.ack_timeout * 10 + 60, "PANIC acknowledged")
        return time.monotonic() - up
    finally:
        if post is not None:
            post.stop()
        central.kill()
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outage", type=float, default=30.0, help="seconds central is down (150 = issue)")
    ap.add_argument("--rate", type=float, default=20.0, help="events/s per post")
    ap.add_argument("--posts", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="outage runs per mode (medians)")
    ap.add_argument("--panic-runs", type=int, default=3, help="PANIC runs with presence")
    ap.add_argument("--baseline-panic-runs", type=int, default=1,
                    help="PANIC runs without presence (each waits an ack timeout)")
    ap.add_argument("--ack-timeout", type=float, default=30.0, help="sync.ack_timeout_seconds")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the posts' warnings are expected here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    modes = ("presence", "backoff only", "baseline")
    out: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    panic: dict[str, list[float]] = {"presence": [], "baseline": []}
    for r in range(args.repeat):
        for mode in modes:
            with tempfile.TemporaryDirectory(prefix="kentongan-outage-") as d:
                res = outage_run(Path(d), mode, args)
            out[mode].append(res)
            print(f"outage run {r + 1} {mode}: {res['events']:.0f} events, "
                  f"{res['copies']:.3f} copies/event, {res['timeouts']:.0f} timeout rounds, "
                  f"drained {res['drain_s']:.1f}s after central's return", flush=True)
    for mode, runs in (("presence", args.panic_runs), ("baseline", args.baseline_panic_runs)):
        for r in range(runs):
            with tempfile.TemporaryDirectory(prefix="kentongan-panic-") as d:
                panic[mode].append(panic_run(Path(d), mode, args))
            print(f"panic run {r + 1} {mode}: acked {panic[mode][-1]:.2f}s after central up",
                  flush=True)

    def med(mode: str, key: str) -> float:
        return median([r[key] for r in out[mode]])

    print(f"\nCentral outage of {args.outage:.0f} s, {args.posts} posts x {args.rate:g} ev/s, "
          f"ack timeout {args.ack_timeout:g} s, median of {args.repeat}\n")
    base = med("baseline", "copies")
    print(table(["mode", "events", "wire copies/event", "vs baseline", "ack-timeout rounds",
                 "drained s after return"], [
        [mode, f"{med(mode, 'events'):.0f}", f"{med(mode, 'copies'):.3f}",
         f"{med(mode, 'copies') / base:.2f}x", f"{med(mode, 'timeouts'):.0f}",
         f"{med(mode, 'drain_s'):.1f}"] for mode in modes]))
    print("\nPANIC recorded before central's first subscription -> acked (s after central up)\n")
    pb = median(panic["baseline"])
    print(table(["mode", "runs", "median s", "max s", "vs baseline"], [
        [mode, len(panic[mode]), f"{median(panic[mode]):.2f}", f"{max(panic[mode]):.2f}",
         f"{median(panic[mode]) / pb:.3f}x"] for mode in ("presence", "baseline")
        if panic[mode]]))


if __name__ == "__main__":
    main()
