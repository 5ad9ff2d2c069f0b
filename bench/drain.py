"""Drain benchmark: how fast a node empties an offline backlog into central, end to end.

    .venv/bin/python bench/drain.py [--events 100000] [--window 3000] [--repeat 3] [--reconnects 5]
    .venv/bin/python bench/drain.py --events 1000000 --repeat 3 --drain-only   # the 1M drain

Starts its own LocalMosquitto and a real central (IngestService + CentralStore, in its own
process) in a temp dir. Measures, in the same run:

1. raw paho QoS 1 publishing of N same-size messages to the same Mosquitto (loop_start,
   completion tracked by mid in on_publish) - the ceiling;
2. the drain: N events recorded in one node's outbox while offline, then the time until all are
   committed at central AND acknowledged back (outbox acked == N), twice per repetition: once
   with P1 events arriving at 20/s during the drain (each one's latency, recorded -> present in
   central's database, is measured) and once without; the ratio of the two rates is the cost
   of P1 traffic on a backlog (issue 9 target: >= 0.8x at 1M events, P1 p99 < 1 s);
3. reconnect: with the node running and the broker down, the delay from broker start to the
   node handing the first event to the new connection, and to the event being in central's
   database (includes central's own reconnect, capped at 1 s here);
4. context: how fast central alone ingests N envelopes published by paho (the drain's ceiling).

1, 2 and 4 are repeated ``--repeat`` times (same broker and central); the table shows medians.
The node sends its backlog as ``event_batch`` messages, so its rate is in events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

import paho.mqtt.client as paho

from bench._common import median, pct, table
from central_sync.broker import LocalMosquitto
from central_sync.config import CentralConfig
from central_sync.store import CentralStore
from edge.clock import Clock
from edge.config import NodeConfig, parse_config
from edge.outbox import EventDraft, Outbox
from edge.sync.service import SyncService
from edge.sync.wire import encode

NODE = "pos-bench"
PAYLOAD = {"button": "utama", "note": "x" * 120}


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


def node_cfg(port: int, window: int) -> NodeConfig:
    return parse_config({
        "node": {"node_id": NODE, "kelurahan_code": "33.74.10.1001", "rw": 5, "rt": 3,
                 "display_name": "Pos Bench"},
        "siren": {"pin": 17},
        "sync": {"broker_port": port, "inflight_window": window, "heartbeat_seconds": 3600},
    })


def central_ceiling(port: int, store: CentralStore, n: int, rep: int = 0) -> float:
    """paho publishes N ready-made envelopes of another node straight to central: how fast
    central alone ingests and commits (no outbox, no acks consumed) - context for the ratio."""
    node = f"{NODE}-c{rep}"
    env = _sample_envelope()
    bodies = [encode(env.model_copy(update={"event_id": f"0190a1b2-c3d4-7e5f-{rep:04x}-{i:012x}",
                                            "node_id": node, "seq": i})) for i in range(n)]
    acked = 0
    lock = threading.Lock()

    def on_publish(_c: Any, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-ceiling-{rep}",
                    protocol=paho.MQTTv5)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for i, body in enumerate(bodies):
        while i - acked > 20_000:
            time.sleep(0.001)
        c.publish(f"kentongan/v1/up/{node}/event", body, qos=1)
    while store.count_events(node) < n:
        time.sleep(0.02)
    dt = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return dt


def raw_paho(port: int, n: int, size: int) -> float:
    done = threading.Event()
    acked = 0
    lock = threading.Lock()

    def on_publish(_c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked >= n:
                done.set()

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=paho.MQTTv5)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    body = b"x" * size
    t0 = time.perf_counter()
    for i in range(n):
        # paho message ids are 16-bit: keep fewer than 65,535 outstanding.
        while i - acked > 20_000:
            time.sleep(0.001)
        c.publish("bench/raw", body, qos=1)
    done.wait(600)
    dt = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return dt


class Runner:
    """The node's asyncio loop on a background thread."""

    def __init__(self, svc: SyncService) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.task = asyncio.run_coroutine_threadsafe(self._start(svc), self.loop).result()

    async def _start(self, svc: SyncService) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(svc.run())

    def stop(self) -> None:
        async def halt() -> None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        asyncio.run_coroutine_threadsafe(halt(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def drain(tmp: Path, broker: LocalMosquitto, store: CentralStore, n: int,
          window: int, rep: int = 0, p1: bool = True) -> tuple[float, list[float]]:
    store_path = tmp / "central.db"
    ob = Outbox(tmp / f"node-{rep}-{int(p1)}.db", NODE, clock=Clock(forced_quality="synced"))
    before = store.count_events(NODE)
    for i in range(0, n, 5000):
        ob.record_many([EventDraft("PATROLI", 4, {**PAYLOAD, "i": j})
                        for j in range(i, min(n, i + 5000))])
    svc = SyncService(node_cfg(broker.port, window), ob, snapshots=None, clock=ob.clock,
                      status_provider=lambda: {}, command_handler=None)
    stop = threading.Event()
    latencies: list[float] = []
    pending: dict[str, float] = {}
    plock = threading.Lock()

    def p1_probe() -> None:
        nxt = time.perf_counter()
        while not stop.is_set():
            t = time.perf_counter()
            ev = ob.record(EventDraft("PANIC", 1, {"probe": True}))
            with plock:
                pending[ev.event_id] = t
            nxt += 0.05  # 20 P1/s
            time.sleep(max(0.0, nxt - time.perf_counter()))

    def p1_watch() -> None:
        # One cheap indexed lookup of the pending ids every 10 ms on a read-only connection.
        conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=5)
        while not stop.is_set() or pending:
            with plock:
                items = dict(pending)
            if items:
                marks = ",".join("?" * len(items))
                found = conn.execute(f"SELECT event_id FROM events WHERE event_id IN ({marks})",
                                     list(items)).fetchall()
                now = time.perf_counter()
                for (eid,) in found:
                    latencies.append(now - items[eid])
                    with plock:
                        pending.pop(eid, None)
            time.sleep(0.01)
            if stop.is_set() and time.perf_counter() - stopped_at[0] > 10:
                break
        conn.close()

    stopped_at = [0.0]
    t0 = time.perf_counter()
    runner = Runner(svc)
    probe = threading.Thread(target=p1_probe, daemon=True)
    watch = threading.Thread(target=p1_watch, daemon=True)
    if p1:
        probe.start()
        watch.start()
    # svc.stats.acked is in memory (free to read); counts() scans the outbox under its lock, so
    # it is only called to confirm once the in-memory figure says the backlog may be done.
    while True:
        if svc.stats.acked >= n:
            c = ob.counts()
            if c["by_type"].get("PATROLI", {}).get("acked", 0) >= n:
                break
            time.sleep(0.05)
        time.sleep(0.01)
    dt = time.perf_counter() - t0
    stop.set()
    stopped_at[0] = time.perf_counter()
    if p1:
        probe.join()
        watch.join(15)
    assert store.count_events(NODE) >= before + n
    runner.stop()
    ob.close()
    return dt, latencies


def reconnect_delays(tmp: Path, broker: LocalMosquitto, store: CentralStore, repeats: int,
                     offline_s: float) -> list[tuple[float, float]]:
    ob = Outbox(tmp / "reconnect.db", NODE + "-r", clock=Clock(forced_quality="synced"))
    cfg = node_cfg(broker.port, 200).model_copy(deep=True)
    cfg = parse_config({**cfg.model_dump(mode="json"),
                        "node": {**cfg.node.model_dump(mode="json"), "node_id": NODE + "-r"}})
    svc = SyncService(cfg, ob, snapshots=None, clock=ob.clock, status_provider=lambda: {},
                      command_handler=None)
    runner = Runner(svc)
    out = []
    for _ in range(repeats):
        while not svc.connected:
            time.sleep(0.01)
        broker.stop()
        time.sleep(offline_s)
        ev = ob.record(EventDraft("TEST", 3))
        published = svc.stats.published
        t0 = time.perf_counter()
        broker.start()
        t_pub = t_db = None
        while t_pub is None or t_db is None:
            now = time.perf_counter()
            if t_pub is None and svc.stats.published > published:
                t_pub = now - t0
            if t_db is None and store.get_event(ev.event_id) is not None:
                t_db = now - t0
            if now - t0 > 60:
                break
            time.sleep(0.002)
        out.append((t_pub or float("nan"), t_db or float("nan")))
    runner.stop()
    ob.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=3000, help="sync.inflight_window (events)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="repetitions, medians reported")
    ap.add_argument("--reconnects", type=int, default=5)
    ap.add_argument("--offline", type=float, default=6.0, help="seconds offline per reconnect")
    ap.add_argument("--drain-only", action="store_true",
                    help="only the drains with and without P1 (for --events 1000000)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    n = args.events
    with tempfile.TemporaryDirectory(prefix="kentongan-drain-") as d:
        tmp = Path(d)
        broker = LocalMosquitto(tmp / "mosquitto").start()
        db = tmp / "central.db"
        CentralStore(db).close()
        ready = mp.get_context("spawn").Event()
        central = mp.get_context("spawn").Process(target=_central_main,
                                                  args=(str(db), broker.port, ready), daemon=True)
        central.start()
        try:
            if not ready.wait(30):
                raise SystemExit("central did not connect")
            store = CentralStore(db)
            sample = encode(_sample_envelope())
            size = len(sample)
            raws, drains, quiet, ceilings, lat = [], [], [], [], []
            for r in range(args.repeat):
                if not args.drain_only:
                    raws.append(raw_paho(broker.port, n, size))
                # alternate the order so neither variant always runs on a warmer machine
                for with_p1 in ((False, True) if r % 2 == 0 else (True, False)):
                    d_s, d_lat = drain(tmp, broker, store, n, args.window, r, p1=with_p1)
                    (drains if with_p1 else quiet).append(d_s)
                    lat.extend(d_lat)
                if not args.drain_only:
                    ceilings.append(central_ceiling(broker.port, store, n, r))
                print(f"run {r + 1}: drain {n / quiet[-1]:,.0f} ev/s without P1, "
                      f"{n / drains[-1]:,.0f} ev/s with 20 P1/s "
                      f"({quiet[-1] / drains[-1]:.2f}x)", flush=True)
            drain_s, quiet_s = median(drains), median(quiet)
            if not args.drain_only:
                raw_s, ceiling_s = median(raws), median(ceilings)
                rec = reconnect_delays(tmp, broker, store, args.reconnects, args.offline)
        finally:
            central.terminate()
            central.join(10)
            broker.stop()
    drain_rate, quiet_rate = n / drain_s, n / quiet_s
    print(f"\nDrain of {n:,} events ({size} B each), inflight_window={args.window}, "
          f"median of {args.repeat}\n")
    print(table(["drain", "events", "seconds", "ev/s", "vs without P1"], [
        ["without P1 (baseline)", n, f"{quiet_s:.2f}", f"{quiet_rate:,.0f}", "1.00x"],
        ["with 20 P1/s arriving", n, f"{drain_s:.2f}", f"{drain_rate:,.0f}",
         f"{drain_rate / quiet_rate:.2f}x"],
    ]))
    print(f"\nP1 latency during the drains (recorded -> in central DB), {len(lat)} samples:")
    print(table(["p50 ms", "p99 ms", "max ms"],
                [[f"{pct(lat, 50) * 1000:.0f}", f"{pct(lat, 99) * 1000:.0f}",
                  f"{max(lat, default=float('nan')) * 1000:.0f}"]]))
    if args.drain_only:
        return
    raw_rate = n / raw_s
    print("\nContext (same run):")
    print(table(["path", "events", "seconds", "msg/s or ev/s", "ratio"], [
        ["raw paho QoS 1 publish (msg/s)", n, f"{raw_s:.2f}", f"{raw_rate:,.0f}", "1.00x"],
        ["outbox -> central -> acked, with P1 (ev/s)", n, f"{drain_s:.2f}",
         f"{drain_rate:,.0f}", f"{drain_rate / raw_rate:.2f}x"],
        ["(context) paho -> central commit (ev/s)", n, f"{ceiling_s:.2f}", f"{n / ceiling_s:,.0f}",
         f"{n / ceiling_s / raw_rate:.2f}x"],
    ]))
    print(f"\nBroker start -> first event (node running, {args.offline:.0f} s offline), "
          f"{len(rec)} runs:")
    print(table(["", "median s", "max s"], [
        ["published by the node", f"{median([r[0] for r in rec]):.2f}",
         f"{max(r[0] for r in rec):.2f}"],
        ["in central DB", f"{median([r[1] for r in rec]):.2f}", f"{max(r[1] for r in rec):.2f}"],
    ]))


def _sample_envelope() -> Any:
    from edge.sync.wire import EventEnvelope
    return EventEnvelope(event_id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", node_id=NODE,
                         boot_id="0123456789abcdef", seq=12345, mono_ns=1234567890123,
                         wall_time=time.time(), time_quality="synced", type="PATROLI", priority=4,
                         payload={**PAYLOAD, "i": 12345})


if __name__ == "__main__":
    main()
