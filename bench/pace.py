"""Uplink pacing benchmark: a post's CPU while idle, waiting for its broker and draining, and
the trade-off behind ``MAX_UNCONFIRMED`` (backlog drain rate vs how long a new P1 waits behind
the backlog in the post's own connection).

    .venv/bin/python bench/pace.py cpu [--events 30000] [--repeat 3] [--code /work/main]
    .venv/bin/python bench/pace.py tune [--limits 1,2,4,8] [--links lan,4g,3g] [--seconds 8]

The post (a real ``SyncService`` with its SQLite outbox) runs in a child process, so its CPU
(user + system, ``time.process_time`` in it) is measured alone. Central is a stand-in in this process (a paho
client that acks every event at once), so the post, not central, is what limits the drain.
``--code DIR`` imports the post's code from another checkout (A/B: ``--code /work/main``).

``cpu`` phases, each ``--repeat`` times (medians): idle (connected, nothing to send) for
``--idle`` s; waiting (the broker frozen by SIGSTOP with a backlog claimed, so the lane waits
for PUBACKs) for ``--idle`` s; drain (``--events`` recorded at once, until all are acked).

``tune`` runs the post through a link emulator (a TCP proxy adding a one-way delay and a
bandwidth limit post -> broker: "lan" none, "4g" 60 ms RTT / 8 Mbit/s, "3g" 200 ms RTT /
1 Mbit/s) with a standing backlog and a P1 every 0.5 s; per ``MAX_UNCONFIRMED`` it reports the
backlog drain rate and each P1's wait, recorded in the post -> arriving at the broker's
subscriber on the P1 channel.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_CODE = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--code"), None)
if _CODE:
    os.environ["KENTONGAN_CODE"] = _CODE
sys.path.insert(0, os.environ.get("KENTONGAN_CODE") or str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from multiprocessing.connection import Connection  # noqa: E402
from typing import Any  # noqa: E402

import paho.mqtt.client as paho  # noqa: E402

from bench._common import median, pct, table  # noqa: E402
from central_sync.broker import LocalMosquitto  # noqa: E402

NODE = "pos-pace"
PAYLOAD = {"button": "utama", "note": "x" * 120}
LINKS = {"lan": (0.0, 0.0), "4g": (0.060, 1_000_000.0), "3g": (0.200, 125_000.0)}  # RTT s, B/s


# ------------------------------------------------------------------ the post (child process)

def _post_main(db: str, port: int, limit: int, conn: Connection) -> None:
    from edge.clock import Clock
    from edge.config import parse_config
    from edge.outbox import EventDraft, Outbox
    from edge.sync.service import SyncService

    cfg = parse_config({
        "node": {"node_id": NODE, "kelurahan_code": "33.74.10.1001", "rw": 5, "rt": 3,
                 "display_name": "Pos Pace"},
        "siren": {"pin": 17},
        "sync": {"broker_port": port, "inflight_window": 3000, "heartbeat_seconds": 3600},
    })
    ob = Outbox(Path(db), NODE, clock=Clock(forced_quality="synced"))
    svc = SyncService(cfg, ob, snapshots=None, clock=ob.clock, status_provider=lambda: {},
                      command_handler=None, use_central_presence=False)
    svc.events.pacer.limit = limit  # before the loop runs: every connection uses this limit
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    task = asyncio.run_coroutine_threadsafe(svc.run(), loop)
    while True:
        cmd = conn.recv()
        if cmd[0] == "record":
            for i in range(0, cmd[1], 5000):
                ob.record_many([EventDraft("PATROLI", 4, {**PAYLOAD, "i": j})
                                for j in range(i, min(cmd[1], i + 5000))])
            loop.call_soon_threadsafe(svc.events.poke)
            conn.send(None)
        elif cmd[0] == "p1":
            ob.record(EventDraft("PANIC", 1, {"t": time.monotonic()}))
            loop.call_soon_threadsafe(svc.events.poke, True)
            conn.send(None)
        elif cmd[0] == "cpu":
            conn.send(time.process_time())
        elif cmd[0] == "stats":
            s = svc.stats
            conn.send((svc.connected, s.published, s.messages, s.acked, s.p1_messages))
        else:
            task.cancel()
            conn.send(None)
            return


class Post:
    def __init__(self, db: Path, port: int, limit: int) -> None:
        self.conn, child = mp.get_context("spawn").Pipe()
        self.proc = mp.get_context("spawn").Process(target=_post_main, args=(str(db), port, limit, child),
                                                    daemon=True)
        self.proc.start()
        assert self.proc.pid is not None
        self.pid = self.proc.pid
        self.wait(lambda s: s[0], "post connected")

    def call(self, *cmd: Any) -> Any:
        self.conn.send(cmd)
        return self.conn.recv()

    def cpu(self) -> float:
        """The post process's CPU seconds so far (``time.process_time`` in it: user + system)."""
        return float(self.call("cpu"))

    def stats(self) -> tuple[bool, int, int, int, int]:
        return self.call("stats")  # type: ignore[no-any-return]

    def wait(self, cond: Any, what: str, timeout: float = 120.0) -> tuple[bool, int, int, int, int]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.stats()
            if cond(s):
                return s
            time.sleep(0.02)
        raise SystemExit(f"timeout: {what}")

    def stop(self) -> None:
        self.call("stop")
        self.proc.terminate()
        self.proc.join(10)


# ------------------------------------------------------------------ central stand-in

class Acker:
    """Acks every event envelope at once; records when each P1 reached the broker."""

    def __init__(self, port: int) -> None:
        from edge.sync.wire import Ack, encode
        self._ack, self._encode = Ack, encode
        self.p1_waits: list[float] = []
        self.recording = False
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="pace-acker", protocol=paho.MQTTv5)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("kentongan/v1/up/+/event", qos=1)
        self.c.subscribe("kentongan/v1/up/+/event/p1", qos=1)
        self.c.loop_start()

    def _on_message(self, client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        envs = data["events"] if data.get("kind") == "event_batch" else [data]
        if msg.topic.endswith("/p1"):
            now = time.monotonic()
            if self.recording:
                self.p1_waits.extend(now - e["payload"]["t"] for e in envs)
            return
        ack = self._ack(node_id=NODE, event_ids=[e["event_id"] for e in envs], central_time=time.time())
        client.publish(f"kentongan/v1/down/{NODE}/ack", self._encode(ack), qos=1)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


# ------------------------------------------------------------------ link emulator

class Link:
    """TCP proxy: one-way delay both ways, bandwidth limit post -> broker (a FIFO, like the
    bottleneck queue of a mobile uplink)."""

    def __init__(self, broker_port: int, rtt_s: float, rate: float) -> None:
        self.broker_port, self.delay, self.rate = broker_port, rtt_s / 2, rate
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result()
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection("127.0.0.1", self.broker_port)
        await asyncio.gather(self._pipe(r, bw, self.rate), self._pipe(br, w, 0.0), return_exceptions=True)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, rate: float) -> None:
        q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        free_at = 0.0

        async def out() -> None:
            while True:
                at, data = await q.get()
                if not data:
                    w.close()
                    return
                await asyncio.sleep(max(0.0, at - self.loop.time()))
                w.write(data)
                try:
                    await w.drain()
                except ConnectionError:  # the other side went away (a post stopped)
                    return

        sender = asyncio.ensure_future(out())
        while True:
            data = await r.read(16384)
            now = self.loop.time()
            free_at = max(now, free_at) + (len(data) / rate if rate else 0.0)
            q.put_nowait((free_at + self.delay, data))
            if not data:
                await sender
                return

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)


# ------------------------------------------------------------------ runs

def run_cpu(tmp: Path, broker: LocalMosquitto, args: argparse.Namespace) -> None:
    from edge.sync.uplink import MAX_UNCONFIRMED
    rows: dict[str, list[float]] = {"idle": [], "waiting": [], "drain": [], "rate": []}
    acker = Acker(broker.port)
    try:
        for r in range(args.repeat):
            post = Post(tmp / f"cpu-{r}.db", broker.port, MAX_UNCONFIRMED)
            try:
                time.sleep(1.0)  # settle after connecting
                c0 = post.cpu()
                time.sleep(args.idle)
                rows["idle"].append((post.cpu() - c0) / args.idle)
                assert broker.proc is not None
                os.kill(broker.proc.pid, signal.SIGSTOP)
                try:
                    post.call("record", 3000)
                    post.wait(lambda s: s[2] >= MAX_UNCONFIRMED, "paced messages handed over")
                    time.sleep(0.5)
                    c0 = post.cpu()
                    time.sleep(args.idle)
                    rows["waiting"].append((post.cpu() - c0) / args.idle)
                finally:
                    os.kill(broker.proc.pid, signal.SIGCONT)
                post.wait(lambda s: s[3] >= 3000, "waiting backlog acked")
                c0, t0 = post.cpu(), time.perf_counter()
                post.call("record", args.events)
                post.wait(lambda s: s[3] >= 3000 + args.events, "drain acked", 600)
                dt = time.perf_counter() - t0
                rows["drain"].append((post.cpu() - c0) / args.events * 10_000)
                rows["rate"].append(args.events / dt)
            finally:
                post.stop()
            print(f"run {r + 1}: idle {rows['idle'][-1] * 1000:.2f} ms/s, waiting "
                  f"{rows['waiting'][-1] * 1000:.2f} ms/s, drain {rows['drain'][-1]:.2f} CPU s/10k ev "
                  f"at {rows['rate'][-1]:,.0f} ev/s", flush=True)
    finally:
        acker.close()
    print(f"\nPost CPU ({os.environ.get('KENTONGAN_CODE') or 'this checkout'}), median of {args.repeat}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print(table(["phase", "post CPU", "unit"], [
        ["idle (connected, nothing to send)", f"{median(rows['idle']) * 1000:.2f}", "ms CPU per s"],
        ["waiting (broker frozen, backlog claimed)", f"{median(rows['waiting']) * 1000:.2f}", "ms CPU per s"],
        [f"drain of {args.events:,} events", f"{median(rows['drain']):.2f}", "CPU s per 10k events"],
        ["drain rate", f"{median(rows['rate']):,.0f}", "events/s"],
    ]))


def run_tune(tmp: Path, broker: LocalMosquitto, args: argparse.Namespace) -> None:
    out = []
    acker = Acker(broker.port)
    try:
        for link_name in args.links.split(","):
            rtt, rate = LINKS[link_name]
            link = Link(broker.port, rtt, rate) if rate else None
            port = link.port if link else broker.port
            for limit in (int(x) for x in args.limits.split(",")):
                post = Post(tmp / f"tune-{link_name}-{limit}.db", port, limit)
                try:
                    post.call("record", 200_000)  # a standing backlog for the whole run
                    post.wait(lambda s: s[3] > 0, "first acks", 120)
                    time.sleep(1.0)
                    acker.p1_waits.clear()
                    acker.recording = True
                    a0, t0 = post.stats()[3], time.perf_counter()
                    while time.perf_counter() - t0 < args.seconds:
                        post.call("p1")
                        time.sleep(0.5)
                    a1, dt = post.stats()[3], time.perf_counter() - t0
                    time.sleep(max(1.0, 3 * rtt))
                    acker.recording = False
                    waits = list(acker.p1_waits)
                finally:
                    post.stop()
                row = [link_name, limit, f"{(a1 - a0) / dt:,.0f}", len(waits),
                       f"{median(waits) * 1000:.0f}", f"{pct(waits, 95) * 1000:.0f}",
                       f"{max(waits, default=float('nan')) * 1000:.0f}"]
                print(" | ".join(str(c) for c in row), flush=True)
                out.append(row)
            if link:
                link.close()
    finally:
        acker.close()
    print(f"\nBacklog drain vs P1 wait per MAX_UNCONFIRMED ({os.environ.get('KENTONGAN_CODE') or 'this checkout'}), "
          f"{args.seconds:.0f} s each, load average {os.getloadavg()[0]:.2f}\n")
    print(table(["link", "MAX_UNCONFIRMED", "backlog ev/s", "P1s", "P1 wait p50 ms", "p95 ms", "max ms"], out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["cpu", "tune"])
    ap.add_argument("--code", help="import the post's code from this checkout (A/B)")
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--idle", type=float, default=5.0, help="seconds measured idle / waiting")
    ap.add_argument("--limits", default="1,2,4,8")
    ap.add_argument("--links", default="lan,4g,3g")
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="kentongan-pace-") as d:
        tmp = Path(d)
        broker = LocalMosquitto(tmp / "mosquitto").start()
        try:
            (run_cpu if args.what == "cpu" else run_tune)(tmp, broker, args)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
