"""Flood benchmark: good posts' ingest rate while one enrolled post floods garbage, against the
same load without the flood, measured in the same run (issue 10: target >= 0.7x).

    .venv/bin/python bench/flood.py --posts 20 --rate 200 --factor 10 --duration 20 --repeat 3

Everything runs on this machine, on loopback: a LocalMosquitto (dev config), one real
``kentongan-central run`` with a CA (``[pki]``: events verified, every other kind authenticated),
``--posts`` good simulated posts (``bench/fleet_sim.py``: signed events at ``--rate`` events/s in
all, signed presence and heartbeats) plus one more ENROLLED post, the flooder, whose key is in the
registry too. Per repeat, two phases against the same central process, in alternating order:

1. **quiet**: the good posts alone;
2. **flood**: the same, while the flooder publishes ``--factor`` x ``--rate`` garbage messages/s
   (QoS 1) on its own topics, a mix of every kind: random bytes, invalid fields, unstorable
   numbers, events for another node, events signed with a foreign key, and snapshots, presence,
   heartbeats and command results with bad signatures.

Between phases the bench waits until central has worked off the flood (its rejection count in
the store stops growing), so one phase never pays for the other. Printed per phase (medians over
``--repeat``): offered and good events committed per second DURING the window (central
acknowledges right after each commit), good events acknowledged per window second (also those
acknowledged in the drain after it), publish->Ack p50/p99 ms, the garbage rate that reached the
broker (PUBACKed), rejections central counted (including ``shed``), central's CPU and peak RSS;
then the ratio flood/quiet of the good-ingest (committed) rate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import median, table  # noqa: E402
from bench.fleet import PY, PhaseResult, Setup, cpu_seconds, run_phase, start_central, stop, wait_line  # noqa: E402


def flooder_main(port: int, node: str, rate: float, seed: int) -> None:
    """The hostile post: publish ``rate`` garbage messages/s until SIGTERM; print the count."""
    import paho.mqtt.client as paho
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.signing import MessageSigner, sign_bytes
    from edge.sync.wire import CommandResult, Heartbeat, Presence, SnapshotEnvelope, b64, canonical_bytes, encode

    rng = random.Random(seed)
    foreign = Ed25519PrivateKey.generate()
    forger = MessageSigner(foreign)
    prefix = f"kentongan/v1/up/{node}"
    running = True

    def stop_now(*_a: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop_now)
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"flood-{node}", protocol=paho.MQTTv5)
    c.max_inflight_messages_set(65535)
    c.max_queued_messages_set(0)
    delivered = [0]  # PUBACKs from the broker: garbage that really reached it

    def on_publish(*_a: Any) -> None:
        delivered[0] += 1

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    jpeg = b"\xff\xd8\xff\xe0" + bytes(2000)

    def event(i: int, **kw: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"v": 1, "kind": "event", "event_id": uuid.uuid4().hex, "node_id": node,
                                "boot_id": "flood", "seq": i, "mono_ns": i, "wall_time": time.time(),
                                "time_quality": "synced", "type": "PANIC", "priority": 1, "incident_id": None,
                                "payload": {}}
        data.update(kw)
        return data

    def garbage(i: int) -> tuple[str, bytes]:
        k = i % 10
        if k == 0:
            return f"{prefix}/event", rng.randbytes(rng.randint(1, 300))
        if k == 1:
            return f"{prefix}/event", json.dumps(event(i, priority=99)).encode()
        if k == 2:
            return f"{prefix}/event", json.dumps(event(i, seq=2**64 + i)).encode()
        if k == 3:
            return f"{prefix}/event", json.dumps(event(i, node_id="post-00000")).encode()
        if k == 4:
            data = event(i)
            data["sig"] = sign_bytes(foreign, canonical_bytes(data))
            return f"{prefix}/event", json.dumps(data).encode()
        now = time.time()
        if k == 5:
            snap = SnapshotEnvelope(snapshot_id=uuid.uuid4().hex, node_id=node, taken_at=now, data=b64(jpeg))
            return f"{prefix}/snapshot", encode(forger.sign(snap))
        if k == 6:
            return f"{prefix}/presence", encode(forger.sign(Presence(node_id=node, state="online", at=now)))
        if k == 7:
            hb = Heartbeat(node_id=node, boot_id="flood", at=now, version="evil", time_quality="synced")
            return f"{prefix}/heartbeat", encode(forger.sign(hb))
        if k == 8:
            res = CommandResult(command_id=uuid.uuid4().hex, node_id=node, ok=True, at=now)
            return f"{prefix}/cmd_result", encode(forger.sign(res))
        return f"{prefix}/presence", b"[" * 3000

    # Made (and signed) before the start, so the flooder's own CPU does not cap its rate; cycling
    # through the pool resends identical garbage, which central refuses just the same.
    pool = [garbage(i) for i in range(4000)]
    print("ready", flush=True)
    sent = 0
    start = last = time.monotonic()
    owed = 0.0
    while running:
        now = time.monotonic()
        owed += (now - last) * rate
        last = now
        while owed >= 1 and running:
            topic, body = pool[sent % len(pool)]
            c.publish(topic, body, qos=1)
            sent += 1
            owed -= 1
        time.sleep(0.002)
    elapsed = time.monotonic() - start
    print(json.dumps({"sent": sent, "delivered": delivered[0], "seconds": elapsed}), flush=True)
    os._exit(0)  # a network thread busy with a backlog must not hold the exit up


def rejections(setup: Setup) -> int:
    return int(setup.db.query("SELECT COALESCE(SUM(count), 0) FROM rejections")[0])


def settle(setup: Setup, quiet_s: float = 3.0, timeout: float = 600.0) -> None:
    """Wait until central's rejection count stops growing (the broker's garbage backlog is worked off)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_count = rejections(setup)
        if now_count != last:
            last, since = now_count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)


def phase(setup: Setup, args: argparse.Namespace, name: str, central: list[subprocess.Popen[str]],
          flood_node: str) -> PhaseResult:
    flooder = None
    rej0, cpu0, t0 = rejections(setup), sum(cpu_seconds(p.pid) for p in central), time.monotonic()
    if name == "flood":
        flooder = subprocess.Popen([PY, str(Path(__file__).resolve()), "--flooder", str(setup.broker.port),
                                    flood_node, str(args.rate * args.factor)],
                                   stdout=subprocess.PIPE, text=True, cwd=ROOT)
        wait_line(flooder, "ready", 120)
    try:
        res = run_phase(setup, args, name, central, None)
    finally:
        if flooder is not None:
            flooder.send_signal(signal.SIGTERM)
            out, _ = flooder.communicate(timeout=60)
            data = json.loads(out.strip().splitlines()[-1])
            res.extra["garbage_per_s"] = data["delivered"] / max(data["seconds"], 1e-9)
            res.extra["garbage_sent"] = data["delivered"]
    settle(setup)
    res.extra["rejections"] = rejections(setup) - rej0
    res.extra["central_cpu_s"] = round(sum(cpu_seconds(p.pid) for p in central) - cpu0, 1)
    res.extra["phase_s"] = round(time.monotonic() - t0, 1)
    return res


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--flooder":
        flooder_main(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), seed=7)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=20, help="good posts")
    ap.add_argument("--rate", type=float, default=200.0, help="good events/s offered by all good posts")
    ap.add_argument("--factor", type=float, default=10.0, help="garbage messages/s = factor x rate")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of offered load per phase")
    ap.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last Acks")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--procs", type=int, default=1, help="processes of good simulated posts")
    ap.add_argument("--seed", default="flood")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, databases)")
    ap.add_argument("--reject-burst", type=int, default=None, help="central's ingest.reject_burst (default: "
                    "the config default; a huge value switches the rejection budget off, for comparison)")
    ap.add_argument("--profile", type=Path, help="run central as one 'ingest' worker under cProfile, "
                    "its profile written into this directory (instead of 'run')")
    args = ap.parse_args()
    # what bench.fleet.run_phase / start_central read
    args.p1_rate, args.heartbeat, args.backlog, args.unsigned = 0.0, 5.0, 0, False
    args.ack_timeout, args.no_web = 10.0, True
    args.ingest = 1 if args.profile else 0
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[PhaseResult]] = {"quiet": [], "flood": []}
    with tempfile.TemporaryDirectory(prefix="flood-") as tmp_dir:
        work = args.keep or Path(tmp_dir)
        work.mkdir(parents=True, exist_ok=True)
        setup = Setup(work, args.posts + 1, args.seed)
        flood_node = setup.nodes[-1]  # enrolled like the others: its key is in the registry
        setup.nodes = setup.nodes[:-1]
        try:
            setup.configure(0)
            extra = "rejection_interval_s = 1.0\n"
            if args.reject_burst:
                extra += f"reject_burst = {args.reject_burst}\n"
            setup.cfg.write_text(setup.cfg.read_text().replace("[ingest]\n", "[ingest]\n" + extra))
            central, _web = start_central(setup, args)
            try:
                for repeat in range(args.repeat):
                    order = ("quiet", "flood") if repeat % 2 == 0 else ("flood", "quiet")
                    for name in order:
                        rows[name].append(phase(setup, args, name, central, flood_node))
                        print(f"repeat {repeat + 1} {name}: acked {rows[name][-1].acked:.0f}/s "
                              f"{json.dumps(rows[name][-1].extra)}", file=sys.stderr, flush=True)
                    if any(p.poll() is not None for p in central):
                        raise SystemExit("central exited during the flood")
            finally:
                stop(central)
        finally:
            setup.close()
    print_table(args, rows)
    if args.json:
        args.json.write_text(json.dumps({k: [vars(r) for r in v] for k, v in rows.items()}, indent=1))


def print_table(args: argparse.Namespace, rows: dict[str, list[PhaseResult]]) -> None:
    def med(name: str, attr: str) -> float:
        return median([getattr(r, attr) for r in rows[name]])

    def med_extra(name: str, key: str) -> float:
        return median([float(r.extra.get(key, 0.0)) for r in rows[name]])

    out = []
    for name in ("quiet", "flood"):
        out.append([name, f"{med(name, 'offered'):.0f}", f"{med(name, 'committed'):.0f}", f"{med(name, 'acked'):.0f}",
                    f"{med(name, 'p50_ms'):.1f}", f"{med(name, 'p99_ms'):.1f}",
                    f"{med_extra(name, 'garbage_per_s'):.0f}", f"{med_extra(name, 'rejections'):.0f}",
                    f"{med_extra(name, 'central_cpu_s'):.1f}", f"{med(name, 'rss_mib'):.0f}",
                    f"{med(name, 'lost'):.0f}"])
    print(f"flood: {args.posts} good posts, {args.rate:.0f} good ev/s offered, 1 enrolled post flooding "
          f"{args.factor:g}x = {args.rate * args.factor:.0f} garbage msg/s (QoS 1, every kind), "
          f"{args.duration:g} s x {args.repeat}, central 'run' with [pki], SQLite, reject_burst "
          f"{args.reject_burst or 'default'}; medians")
    print(table(["phase", "offered/s", "committed/s", "acked/s", "Ack p50 ms", "Ack p99 ms", "garbage/s",
                 "rejections", "central CPU s", "RSS MiB", "lost"], out))
    quiet, flood = med("quiet", "committed"), med("flood", "committed")
    ratio = flood / quiet if quiet > 0 else float("nan")
    print(f"good-ingest rate (good events committed, and so acknowledged, within the window) under flood / "
          f"without: {ratio:.2f}x (target >= 0.7x; per repeat: "
          + ", ".join(f"{f.committed / q.committed:.2f}" if q.committed else "-"
                      for q, f in zip(rows["quiet"], rows["flood"], strict=True)) + ")")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
